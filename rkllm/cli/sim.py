"""``rkllm sim``: paths of the simulated runtimes and of the demo model.

    RKLLM_LIBRARY=$(rkllm sim path --abi 1.3.0) ./my_app
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="where the simulated runtime and demo model are",
                       description="Print the paths of the simulated RKLLM runtime (one library "
                                   "per ABI family; it runs without an NPU) and of its demo "
                                   "model, e.g. RKLLM_LIBRARY=$(rkllm sim path --abi 1.3.0) ./app")
    add_commands(p.add_subparsers(dest="sim_command", metavar="COMMAND"))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def add_commands(sub: Any) -> None:
    from rkllm.sim import DEFAULT_FAMILY

    p = sub.add_parser("path", help="print the simulated runtime's path")
    p.add_argument("--abi", default=DEFAULT_FAMILY,
                   help=f"RKLLM release or ABI family to simulate (default {DEFAULT_FAMILY})")
    p.set_defaults(func=cmd_path)
    p = sub.add_parser("model", help="print the demo model's path")
    p.set_defaults(func=cmd_model)
    p = sub.add_parser("info", help="list the simulated runtimes and the demo model")
    p.set_defaults(func=cmd_info)


def cmd_path(args: argparse.Namespace) -> int:
    from rkllm.errors import ParamError
    from rkllm.sim import library_path

    try:
        print(library_path(args.abi))
    except ValueError as exc:  # an unknown release: one line naming the supported ones
        raise ParamError(f"--abi {args.abi}: {exc}") from None
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from rkllm.sim import demo_model_path

    print(demo_model_path())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rkllm.cli.output import table
    from rkllm.sim import RELEASES, demo_model_path, library_path

    rows = []
    for family, releases in RELEASES.items():
        try:
            where = library_path(family)
        except OSError:
            where = "(not built)"
        rows.append([family, f"{releases[0]}-{releases[-1]}" if len(releases) > 1 else releases[0],
                     where])
    table(rows, ["family", "releases", "simulated runtime"])
    try:
        model = demo_model_path()
        print(f"\ndemo model: {model} ({os.path.getsize(model)} bytes)")
    except OSError as exc:
        print(f"\ndemo model: {exc}")
    print("use: RKLLM_LIBRARY=$(rkllm sim path --abi 1.3.0) ./your_app")
    return 0
