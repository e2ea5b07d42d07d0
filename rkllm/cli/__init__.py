"""The ``rkllm`` command line: one entry point, one module per verb group.

Each verb module defines ``register(subparsers)`` which adds its sub-commands and sets
``func`` (taking the parsed ``argparse.Namespace`` and returning an exit code). Modules are
imported here only when the CLI starts, so ``import rkllm`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# verb group modules, in the order their verbs appear in --help
VERB_MODULES = ("run", "chat", "models", "doctor", "sim", "runtime", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkllm",
        description="Run large language models on Rockchip NPUs through the RKLLM runtime.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="store_true", dest="show_version",
                        help="print the package version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"rkllm.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"rkllm.cli.{name}":
                continue  # verb group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rkllm.cli.output import fail

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # words of a free-text PROMPT that came after the options (`rkllm run demo -n 9 hi`)
        if isinstance(getattr(args, "prompt", None), list) and not any(
                word.startswith("-") for word in extra):
            args.prompt += extra
        else:
            parser.error("unrecognized arguments: " + " ".join(extra))
    if args.show_version:
        from importlib.metadata import version
        print(f"rkllm-cffi {version('rkllm-cffi')}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one readable line unless --debug
        if args.debug:
            raise
        return fail(exc)


if __name__ == "__main__":
    sys.exit(main())
