"""One exception hierarchy for the whole package: every exception ends in ``Error``."""

from __future__ import annotations


class RKLLMError(Exception):
    """Base class. ``code`` is the runtime's return code (or None); ``runtime_message`` is
    the last line the runtime printed about the failure, when one was captured."""

    def __init__(self, message: str, *, code: int | None = None,
                 runtime_message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.runtime_message = runtime_message

    def __str__(self) -> str:
        text = super().__str__()
        if self.code is not None and f"code {self.code}" not in text:
            text += f" (code {self.code})"
        if self.runtime_message and self.runtime_message not in text:
            text += f": {self.runtime_message}"
        return text


class RuntimeNotFoundError(RKLLMError):
    """No usable librkllmrt.so was found; the message names every place tried and why."""


class UnsupportedRuntimeError(RKLLMError):
    """A runtime was found but its release is unknown or not supported."""


class ModelLoadError(RKLLMError):
    """``rkllm_init`` failed, or the model file is missing, corrupt or made for another runtime."""


class GenerationError(RKLLMError):
    """``rkllm_run`` failed or the runtime reported an error state while generating."""


class ContextLengthError(GenerationError):
    """The input does not fit the model's context (``max_context_len``). ``n_tokens`` is the
    input's token count (``estimated`` is True when it was estimated from the text, because
    the runtime offers no tokenizer) and ``limit`` the context length."""

    def __init__(self, message: str, *, n_tokens: int, limit: int, estimated: bool = False,
                 code: int | None = None, runtime_message: str | None = None) -> None:
        super().__init__(message, code=code, runtime_message=runtime_message)
        self.n_tokens = n_tokens
        self.limit = limit
        self.estimated = estimated


class ClosedError(RKLLMError):
    """The model (or runtime) was used after ``close()``."""


class BusyError(RKLLMError):
    """A second generation was started on a model that is already generating."""


class ParamError(RKLLMError, ValueError):
    """A parameter has an unknown name, a wrong type or an out-of-range value."""


class ParamTypeError(ParamError, TypeError):
    """A parameter of the wrong type: both a ParamError (as before) and a TypeError."""


class ModelNotFoundError(RKLLMError):
    """A model reference (path or ``REPO[:FILE]``) could not be resolved."""


class IntegrityError(RKLLMError):
    """A downloaded file does not match its published checksum."""


__all__ = [
    "RKLLMError", "RuntimeNotFoundError", "UnsupportedRuntimeError", "ModelLoadError",
    "GenerationError", "ContextLengthError", "ClosedError", "BusyError", "ParamError",
    "ParamTypeError", "ModelNotFoundError",
    "IntegrityError",
]
