"""rkllm-cffi: stream text from Rockchip's RKLLM runtime (or its simulator) from Python.

    import rkllm
    with rkllm.LLM("model.rkllm", runtime="sim") as llm:
        for piece in llm.generate("Why is the sky blue?", max_new_tokens=64):
            print(piece, end="", flush=True)

See docs/api.md. Heavy modules (huggingface_hub, the CLI) are imported only when used.
"""

from __future__ import annotations

from rkllm.errors import (
    BusyError,
    ClosedError,
    GenerationError,
    IntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    ParamError,
    RKLLMError,
    RuntimeNotFoundError,
    UnsupportedRuntimeError,
)
from rkllm.llm import LLM, load_runtime
from rkllm.stream import Perf, Result, Stream, Tensor

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "BusyError",
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
    "load_runtime",
]
