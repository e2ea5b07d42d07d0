"""The low-level layer: the only importer of the compiled shim ``rkllm._native``.

Thin 1:1 methods over the shim's version-neutral C interface (``csrc/shim/rkshim_api.h``):
return codes become exceptions in one place (:func:`check`), handles have a lifetime
(``close()`` is idempotent; every call after it raises :class:`~rkllm.errors.ClosedError`),
and nothing here knows any runtime release's struct layout.
"""

from __future__ import annotations

import array
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from rkllm._native import ffi, lib
from rkllm.errors import (
    BusyError,
    ClosedError,
    GenerationError,
    ModelLoadError,
    ParamError,
    RKLLMError,
    RuntimeNotFoundError,
    UnsupportedRuntimeError,
)

INTERFACE_VERSION = 2
if lib.rkshim_interface_version() != INTERFACE_VERSION:  # a stale build of the shim
    raise ImportError(
        f"rkllm._native has interface {lib.rkshim_interface_version()}, this rkllm needs "
        f"{INTERFACE_VERSION}: rebuild it (pip install -e . --no-build-isolation)"
    )

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# run status (rkshim_outcome.status)
RUN_FINISHED = lib.RKSHIM_RUN_FINISHED
RUN_LENGTH = lib.RKSHIM_RUN_LENGTH
RUN_ABORTED = lib.RKSHIM_RUN_ABORTED
RUN_ERROR = lib.RKSHIM_RUN_ERROR
MODE_GENERATE = lib.RKSHIM_MODE_GENERATE
MODE_HIDDEN = lib.RKSHIM_MODE_HIDDEN
MODE_LOGITS = lib.RKSHIM_MODE_LOGITS
INPUT_PROMPT = lib.RKSHIM_INPUT_PROMPT
INPUT_TOKEN = lib.RKSHIM_INPUT_TOKEN
INPUT_EMBED = lib.RKSHIM_INPUT_EMBED
INPUT_MULTIMODAL = lib.RKSHIM_INPUT_MULTIMODAL

_ERRORS: dict[int, type[RKLLMError]] = {
    lib.RKSHIM_E_NOTFOUND: RuntimeNotFoundError,
    lib.RKSHIM_E_UNSUPPORTED: UnsupportedRuntimeError,
    lib.RKSHIM_E_CLOSED: ClosedError,
    lib.RKSHIM_E_BUSY: BusyError,
    lib.RKSHIM_E_PARAM: ParamError,
    lib.RKSHIM_E_LOAD: ModelLoadError,
    lib.RKSHIM_E_RUNTIME: RKLLMError,
    lib.RKSHIM_E_NOMEM: RKLLMError,
    lib.RKSHIM_E_TIMEOUT: GenerationError,
    lib.RKSHIM_E_MISSING: ParamError,
}


def _text(ptr: Any) -> str:
    return "" if ptr == ffi.NULL else bytes(ffi.string(ptr)).decode("utf-8", "replace")


def raise_last(rc: int) -> NoReturn:
    """Raises the calling thread's last shim error as the exception class for ``rc``."""
    message = _text(lib.rkshim_last_error()) or f"shim error {rc}"
    runtime_rc = lib.rkshim_last_runtime_rc()
    runtime_message = _text(lib.rkshim_last_runtime_message()) or None
    cls = _ERRORS.get(rc, RKLLMError)
    raise cls(message, code=runtime_rc or None, runtime_message=runtime_message)


def check(rc: int) -> int:
    """The one place where a shim return code becomes an exception."""
    if rc < 0:
        raise_last(rc)
    return rc


def _cstr(value: str | os.PathLike[str] | None, keep: list[Any]) -> Any:
    if value is None:
        return ffi.NULL
    buf = ffi.new("char[]", os.fsencode(value))
    keep.append(buf)
    return buf


# ---- runtimes --------------------------------------------------------------------------------

