"""``rkllm run MODEL [PROMPT]``: stream one answer to stdout (without a PROMPT at a terminal:
the conversation of ``rkllm chat``, as ``ollama run`` does).

MODEL is a path, ``REPO[:FILE]`` from the Hugging Face cache or hub, or ``demo`` (the
simulated demo model). Without ``--runtime``, the runtime is found as ``rkllm.LLM`` finds it;
on a machine with none (an x86_64 PC, say) the simulated runtime is used, and that is said
once on stderr. Ctrl-C stops the runtime and exits with 130. The options, the loading of the
model and the error hints are shared with ``rkllm chat`` (rkllm.cli.loading).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rkllm.cli.loading import add_model_options, load_model, print_timings, with_context_hint
from rkllm.cli.output import UsageError
from rkllm.errors import GenerationError

RUN_EXAMPLES = """\
examples:
  rkllm run demo "Tell me about the sea."
  echo "Why is the sky blue?" | rkllm run demo -n 100
  rkllm run demo                  at a terminal: a chat (as rkllm chat demo)
  rkllm run OWNER/MODEL-rk3588:model.rkllm --top-k 1 --verbose "Hello"
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="stream an answer from a model (or talk with it, at a terminal)",
        description="Load MODEL and stream its answer to PROMPT (or to standard input) on "
                    "stdout; without a PROMPT at a terminal, talk with it as `rkllm chat` does. "
                    "MODEL: a .rkllm path, REPO[:FILE] (Hugging Face), or 'demo' for the "
                    "simulated demo model. Without a real RKLLM runtime on this machine, the "
                    "simulated runtime is used (and said so on stderr).",
        epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, prompt=True)
    p.add_argument("--show-special", action="store_true",
                   help="print special tokens such as <|im_end|> (hidden by default)")
    p.set_defaults(func=cmd_run)


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt:
        return " ".join(args.prompt)
    prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        raise UsageError(f"no prompt: give it after the model (rkllm run {args.model} "
                         f"\"Why is the sky blue?\"), or on standard input")
    return prompt


def _start(llm: Any, args: argparse.Namespace, prompt: str) -> Any:
    """The stream of the answer to ``prompt``."""
    if args.system or args.template:
        # the system prompt goes through the model's chat template, as in `rkllm chat`
        from rkllm.chat import ChatSession

        return ChatSession(llm, args.system, template=args.template).send(
            prompt, max_new_tokens=args.max_new_tokens)
    return llm.generate(prompt, max_new_tokens=args.max_new_tokens)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.prompt and sys.stdin.isatty():  # as `ollama run MODEL`: a conversation
        from rkllm.cli.chat import cmd_chat

        return cmd_chat(args)
    started = time.perf_counter()
    prompt = _read_prompt(args)
    with load_model(args, skip_special_token=not args.show_special) as llm:
        loaded = time.perf_counter()
        out = sys.stdout
        try:
            stream = _start(llm, args, prompt)
            for piece in stream:
                out.write(piece)
                out.flush()
        except GenerationError as exc:
            raise with_context_hint(exc, llm) from exc
        out.write("\n")
        out.flush()
    if args.verbose:
        print_timings(time.perf_counter() - started, loaded - started, stream, sys.stderr)
    return 0
