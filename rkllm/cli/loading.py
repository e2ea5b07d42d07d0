"""What ``rkllm run`` and ``rkllm chat`` share: the model's command-line options, loading the
model (the runtime found as ``rkllm.LLM`` finds it, else the simulated one, said once on
stderr), the note on the context length it got, the hint when an input outgrows it, and the
timings of --verbose."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any

from rkllm.errors import (
    GenerationError,
    ParamError,
    RKLLMError,
    RuntimeNotFoundError,
    UnsupportedRuntimeError,
)

SAMPLING_OPTIONS = (
    # (flag, params name, type, help)
    ("--temperature", "temperature", float, "sampling temperature"),
    ("--top-k", "top_k", int, "sample from the K most likely tokens (1: greedy)"),
    ("--top-p", "top_p", float, "nucleus sampling threshold (0-1)"),
    ("--repeat-penalty", "repeat_penalty", float, "penalty for repeated tokens (1: none)"),
    ("--frequency-penalty", "frequency_penalty", float, "penalty by frequency in the output"),
    ("--presence-penalty", "presence_penalty", float, "penalty for presence in the output"),
    ("--max-context-len", "max_context_len", int, "tokens the context holds"),
)

def add_model_options(p: argparse.ArgumentParser, *, prompt: bool = False) -> None:
    """The arguments `run` and `chat` share: the model (and for `run` a prompt), the runtime,
    run options, --verbose."""
    p.add_argument("model", metavar="MODEL", help="a .rkllm file, REPO[:FILE], or 'demo'")
    if prompt:
        p.add_argument("prompt", metavar="PROMPT", nargs="*", default=[],
                       help="the prompt, in one argument or several words, before or after "
                            "the options (default: standard input; at a terminal: a chat)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=None,
                   help="stop each answer after this many tokens (default: the model's limit)")
    for flag, _, kind, text in SAMPLING_OPTIONS:
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--system", help="the system prompt (applied through the model's chat template)")
    p.add_argument("--template", metavar="NAME",
                   help="the model's chat template when its file does not tell "
                        "(chatml, llama3, deepseek)")
    p.add_argument("--runtime", metavar="LIB",
                   help="librkllmrt.so to use, a pinned release fetched with `rkllm runtime "
                        "pull` (e.g. 1.3.0), or 'sim' / 'sim:RELEASE' for the simulated one "
                        "(default: RKLLM_LIBRARY, the bundled runtime, the system's; else sim)")
    p.add_argument("--abi", metavar="RELEASE",
                   help="force the runtime's ABI release (like RKLLM_ABI), e.g. 1.2.1")
    # SUPPRESS: `rkllm --verbose run` (the top-level flag) is not overridden by this default
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="say which context length was used, and timings (load, prompt eval, "
                        "eval) on stderr after each answer")


def _resolve_model(ref: str) -> str:
    from rkllm.hub import resolve_model

    return resolve_model(ref)


def _choose_runtime(args: argparse.Namespace) -> Any:
    """The runtime: as asked; for the demo model the simulator; else the usual search, with
    the simulator as the fallback of a machine that has no runtime."""
    import rkllm

    if args.runtime:
        try:
            return rkllm.load_runtime(args.runtime, abi=args.abi)
        except UnsupportedRuntimeError as exc:
            if "--arch" not in str(exc):
                raise
            # a vendor release on a machine Rockchip ships no runtime for (an x86_64 PC): the
            # hint of rkllm.runtimes for `rkllm runtime pull --arch` does not apply to run/chat
            raise UnsupportedRuntimeError(
                f"runtime {args.runtime} is Rockchip's library for Arm boards; it cannot run "
                f"on this {platform.machine()} machine. --runtime sim:{args.runtime} runs the "
                "simulated runtime of that release") from None
    if args.model == "demo" and not os.environ.get("RKLLM_LIBRARY"):
        return rkllm.load_runtime("sim", abi=args.abi)
    try:
        return rkllm.load_runtime(None, abi=args.abi)
    except RuntimeNotFoundError as exc:
        if os.environ.get("RKLLM_LIBRARY"):
            raise
        del exc  # the places tried: `rkllm doctor`, or python -c "import rkllm; rkllm.LLM(...)"
        print("rkllm: no RKLLM runtime (librkllmrt.so) on this machine; using the simulated "
              "runtime (no NPU). Give --runtime for a real one.", file=sys.stderr, flush=True)
        return rkllm.load_runtime("sim", abi=args.abi)


def load_model(args: argparse.Namespace, **params: Any) -> Any:
    """``rkllm.LLM`` for args.model with the sampling options given (the caller closes it);
    with --verbose, says on stderr which context length it got and why."""
    import rkllm

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ParamError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    path = _resolve_model(args.model)
    params.update({name: getattr(args, name) for _, name, _, _ in SAMPLING_OPTIONS
                   if getattr(args, name) is not None})
    runtime = _choose_runtime(args)
    llm = rkllm.LLM(path, runtime=runtime.path, abi=args.abi, params=params)
    if args.verbose:
        print(f"max_context_len: {context_note(llm, args.max_context_len)}", file=sys.stderr,
              flush=True)
    return llm


def _model_file_context(path: str) -> int | None:
    """The context length the model file allows, when it says."""
    try:
        from rkllm.modelfile import inspect_model

        fact = inspect_model(path).facts.get("max_context_len")
    except (OSError, RKLLMError):
        return None
    return None if fact is None else int(fact.value)


def context_note(llm: Any, given: int | None) -> str:
    """The context length ``llm`` was loaded with, and where that number came from."""
    # CoreLLM.context_length where it exists; the params it was loaded with otherwise
    used = getattr(llm, "context_length", None) or llm.params.get("max_context_len")
    if given is not None:
        return f"{used} tokens (from --max-context-len)"
    allowed = _model_file_context(llm.model_path)
    if allowed is None:
        return f"{used} tokens (the default; the model file does not say its limit)"
    if allowed == used:
        return f"{used} tokens (from the model file)"
    return f"{used} tokens (the default; the model file allows {allowed})"


def with_context_hint(exc: RKLLMError, llm: Any, *, chat: bool = False) -> RKLLMError:
    """``exc`` with what to do on the command line, when it says the input outgrew the context
    (rkllm.errors.ContextLengthError carries the ``limit``)."""
    limit = getattr(exc, "limit", None)
    if not isinstance(limit, int):
        return exc
    todo = ["/clear starts the conversation over"] if chat else []
    allowed = _model_file_context(llm.model_path)
    if allowed is not None and allowed > limit:
        todo.append(f"--max-context-len up to {allowed} (the model file's limit) gives more room")
    if not todo:
        return exc
    return GenerationError(f"{exc}. In rkllm {'chat' if chat else 'run'}: {'; '.join(todo)}")


def _ms(ms: float) -> str:
    return f"{ms / 1000:.3f}s" if ms >= 1000 else f"{ms:.2f}ms"


def print_timings(total_s: float, load_s: float, stream: Any, stderr: Any) -> None:
    perf = stream.perf
    rows = [("total duration", _ms(total_s * 1000)), ("load duration", _ms(load_s * 1000))]
    if perf is not None:
        if perf.prefill_tokens is not None:
            rows.append(("prompt eval count", f"{perf.prefill_tokens} token(s)"))
        else:
            rows.append(("prompt eval count", "not reported by this runtime (< 1.2.1)"))
        rows.append(("prompt eval duration", _ms(perf.prefill_ms)))
        if perf.prefill_tokens_per_s is not None:
            rows.append(("prompt eval rate", f"{perf.prefill_tokens_per_s:.2f} tokens/s"))
        rows.append(("eval count", f"{perf.generate_tokens} token(s)"))
        rows.append(("eval duration", _ms(perf.generate_ms)))
        if perf.generate_tokens_per_s is not None:
            rows.append(("eval rate", f"{perf.generate_tokens_per_s:.2f} tokens/s"))
    rows.append(("finish reason", str(stream.finish_reason)))
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name + ':':<{width}}{value}", file=stderr)
