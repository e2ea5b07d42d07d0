"""``rkllm doctor``: what this machine needs for the RKLLM runtime, and how to fix it."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rkllm.cli.output import paint

_MARKS = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red"),
          "info": ("info", "blue")}
_TITLES = {"os": "system", "board": "board", "npu_driver": "NPU driver", "runtime": "runtime",
           "libraries": "libraries", "cpu": "CPU", "memory": "memory",
           "open_files": "open files", "models": "cached models", "simulator": "simulator"}


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this machine for the RKLLM runtime",
                       description="Check the OS, board, NPU driver, runtime library, CPU "
                                   "features, libraries, memory, open-file limit and cached "
                                   "models, and explain how to fix what is wrong. Exit code 1 "
                                   "when a check fails.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--runtime", metavar="SPEC",
                   help="check this runtime (a path, a release, sim or sim:RELEASE), as "
                        "rkllm run --runtime would use it (default: RKLLM_LIBRARY, bundled, "
                        "system)")
    p.add_argument("--root", default=os.environ.get("RKLLM_DOCTOR_ROOT", "/"),
                   help=argparse.SUPPRESS)  # tests point this at fake system trees
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from rkllm.doctor import run
    report = run(args.root, runtime=args.runtime)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for check in report.checks:
            word, colour = _MARKS[check.status]
            title = _TITLES.get(check.name, check.name)
            print(f"{paint(f'[{word:>4}]', colour)} {title:<14} {check.summary}")
            if check.fix and check.status != "ok":
                print(f"{'':7} {'':<14} {paint('-> ' + check.fix, 'dim')}")
            for row in check.data.get("models", []) if check.name == "models" else []:
                for f in row["findings"]:
                    print(f"{'':7} {'':<14} {row['ref']}: {f['level']}: {f['message']}")
        print()
        if report.failed:
            print(paint("Some checks failed; see the -> lines for fixes.", "red"))
        else:
            print(paint("No blocking problem found.", "green"))
    return 1 if report.failed else 0
