"""The low-level layer: the only importer of the compiled shim ``rkllm._native``.

Thin 1:1 methods over the shim's version-neutral C interface (``csrc/shim/rkshim_api.h``):
return codes become exceptions in one place (:func:`check`), handles have a lifetime
(``close()`` is idempotent; every call after it raises :class:`~rkllm.errors.ClosedError`),
and nothing here knows any runtime release's struct layout. What may cross into C is checked
here too: text (:func:`c_text`), float32 buffers (:func:`float32_view`), run requests.

(Over 400 lines on purpose: the whole C boundary stays in this one module, the only one that
imports ``_native``.)
"""

from __future__ import annotations

import array
import gc
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, NoReturn

from rkllm import errors as E
from rkllm._native import ffi, lib

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

_ERRORS: dict[int, type[E.RKLLMError]] = {
    lib.RKSHIM_E_NOTFOUND: E.RuntimeNotFoundError,
    lib.RKSHIM_E_UNSUPPORTED: E.UnsupportedRuntimeError,
    lib.RKSHIM_E_CLOSED: E.ClosedError,
    lib.RKSHIM_E_BUSY: E.BusyError,
    lib.RKSHIM_E_PARAM: E.ParamError,
    lib.RKSHIM_E_LOAD: E.ModelLoadError,
    lib.RKSHIM_E_RUNTIME: E.RKLLMError,
    lib.RKSHIM_E_NOMEM: E.RKLLMError,
    lib.RKSHIM_E_TIMEOUT: E.GenerationError,
    lib.RKSHIM_E_MISSING: E.ParamError,
}


def _text(ptr: Any) -> str:
    return "" if ptr == ffi.NULL else bytes(ffi.string(ptr)).decode("utf-8", "replace")


# What to try when no runtime is found: the message comes from the shim's loader.
NOT_FOUND_HINT = ('; to try rkllm without a board, use the simulated runtime: '
                  'rkllm.LLM(model, runtime="sim") (or RKLLM_LIBRARY=sim)')


def raise_last(rc: int) -> NoReturn:
    """Raises the calling thread's last shim error as the exception class for ``rc``."""
    message = _text(lib.rkshim_last_error()) or f"shim error {rc}"
    runtime_rc = lib.rkshim_last_runtime_rc()
    runtime_message = _text(lib.rkshim_last_runtime_message()) or None
    cls = _ERRORS.get(rc, E.RKLLMError)
    if cls is E.RuntimeNotFoundError:
        message += NOT_FOUND_HINT
    raise cls(message, code=runtime_rc or None, runtime_message=runtime_message)


def check(rc: int) -> int:
    """The one place where a shim return code becomes an exception."""
    if rc < 0:
        raise_last(rc)
    return rc


