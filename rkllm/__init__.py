"""rkllm-cffi: stream text from Rockchip's RKLLM runtime (or its simulator) from Python.

    import rkllm
    with rkllm.LLM("model.rkllm", runtime="sim") as llm:
        for piece in llm.generate("Why is the sky blue?", max_new_tokens=64):
            print(piece, end="", flush=True)

See docs/api.md. Heavy modules (huggingface_hub, the CLI) are imported only when used.
"""

from __future__ import annotations

from typing import Any

from rkllm.errors import (
    BusyError,
    ClosedError,
    ContextLengthError,
    GenerationError,
    IntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    ParamError,
    ParamTypeError,
    RKLLMError,
    RuntimeNotFoundError,
    UnsupportedRuntimeError,
)
from rkllm.llm import LLM
from rkllm.runtime_finder import find_runtime, load_runtime
from rkllm.stream import Perf, Result, Stream, Tensor

__version__ = "0.1.0"

# Loaded on first use so that `import rkllm` stays light (no asyncio, huggingface_hub, CLI).
_LAZY = {
    "ChatSession": ("rkllm.chat", "ChatSession"),
    "ChatTemplate": ("rkllm.chat", "ChatTemplate"),
    "create_chat_completion": ("rkllm.chat", "create_chat_completion"),
    "inspect_model": ("rkllm.modelfile", "inspect_model"),
    "resolve_model": ("rkllm.hub", "resolve_model"),
}
_SUBMODULES = ("aio", "chat", "sim", "modelfile", "hub", "doctor", "runtimes", "params",
               "releases", "machine", "runtime_finder")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"rkllm.{name}")
    else:
        raise AttributeError(f"module 'rkllm' has no attribute {name!r}")
    globals()[name] = value
    return value

__all__ = [
    "LLM",
    "BusyError",
    "ContextLengthError",
    "ParamTypeError",
    "ClosedError",
    "GenerationError",
    "IntegrityError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ParamError",
    "Perf",
    "RKLLMError",
    "Result",
    "RuntimeNotFoundError",
    "Stream",
    "Tensor",
    "UnsupportedRuntimeError",
    "find_runtime",
    "load_runtime",
]
