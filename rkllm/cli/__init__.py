"""The ``rkllm`` command line: one entry point, one module per verb group.

Adding a verb group (``serve``, say) is one line: write ``rkllm/cli/serve.py`` with

    def register(subparsers):            # subparsers.add_parser(...) for each verb
        p = subparsers.add_parser("serve", help="...", description="...")
        p.add_argument(...)
        p.set_defaults(func=cmd_serve)   # cmd_serve(args: argparse.Namespace) -> int

and add ``"serve"`` to VERB_MODULES below. Every verb gets ``--debug`` (tracebacks; so a verb
must not define its own) and the aliases in ALIASES for free. A verb's own ``--verbose``
should default to ``argparse.SUPPRESS``, so that the top-level ``rkllm --verbose VERB`` is not
overridden by it. A verb function returns its exit code (0 ok, 1 failed, 2 usage)
and raises for errors: main() prints them as one line (UsageError: exit code 2; anything
else: 1) and Ctrl-C as exit code 130. Verb modules are imported only when the CLI starts, so
``import rkllm`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

# verb group modules, in the order their verbs appear in --help
VERB_MODULES = ("run", "chat", "models", "doctor", "sim", "runtime", "serve")

# other names for verbs, as ollama spells them
ALIASES = {"list": ["ls"], "info": ["show"]}

# options every verb takes, before or after its name (`rkllm --debug run ...`, `rkllm run
# --debug ...`); SUPPRESS: absent after the verb keeps the value given before it
GLOBAL_OPTIONS = argparse.ArgumentParser(add_help=False)
GLOBAL_OPTIONS.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks on errors")

EXAMPLES = """\
examples:
  rkllm run demo "Tell me about the sea."    an answer from the simulated demo model
  rkllm run demo                             talk with it (at a terminal; also: rkllm chat demo)
  rkllm pull OWNER/MODEL-rk3588              download a model from Hugging Face
  rkllm ls                                   the models downloaded
  rkllm show OWNER/MODEL-rk3588              what a model file says and whether it fits here
  rkllm doctor                               what this board needs for the NPU runtime

Use "rkllm COMMAND --help" for more information about a command.
"""


class Parser(argparse.ArgumentParser):
    """argparse's parser, with usage errors on one line (not the whole usage first). Every
    parser puts itself in the parsed arguments: the innermost verb's wins, so main() can
    report a leftover argument as that verb's error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(verb_parser=self)

    def error(self, message: str) -> NoReturn:
        from rkllm.cli.output import paint

        self.exit(2, f"{paint(self.prog + ': error', 'red', sys.stderr)}: {message} "
                     f"(see: {self.prog} --help)\n")


class _Verbs:
    """The sub-parsers action as verb modules see it: adds the global options and aliases."""

    def __init__(self, action: Any) -> None:
        self._action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("aliases", ALIASES.get(name, []))
        kwargs["parents"] = [GLOBAL_OPTIONS, *kwargs.get("parents", [])]
        parser: argparse.ArgumentParser = self._action.add_parser(name, **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rkllm",
        description="Run large language models on Rockchip NPUs through the RKLLM runtime.",
        epilog=EXAMPLES,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=30))
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="say what was chosen and how long it took (run, chat)")
    parser.add_argument("--version", action="store_true", dest="show_version",
                        help="print the package version")
    action = parser.add_subparsers(dest="command", metavar="COMMAND")
    verbs = _Verbs(action)
    for name in VERB_MODULES:
        importlib.import_module(f"rkllm.cli.{name}").register(verbs)
    p = verbs.add_parser("help", help="help about a command (rkllm help COMMAND)",
                         description="Print the help of COMMAND, or of rkllm.")
    p.add_argument("topic", metavar="COMMAND", nargs="*", help="e.g. run, or runtime pull")
    p.set_defaults(func=lambda args: _help(args.topic))
    return parser


def _help(topic: Sequence[str]) -> int:
    """``rkllm help runtime pull`` is ``rkllm runtime pull --help``."""
    try:
        main([*topic, "--help"])
    except SystemExit as exc:  # argparse exits after printing help (or a usage error)
        return exc.code if isinstance(exc.code, int) else 0
    return 0


def _take_global_options(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Global options given after a nested verb (`rkllm sim path --debug`), which argparse
    leaves over, are applied here."""
    if "--debug" in extra:
        args.debug = True
    return [word for word in extra if word != "--debug"]


def main(argv: Sequence[str] | None = None) -> int:
    from rkllm.cli.output import UsageError, fail

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    extra = _take_global_options(args, extra)
    if extra:
        # words of a free-text PROMPT that came after the options (`rkllm run demo -n 9 hi`)
        if isinstance(getattr(args, "prompt", None), list) and not any(
                word.startswith("-") for word in extra):
            args.prompt += extra
        else:
            args.verb_parser.error("unrecognized arguments: " + " ".join(extra))
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
    except UsageError as exc:
        return fail(exc, code=2)
    except Exception as exc:  # one readable line unless --debug
        if args.debug:
            raise
        return fail(exc)


if __name__ == "__main__":
    sys.exit(main())
