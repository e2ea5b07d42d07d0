"""Build wiring only (metadata lives in pyproject.toml).

- ``cffi_modules`` builds the compiled shim ``rkllm._native`` (see build_ffi.py).
- ``build_ext`` additionally builds the simulated runtime once per ABI family
  (``rkllm/_sim/librkllmrt-sim-<family>.so``) with the same compiler and flags as the
  extension, so cross and emulated wheel builds ship a simulator for their own architecture.
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# The ABI families come from the one release table; it is read as a file because the package
# cannot be imported before it is built.
SIM_FAMILIES = runpy.run_path(os.path.join(HERE, "rkllm", "releases.py"))["FAMILIES"]
# Each simulator's SONAME is its own file name, unique per family: not the vendor's
# "librkllmrt.so", or a process that loaded a simulator would get it back from any later
# dlopen("librkllmrt.so") by name (glibc matches loaded SONAMEs first), and two families loaded
# side by side would share one name. A program linked against one records that file name.
SIM_SOURCES = sorted(
    os.path.join("csrc", "sim", name)
    for name in os.listdir(os.path.join(HERE, "csrc", "sim"))
    if name.endswith(".c")
) if os.path.isdir(os.path.join(HERE, "csrc", "sim")) else []


class build_ext_with_sim(build_ext):
    def run(self) -> None:
        super().run()
        self.build_simulators()

    def build_simulators(self) -> None:
        if not SIM_SOURCES:
            return
        # Python's LDSHARED may carry -Wl,-rpath,<its own lib dir>: a build-machine path that
        # must not end up in the shipped libraries (they need nothing but libc and libm).
        linker = self.compiler.linker_so
        self.compiler.linker_so = [a for a in linker if not a.startswith(("-Wl,-rpath", "-Wl,-R"))]
        try:
            self.link_simulators()
        finally:
            self.compiler.linker_so = linker

    def link_simulators(self) -> None:
        # next to the compiled extension, whether in place (editable) or in build_lib
        out_dir = os.path.join(os.path.dirname(self.get_ext_fullpath("rkllm._native")), "_sim")
        os.makedirs(out_dir, exist_ok=True)
        for family in SIM_FAMILIES:
            objects = self.compiler.compile(
                SIM_SOURCES,
                output_dir=os.path.join(self.build_temp, f"sim-{family}"),
                macros=[("RKLLM_SIM_FAMILY", f'"{family}"')],
                include_dirs=[os.path.join("include", family), os.path.join("csrc", "sim")],
                extra_postargs=["-std=gnu11", "-O2", "-fPIC", "-fvisibility=hidden", "-pthread"],
            )
            self.compiler.link_shared_object(
                objects,
                f"librkllmrt-sim-{family}.so",
                output_dir=out_dir,
                libraries=["m", "pthread"],
                extra_postargs=["-pthread", f"-Wl,-soname,librkllmrt-sim-{family}.so"],
            )


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_with_sim},
    # cffi compiles rkllm._native against the stable ABI (_native.abi3.so): one wheel per
    # architecture serves CPython 3.10 and every later release (checked with abi3audit --strict
    # and by importing it on 3.10-3.13; cibuildwheel tests the one wheel on every CPython it
    # lists). Set here rather than in pyproject's experimental [tool.distutils] table.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
