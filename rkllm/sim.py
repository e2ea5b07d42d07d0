"""Where the simulated runtimes and the demo model are.

The simulated runtime is a plain C library built once per ABI family
(``rkllm/_sim/librkllmrt-sim-<family>.so``); it implements that family's RKLLM API without an
NPU (see docs/simulator.md). ``rkllm sim path --abi 1.2.1`` (or ``python -m rkllm.sim path
--abi 1.2.1``) prints a library's path.
Standard library only, so importing this stays cheap.
"""

from __future__ import annotations

from pathlib import Path

# The release table lives in rkllm.releases; these names stay importable from here.
from rkllm.releases import DEFAULT_FAMILY, FAMILIES, RELEASES, family_of

SIM_DIR = Path(__file__).resolve().parent / "_sim"


def library_path(abi: str = DEFAULT_FAMILY) -> str:
    """Absolute path of the simulated runtime for release or family ``abi`` (ValueError for a
    release in no family, FileNotFoundError when that simulator was not built)."""
    family = family_of(abi)
    path = SIM_DIR / f"librkllmrt-sim-{family}.so"
    if not path.is_file():
        raise FileNotFoundError(
            f"the simulated runtime for family {family} is not built ({path} is missing); "
            "build the package (pip install -e . --no-build-isolation) or install a wheel")
    return str(path)


def demo_model_path() -> str:
    """Absolute path of the demo model shipped with the package."""
    path = SIM_DIR / "demo.rkllm"
    if not path.is_file():
        raise FileNotFoundError(f"the simulated demo model is missing: {path}")
    return str(path)


if __name__ == "__main__":  # `python -m rkllm.sim ARGS` is `rkllm sim ARGS`
    import sys

    from rkllm.cli import main

    sys.exit(main(["sim", *sys.argv[1:]]))

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "RELEASES", "SIM_DIR", "demo_model_path", "family_of",
           "library_path"]