PARAM_FIELDS = (
    "max_context_len", "max_new_tokens", "top_k", "n_keep", "top_p", "temperature",
    "repeat_penalty", "frequency_penalty", "presence_penalty", "mirostat", "mirostat_tau",
    "mirostat_eta", "skip_special_token", "ignore_eos_token", "base_domain_id", "embed_flash",
    "enabled_cpus_num", "enabled_cpus_mask", "n_batch", "use_cross_attn",
)
PARAM_STR_FIELDS = ("img_start", "img_end", "img_content")
SAMPLING_FIELDS = (
    "top_k", "top_p", "temperature", "repeat_penalty", "frequency_penalty", "presence_penalty",
    "mirostat", "mirostat_tau", "mirostat_eta",
)


class Runtime:
    """One loaded runtime library (never unloaded). Use :func:`open_runtime`."""

    def __init__(self, ptr: Any) -> None:
        self._ptr = ptr
        self.path: str = _text(lib.rkshim_runtime_path(ptr))
        self.family: str = _text(lib.rkshim_runtime_family(ptr))
        self.release: str | None = _text(lib.rkshim_runtime_release(ptr)) or None
        self.detected_by: str = _text(lib.rkshim_runtime_detected_by(ptr))
        info = lib.rkshim_runtime_sim_info(ptr)
        self.simulator_info: str | None = None if info == ffi.NULL else _text(info)

    @property
    def is_simulator(self) -> bool:
        return self.simulator_info is not None

    def default_params(self) -> dict[str, Any]:
        """The runtime's own ``rkllm_createDefaultParam``, in neutral form."""
        p = ffi.new("rkshim_param *")
        check(lib.rkshim_runtime_default_param(self._ptr, p))
        out: dict[str, Any] = {name: getattr(p, name) for name in PARAM_FIELDS}
        for name in PARAM_STR_FIELDS:
            out[name] = None if getattr(p, name) == ffi.NULL else _text(getattr(p, name))
        return out

    def __repr__(self) -> str:
        kind = "simulated " if self.is_simulator else ""
        return f"<rkllm {kind}runtime {self.release or self.family} at {self.path}>"


_runtimes: dict[tuple[str | None, str | None, str | None], Runtime] = {}
_runtimes_lock = threading.Lock()


def open_runtime(path: str | None = None, *, path_source: str | None = None,
                 abi: str | None = None) -> Runtime:
    """Finds, checks and loads a runtime (once per path and ABI; later calls reuse it).
    ``path=None`` searches ``RKLLM_LIBRARY``, the bundled runtime, then the system's."""
    key = (path, None if path else os.environ.get("RKLLM_LIBRARY"), abi or None)
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            keep: list[Any] = []
            out = ffi.new("rkshim_runtime **")
            check(lib.rkshim_runtime_open(_cstr(path, keep), _cstr(path_source, keep),
                                          _cstr(PACKAGE_DIR, keep), _cstr(abi or None, keep),
                                          out))
            runtime = _runtimes[key] = Runtime(out[0])
        return runtime


# ---- models ----------------------------------------------------------------------------------

def _float_buffer(data: Any, keep: list[Any]) -> tuple[Any, int]:
    """A float32 buffer for C from a buffer-protocol object or a sequence of numbers."""
    if isinstance(data, (array.array, memoryview, bytes, bytearray)) or hasattr(data, "__array__"):
        try:
            buf = ffi.from_buffer("float[]", data)
        except TypeError as exc:
            raise ParamError(f"expected float32 data: {exc}") from None
        if isinstance(data, array.array) and data.typecode != "f":
            raise ParamError(f"expected array('f'), got array({data.typecode!r})")
    else:
        buf = ffi.new("float[]", [float(x) for x in data])
    keep.append(buf)
    return buf, len(buf)


def _outcome(o: Any) -> dict[str, Any]:
    return {name: getattr(o, name) for name in (
        "status", "runtime_rc", "n_tokens", "perf_source", "prefill_ms", "prefill_tokens",
        "generate_ms", "generate_tokens", "memory_mb")}


