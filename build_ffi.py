"""cffi API-mode build of ``rkllm._native``, the compiled shim.

The declarations Python sees live in ``csrc/shim/rkshim_api.h`` (also compiled by C); the C
lives in ``csrc/shim/*.c``. The RKLLM runtime is never linked: the shim ``dlopen``s it.
"""

from __future__ import annotations

import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join("csrc", "shim")


def _read(path: str) -> str:
    with open(os.path.join(HERE, path), encoding="utf-8") as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(_read(os.path.join(SHIM, "rkshim_api.h")))
ffibuilder.set_source(
    "rkllm._native",
    '#include "rkshim.h"',
    sources=sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, SHIM, "*.c"))),
    include_dirs=[SHIM, "include"],
    depends=sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, SHIM, "*.h"))),
    libraries=["dl", "pthread"],
    extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
