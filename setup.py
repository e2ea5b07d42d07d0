"""Build wiring only (metadata lives in pyproject.toml).

- ``cffi_modules`` builds the compiled shim ``rkllm._native`` (see build_ffi.py).
- ``build_ext`` additionally builds the simulated runtime once per ABI family
  (``rkllm/_sim/librkllmrt-sim-<family>.so``) with the same compiler and flags as the
  extension, so cross and emulated wheel builds ship a simulator for their own architecture.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
SIM_FAMILIES = ("1.1.0", "1.2.0", "1.2.1", "1.3.0")
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
                extra_postargs=["-pthread"],
            )


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_with_sim},
)
