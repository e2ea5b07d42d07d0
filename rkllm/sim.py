"""Where the simulated runtimes and the demo model are.

The simulated runtime is a plain C library built once per ABI family
(``rkllm/_sim/librkllmrt-sim-<family>.so``); it implements that family's RKLLM API without an
NPU (see docs/simulator.md). ``python -m rkllm.sim path --abi 1.2.1`` prints a library's path.
Standard library only, so importing this stays cheap.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: ABI families, oldest first, with the releases each covers (the newest is what the
#: simulated runtime of that family reports).
RELEASES: dict[str, tuple[str, ...]] = {
    "1.1.0": ("1.1.0", "1.1.1", "1.1.2", "1.1.3", "1.1.4"),
    "1.2.0": ("1.2.0",),
    "1.2.1": ("1.2.1", "1.2.2", "1.2.3"),
    "1.3.0": ("1.3.0",),
}
FAMILIES: tuple[str, ...] = tuple(RELEASES)
DEFAULT_FAMILY = FAMILIES[-1]

_SIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sim")


def family_of(release: str) -> str:
    """The ABI family of an RKLLM release: ``"1.1.4"`` -> ``"1.1.0"``, ``"1.2.3"`` -> ``"1.2.1"``.
    A leading ``v`` is accepted. Raises ValueError for a release in no family."""
    rel = release.strip().lstrip("vV")
    for family, releases in RELEASES.items():
        if rel in releases:
            return family
    known = ", ".join(r for rs in RELEASES.values() for r in rs)
    raise ValueError(f"no simulated runtime for RKLLM release {release!r}; supported releases: {known}")


def library_path(abi: str = DEFAULT_FAMILY) -> str:
    """Absolute path of the simulated runtime for release or family ``abi``."""
    family = family_of(abi)
    path = os.path.join(_SIM_DIR, f"librkllmrt-sim-{family}.so")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the simulated runtime for family {family} is not built ({path} is missing); "
            "build the package (pip install -e . --no-build-isolation) or install a wheel")
    return path


def demo_model_path() -> str:
    """Absolute path of the demo model shipped with the package."""
    path = os.path.join(_SIM_DIR, "demo.rkllm")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the simulated demo model is missing: {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rkllm.sim {path [--abi X] | model | info}`` (same as ``rkllm sim ...``)."""
    import argparse

    from rkllm.cli import sim as cli_sim

    parser = argparse.ArgumentParser(prog="python -m rkllm.sim")
    cli_sim.add_commands(parser.add_subparsers(dest="sim_command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except (ValueError, OSError) as exc:
        print(f"rkllm sim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