def c_text(value: str | bytes | os.PathLike[str], what: str) -> bytes:
    """The one rule for every string handed to C: UTF-8 (a path: ``os.fspath`` first), no
    NUL (C would silently cut the text there), no lone surrogate (not text; a path that is
    not UTF-8 is given as bytes). Raises E.ParamError naming ``what``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise E.ParamError(f"{what} contains a lone surrogate U+{ord(value[exc.start]):04X} "
                             f"at index {exc.start} (not text)") from None
    elif isinstance(value, bytes):
        data = value
    else:
        raise E.ParamTypeError(f"{what} must be a str, got {type(value).__name__}")
    if b"\0" in data:
        index = data.decode("utf-8", "replace").index("\0")
        raise E.ParamError(f"{what} contains a NUL character at index {index}")
    return data


_FLOAT32_FORMATS = ("f", "=f", "@f", "<f" if sys.byteorder == "little" else ">f")


def float32_view(data: Any, what: str) -> memoryview[Any]:
    """``data`` as a flat float32 memoryview: a buffer whose format is float32 (array('f'),
    a numpy float32 array, a memoryview) is used as is; a list or tuple of numbers is
    converted. Any other buffer (float64, int32, bytes) is refused, not reinterpreted."""
    if isinstance(data, (list, tuple)):
        try:
            return memoryview(array.array("f", [float(x) for x in data]))
        except (TypeError, ValueError):
            raise E.ParamTypeError(f"{what} must hold numbers") from None
    try:
        view = memoryview(data)
    except TypeError:
        raise E.ParamTypeError(f"{what} must be float32 data (array('f'), a numpy float32 "
                               f"array, a memoryview of format 'f') or a list of numbers, "
                               f"got {type(data).__name__}") from None
    if view.format not in _FLOAT32_FORMATS or view.itemsize != 4:
        raise E.ParamTypeError(f"{what} must be float32 data, got a buffer of format "
                               f"{view.format!r} (convert it, e.g. numpy .astype('float32'))")
    if not view.c_contiguous:
        raise E.ParamTypeError(f"{what} must be a contiguous buffer")
    return view.cast("B").cast("f") if view.ndim != 1 else view


def _float_buffer(data: Any, keep: list[Any], what: str = "data") -> tuple[Any, int]:
    """A C float buffer over ``data`` (see :func:`float32_view`) and its length."""
    buf = ffi.from_buffer("float[]", float32_view(data, what))
    keep.append(buf)
    return buf, len(buf)


def _cstr(value: str | bytes | os.PathLike[str] | None, keep: list[Any], what: str) -> Any:
    if value is None:
        return ffi.NULL
    buf = ffi.new("char[]", c_text(value, what))
    keep.append(buf)
    return buf


def _is_text(ctype: Any) -> bool:
    return bool(ctype.kind == "pointer" and ctype.item.cname == "char")


# ---- runtimes --------------------------------------------------------------------------------

# Field names come from the compiled interface (csrc/shim/rkshim_api.h), not from lists here.
PARAM_FIELDS = tuple(n for n, f in ffi.typeof("rkshim_param").fields if not _is_text(f.type))
PARAM_STR_FIELDS = tuple(n for n, f in ffi.typeof("rkshim_param").fields if _is_text(f.type))
SAMPLING_FIELDS = tuple(n for n, _ in ffi.typeof("rkshim_sampling").fields)
RUN_FIELDS = tuple(n for n, _ in ffi.typeof("rkshim_run_args").fields)
OUTCOME_FIELDS = tuple(n for n, _ in ffi.typeof("rkshim_outcome").fields)


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
        texts = {name: _text(getattr(p, name)) or None for name in PARAM_STR_FIELDS}
        return {**{name: getattr(p, name) for name in PARAM_FIELDS}, **texts}

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
            check(lib.rkshim_runtime_open(_cstr(path, keep, "runtime"),
                                          _cstr(path_source, keep, "runtime"),
                                          _cstr(PACKAGE_DIR, keep, "the package directory"),
                                          _cstr(abi or None, keep, "abi"), out))
            runtime = _runtimes[key] = Runtime(out[0])
        return runtime


# ---- models ----------------------------------------------------------------------------------

# How each rkshim_run_args field is filled from a run request (an object with attributes of
# the same names, e.g. rkllm.request.RunRequest): text, a counted array, the per-run sampling
# struct, or a number. The counts are set with their arrays, never taken from the request.
_COUNTS = {"token_ids": "n_token_ids", "embed": "n_embed_floats",
           "image_embed": "n_image_floats"}
_DERIVED = frozenset(_COUNTS.values()) | {"has_sampling"}


def _run_field_kind(ctype: Any) -> str:
    if _is_text(ctype):
        return "text"
    if ctype.kind == "pointer":
        return "ints" if ctype.item.cname == "int32_t" else "floats"
    return "struct" if ctype.kind == "struct" else "number"


_RUN_PLAN = tuple((n, _run_field_kind(f.type)) for n, f in ffi.typeof("rkshim_run_args").fields
                  if n not in _DERIVED)


def _run_args(request: Any, keep: list[Any]) -> Any:
    a = ffi.new("rkshim_run_args *")
    keep.append(a)
    for name, kind in _RUN_PLAN:
        value = getattr(request, name, None)
        if value is None:
            continue
        try:
            if kind == "text":
                setattr(a, name, _cstr(value, keep, name))
            elif kind == "number":
                setattr(a, name, value)
            elif kind == "struct":  # the per-run sampling overrides
                a.has_sampling = 1
                for field in SAMPLING_FIELDS:
                    setattr(a.sampling, field, value[field])
            else:
                if kind == "ints":
                    buf, n = ffi.new("int32_t[]", list(value)), len(value)
                    keep.append(buf)
                else:
                    buf, n = _float_buffer(value, keep, name)
                setattr(a, name, buf)
                setattr(a, _COUNTS[name], n)
        except (OverflowError, TypeError) as exc:  # the request builder checks these first
            raise E.ParamError(f"{name}: {exc}") from None
    return a


# Text fields of rkshim_outcome (e.g. the runtime's reason for a failed run, where the shim
# has one) come out as str.
OUTCOME_TEXT_FIELDS = tuple(n for n, f in ffi.typeof("rkshim_outcome").fields
                            if f.type.kind in ("array", "pointer")
                            and f.type.item.cname == "char")


def _outcome(o: Any) -> dict[str, Any]:
    return {name: _text(getattr(o, name)) if name in OUTCOME_TEXT_FIELDS else getattr(o, name)
            for name in OUTCOME_FIELDS}


class Model:
    """One loaded model. Methods map 1:1 to the shim's ``rkshim_model_*`` functions.

    Ownership of a generation session: :meth:`start` records its owner (an object with an
    ``ended`` attribute, which :meth:`end` sets, and a ``holds()`` method, e.g. rkllm.stream's
    run state; held weakly). A session whose owner has gone or no longer holds it is stale:
    an interrupt (Ctrl-C) landed after the owner let go but before the shim heard of it. The next call that finds the model busy ends such a
    session first, so no interrupt can leave the model busy for good.
    """

    def __init__(self, runtime: Runtime, model_path: str | os.PathLike[str],
                 params: Mapping[str, Any]) -> None:
        self.runtime = runtime
        keep: list[Any] = []
        p = ffi.new("rkshim_param *")
        for name in PARAM_FIELDS:
            setattr(p, name, params[name])
        for name in PARAM_STR_FIELDS:
            setattr(p, name, _cstr(params.get(name), keep, name))
        out = ffi.new("rkshim_model **")
        check(lib.rkshim_model_open(runtime._ptr, _cstr(model_path, keep, "model"), p, out))
        self._ptr: Any = ffi.gc(out[0], lib.rkshim_model_free)
        self._batch = ffi.new("rkshim_batch *")
        self._closed = False
        self._pid = os.getpid()  # a forked child cannot use it (the runtime's threads stay behind)
        self._lock = threading.RLock()  # start() and owner registration, as one step
        self._owner: Callable[[], Any] = _no_owner
        # sessions started and the one not yet ended: each started run gets exactly one
        # rkshim_model_end (a second would give back a reference the run no longer holds)
        self._sessions = 0
        self._live_session: int | None = None

    # lifetime
    @property
    def closed(self) -> bool:
        return self._closed or bool(lib.rkshim_model_is_closed(self._ptr))

    def why_closed(self) -> str:
        """Why a closed model is closed, for the ClosedError."""
        if os.getpid() != self._pid:
            return ("this model was loaded in the parent process before fork(); load it again "
                    "in the child")
        return "the model is closed"

    def close(self) -> None:
        self._closed = True
        check(lib.rkshim_model_close(self._ptr))

    def _live(self) -> Any:
        if self._closed:
            raise E.ClosedError("the model is closed")
        return self._ptr

    def _busy_call(self, call: Callable[[], int]) -> int:
        """``call()``; if the model is busy with a stale session, end that and call again."""
        rc: int = call()
        if rc == lib.RKSHIM_E_BUSY:
            with self._lock:  # not while a start() is between the shim and its owner
                if self._owner_holds():
                    # an owner kept only by a reference cycle (asyncio's exception plumbing
                    # after Ctrl-C makes such cycles) is garbage: collecting it ends its run
                    gc.collect()
                if not self._owner_holds():
                    lib.rkshim_model_end(self._ptr, 60000, ffi.NULL)
                    self._live_session = None
                    self._owner = _no_owner
            rc = call()
        return check(rc)

    def _owner_holds(self) -> bool:
        owner = self._owner()
        return owner is not None and bool(owner.holds())

    # generation
    def start(self, request: Any = None, owner: Any = None, **fields: Any) -> None:
        """Starts a run of ``request`` (an object with :data:`RUN_FIELDS` names, e.g. a
        rkllm.request.RunRequest, or those fields as keywords) owned by ``owner`` (None: no
        owner; the session is then ended by whichever call next finds the model busy)."""
        if request is None:
            request = SimpleNamespace(**fields)
        ptr = self._live()
        keep: list[Any] = []
        args = _run_args(request, keep)
        with self._lock:
            self._sessions += 1
            session = self._sessions
            if owner is not None:
                owner.session = session
            self._busy_call(lambda: lib.rkshim_model_start(ptr, args))
            # an interrupt before the next two lines leaves a session nobody holds: the next
            # call that finds the model busy ends it (_busy_call)
            self._live_session = session
            self._owner = _no_owner if owner is None else weakref.ref(owner)

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

    def end(self, owner: Any = None, timeout_ms: int = 60000) -> dict[str, Any] | None:
        """Ends ``owner``'s generation session (aborting a run still going) and returns how
        the run ended (setting ``owner.ended``); None if the session had already ended (e.g.
        by close) or is another live owner's (this one's start failed, or another run has
        started since). A session
        without a live owner is stale and ended too (the garbage collector clears weak
        references before finalisers run); ``owner=None`` ends whatever session is going."""
        o = ffi.new("rkshim_outcome *")
        with self._lock:  # a start() in another thread waits: it would find us busy
            if owner is not None:
                # let go under the lock: a call in another thread that finds the model busy
                # never takes this session for stale while its owner is ending it (it would
                # end it first and the owner would lose the outcome); an interrupt from here
                # on leaves a stale session that the next call ends
                owner.ended = True
            current = self._owner()
            if owner is not None and current is not None and current is not owner:
                return None
            if self._live_session is None or (
                    owner is not None and getattr(owner, "session", None) != self._live_session):
                return None  # ended already (a later call found it stale), or never started
            self._live_session = None
            check(lib.rkshim_model_end(self._ptr, timeout_ms, o))
            self._owner = _no_owner
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
    def _op(self, fn: Callable[..., int], *args: Any, **texts: str | None) -> int:
        """``fn(model, *texts, *args)``, the texts as C strings (their names for errors)."""
        ptr, keep = self._live(), list[Any]()
        cargs = (*(_cstr(v, keep, k) for k, v in texts.items()), *args)
        return self._busy_call(lambda: fn(ptr, *cargs))

    def clear_kv_cache(self, keep_system_prompt: bool, start_pos: Sequence[int] | None,
                       end_pos: Sequence[int] | None) -> None:
        try:
            start = ffi.NULL if start_pos is None else ffi.new("int[]", list(start_pos))
            end = ffi.NULL if end_pos is None else ffi.new("int[]", list(end_pos))
        except (OverflowError, TypeError) as exc:
            raise E.ParamError(f"clear_kv_cache positions: {exc}") from None
        self._op(lib.rkshim_model_clear_kv_cache, int(keep_system_prompt), start, end)

    def kv_cache_size(self, n_batch: int) -> list[int]:
        sizes = ffi.new("int[]", 128)
        self._op(lib.rkshim_model_kv_cache_size, sizes, 128)
        return list(sizes[0:max(1, n_batch)])

    def set_chat_template(self, system_prompt: str | None, prefix: str | None,
                          postfix: str | None) -> None:
        self._op(lib.rkshim_model_set_chat_template, system_prompt=system_prompt,
                 prompt_prefix=prefix, prompt_postfix=postfix)

    def set_function_tools(self, system_prompt: str | None, tools: str | None,
                           tool_response_str: str | None) -> None:
        self._op(lib.rkshim_model_set_function_tools, system_prompt=system_prompt,
                 tools=tools, tool_response_str=tool_response_str)

    def load_lora(self, path: str, name: str, scale: float) -> None:
        self._op(lib.rkshim_model_load_lora, scale, path=path, name=name)

    def load_prompt_cache(self, path: str) -> None:
        self._op(lib.rkshim_model_load_prompt_cache, path=path)

    def release_prompt_cache(self) -> None:
        self._op(lib.rkshim_model_release_prompt_cache)

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


def _no_owner() -> None:
    return None