class Model:
    """One loaded model. Methods map 1:1 to the shim's ``rkshim_model_*`` functions."""

    def __init__(self, runtime: Runtime, model_path: str, params: Mapping[str, Any]) -> None:
        self.runtime = runtime
        keep: list[Any] = []
        p = ffi.new("rkshim_param *")
        for name in PARAM_FIELDS:
            setattr(p, name, params[name])
        for name in PARAM_STR_FIELDS:
            setattr(p, name, _cstr(params.get(name), keep))
        out = ffi.new("rkshim_model **")
        check(lib.rkshim_model_open(runtime._ptr, _cstr(model_path, keep), p, out))
        self._ptr: Any = ffi.gc(out[0], lib.rkshim_model_free)
        self._batch = ffi.new("rkshim_batch *")
        self._closed = False

    # lifetime
    @property
    def closed(self) -> bool:
        return self._closed or bool(lib.rkshim_model_is_closed(self._ptr))

    def close(self) -> None:
        self._closed = True
        check(lib.rkshim_model_close(self._ptr))

    def _live(self) -> Any:
        if self._closed:
            raise ClosedError("the model is closed")
        return self._ptr

    # generation
    def start(self, *, input_type: int, prompt: str | None = None, role: str | None = None,
              enable_thinking: bool = False, token_ids: Sequence[int] | None = None,
              embed: Any = None, n_embed_tokens: int = 0, image_embed: Any = None,
              n_image_tokens: int = 0, n_image: int = 0, image_width: int = 0,
              image_height: int = 0, image_start: str | None = None,
              image_end: str | None = None, image_content: str | None = None,
              mode: int = 0, lora_adapter_name: str | None = None,
              save_prompt_cache_path: str | None = None, keep_history: bool = False,
              max_new_tokens: int = -1, sampling: Mapping[str, Any] | None = None,
              embed_size: int = 0) -> None:
        ptr = self._live()
        keep: list[Any] = []
        a = ffi.new("rkshim_run_args *")
        a.input_type = input_type
        a.role = _cstr(role, keep)
        a.enable_thinking = int(enable_thinking)
        a.prompt = _cstr(prompt, keep)
        if token_ids is not None:
            ids = ffi.new("int32_t[]", list(token_ids))
            keep.append(ids)
            a.token_ids, a.n_token_ids = ids, len(ids)
        if embed is not None:
            a.embed, a.n_embed_floats = _float_buffer(embed, keep)
            a.n_embed_tokens = n_embed_tokens
        if image_embed is not None:
            a.image_embed, a.n_image_floats = _float_buffer(image_embed, keep)
            a.n_image_tokens, a.n_image = n_image_tokens, n_image
            a.image_width, a.image_height = image_width, image_height
        a.image_start = _cstr(image_start, keep)
        a.image_end = _cstr(image_end, keep)
        a.image_content = _cstr(image_content, keep)
        a.mode = mode
        a.lora_adapter_name = _cstr(lora_adapter_name, keep)
        a.save_prompt_cache_path = _cstr(save_prompt_cache_path, keep)
        a.keep_history = int(keep_history)
        a.max_new_tokens = max_new_tokens
        a.embed_size = embed_size  # floats per row when known (0: the shim checks what it can)
        if sampling is not None:
            a.has_sampling = 1
            for name in SAMPLING_FIELDS:
                setattr(a.sampling, name, sampling[name])
        check(lib.rkshim_model_start(ptr, a))

    def pull(self, timeout_ms: int) -> tuple[str, list[int], bool]:
        """Waits up to ``timeout_ms`` for a batch: (text, per-token end offsets into text,
        done). The offsets are code points; equal neighbours mean a token that completed
        no character."""
        rc = lib.rkshim_model_pull(self._ptr, self._batch, timeout_ms)
        if rc:
            raise_last(rc)
        b = self._batch
        n = b.n_tokens
        if not n:
            return "", [], bool(b.done)
        return (ffi.unpack(b.text, b.text_len).decode("utf-8"), ffi.unpack(b.ends, n),
                bool(b.done))

    def pull_ids(self) -> list[int]:
        """Token ids of the batch the last pull returned."""
        b = self._batch
        return ffi.unpack(b.token_ids, b.n_tokens) if b.n_tokens else []

    def abort(self) -> None:
        check(lib.rkshim_model_abort(self._ptr))

    def end(self, timeout_ms: int = 60000) -> dict[str, Any] | None:
        """Ends the generation session (aborting a run still going) and returns how the run
        ended, or None if the session had already ended (e.g. by close)."""
        o = ffi.new("rkshim_outcome *")
        check(lib.rkshim_model_end(self._ptr, timeout_ms, o))
        return _outcome(o) if o.status else None

    def array(self, kind: int) -> tuple[array.array[float], int, int] | None:
        data = ffi.new("float **")
        rows = ffi.new("int *")
        cols = ffi.new("int *")
        check(lib.rkshim_model_array(self._ptr, kind, data, rows, cols))
        if data[0] == ffi.NULL:
            return None
        values = array.array("f")
        values.frombytes(ffi.buffer(data[0], rows[0] * cols[0] * 4))
        return values, rows[0], cols[0]

    def event_fd(self) -> int:
        return check(lib.rkshim_model_event_fd(self._live()))

    def is_running(self) -> bool:
        return bool(lib.rkshim_model_is_running(self._ptr))

    # the runtime's other functions
    def clear_kv_cache(self, keep_system_prompt: bool, start_pos: Sequence[int] | None,
                       end_pos: Sequence[int] | None) -> None:
        start = ffi.NULL if start_pos is None else ffi.new("int[]", list(start_pos))
        end = ffi.NULL if end_pos is None else ffi.new("int[]", list(end_pos))
        check(lib.rkshim_model_clear_kv_cache(self._live(), int(keep_system_prompt), start, end))

    def kv_cache_size(self, n_batch: int) -> list[int]:
        sizes = ffi.new("int[]", 128)
        check(lib.rkshim_model_kv_cache_size(self._live(), sizes, 128))
        return list(sizes[0:max(1, n_batch)])

    def set_chat_template(self, system_prompt: str | None, prefix: str | None,
                          postfix: str | None) -> None:
        keep: list[Any] = []
        check(lib.rkshim_model_set_chat_template(
            self._live(), _cstr(system_prompt, keep), _cstr(prefix, keep), _cstr(postfix, keep)))

    def set_function_tools(self, system_prompt: str | None, tools: str | None,
                           tool_response_str: str | None) -> None:
        keep: list[Any] = []
        check(lib.rkshim_model_set_function_tools(
            self._live(), _cstr(system_prompt, keep), _cstr(tools, keep),
            _cstr(tool_response_str, keep)))

    def load_lora(self, path: str, name: str, scale: float) -> None:
        keep: list[Any] = []
        check(lib.rkshim_model_load_lora(self._live(), _cstr(path, keep), _cstr(name, keep),
                                         scale))

    def load_prompt_cache(self, path: str) -> None:
        keep: list[Any] = []
        check(lib.rkshim_model_load_prompt_cache(self._live(), _cstr(path, keep)))

    def release_prompt_cache(self) -> None:
        check(lib.rkshim_model_release_prompt_cache(self._live()))

    def set_cross_attn_params(self, k_cache: Any, v_cache: Any, mask: Any,
                              pos: Sequence[int]) -> None:
        """rkllm_set_cross_attn_params (1.2.1+): num_tokens = len(mask) = len(pos)."""
        keep: list[Any] = []
        k, n_k = _float_buffer(k_cache, keep)
        v, n_v = _float_buffer(v_cache, keep)
        msk, n_mask = _float_buffer(mask, keep)
        p = ffi.new("int32_t[]", list(pos))
        check(lib.rkshim_model_set_cross_attn_params(self._live(), k, n_k, v, n_v, msk, n_mask,
                                                     p, len(p), n_mask))
