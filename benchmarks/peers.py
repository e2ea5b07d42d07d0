"""The peer patterns rkllm-cffi is measured against, written here with ctypes against the same
(simulated) runtime library, ABI family 1.2.1.

- ``VendorPattern``: the transport of Rockchip's 1.2.x server examples: a ctypes callback that
  decodes each token and extends a global list under the GIL (``list += str`` adds one item per
  character, as in the example), ``rkllm_run`` on a ``threading.Thread``, and a consumer that
  drains the list with ``pop(0)`` and otherwise waits by joining the thread with a 5 ms timeout.
  The example's per-character ``time.sleep(0.005)`` (a UI pacing choice) is left out: with it a
  200k-token run would take over 15 minutes; the cost measured is the transport.
- ``QueuePattern``: the common community pattern: the ctypes callback puts each decoded token
  into a ``queue.Queue``; a generator gets from it until a ``None`` sentinel.
- ``AsyncioCtypesPattern``: asyncio fed by a ctypes callback through ``call_soon_threadsafe``.

Each pattern opens its own handle (``rkllm_init``) with its own callback, like an application.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from collections.abc import Callable, Iterator

# ---- the 1.2.1 ABI in ctypes (see include/1.2.1/rkllm.h) ----
RUN_NORMAL, RUN_WAITING, RUN_FINISH, RUN_ERROR = 0, 1, 2, 3


class ExtendParam(ctypes.Structure):
    _fields_ = [
        ("base_domain_id", ctypes.c_int32),
        ("embed_flash", ctypes.c_int8),
        ("enabled_cpus_num", ctypes.c_int8),
        ("enabled_cpus_mask", ctypes.c_uint32),
        ("n_batch", ctypes.c_uint8),
        ("use_cross_attn", ctypes.c_int8),
        ("reserved", ctypes.c_uint8 * 104),
    ]


class Param(ctypes.Structure):
    _fields_ = [
        ("model_path", ctypes.c_char_p),
        ("max_context_len", ctypes.c_int32),
        ("max_new_tokens", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("n_keep", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("mirostat", ctypes.c_int32),
        ("mirostat_tau", ctypes.c_float),
        ("mirostat_eta", ctypes.c_float),
        ("skip_special_token", ctypes.c_bool),
        ("is_async", ctypes.c_bool),
        ("img_start", ctypes.c_char_p),
        ("img_end", ctypes.c_char_p),
        ("img_content", ctypes.c_char_p),
        ("extend_param", ExtendParam),
    ]


class MultiModalInput(ctypes.Structure):
    _fields_ = [
        ("prompt", ctypes.c_char_p),
        ("image_embed", ctypes.POINTER(ctypes.c_float)),
        ("n_image_tokens", ctypes.c_size_t),
        ("n_image", ctypes.c_size_t),
        ("image_width", ctypes.c_size_t),
        ("image_height", ctypes.c_size_t),
    ]


class InputUnion(ctypes.Union):
    # the largest member fixes the union's size; only prompt_input is used here
    _fields_ = [("prompt_input", ctypes.c_char_p), ("multimodal_input", MultiModalInput)]


class Input(ctypes.Structure):
    _fields_ = [
        ("role", ctypes.c_char_p),
        ("enable_thinking", ctypes.c_bool),
        ("input_type", ctypes.c_int),
        ("input_data", InputUnion),
    ]


class InferParam(ctypes.Structure):
    _fields_ = [
        ("mode", ctypes.c_int),
        ("lora_params", ctypes.c_void_p),
        ("prompt_cache_params", ctypes.c_void_p),
        ("keep_history", ctypes.c_int),
    ]


class HiddenLayer(ctypes.Structure):
    _fields_ = [("hidden_states", ctypes.c_void_p), ("embd_size", ctypes.c_int), ("num_tokens", ctypes.c_int)]


class Logits(ctypes.Structure):
    _fields_ = [("logits", ctypes.c_void_p), ("vocab_size", ctypes.c_int), ("num_tokens", ctypes.c_int)]


class PerfStat(ctypes.Structure):
    _fields_ = [
        ("prefill_time_ms", ctypes.c_float),
        ("prefill_tokens", ctypes.c_int),
        ("generate_time_ms", ctypes.c_float),
        ("generate_tokens", ctypes.c_int),
        ("memory_usage_mb", ctypes.c_float),
    ]


class Result(ctypes.Structure):
    _fields_ = [
        ("text", ctypes.c_char_p),
        ("token_id", ctypes.c_int32),
        ("last_hidden_layer", HiddenLayer),
        ("logits", Logits),
        ("perf", PerfStat),
    ]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Result), ctypes.c_void_p, ctypes.c_int)


class _CtypesRuntime:
    """One handle opened through ctypes, with the pattern's Python callback."""

    def __init__(self, lib_path: str, model_path: str, max_new_tokens: int, max_context_len: int,
                 callback: Callable[..., int]) -> None:
        self.lib = ctypes.CDLL(lib_path)
        self.lib.rkllm_createDefaultParam.restype = Param
        self.lib.rkllm_init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(Param), CALLBACK]
        self.lib.rkllm_init.restype = ctypes.c_int
        self.lib.rkllm_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(Input), ctypes.POINTER(InferParam),
                                       ctypes.c_void_p]
        self.lib.rkllm_run.restype = ctypes.c_int
        self.lib.rkllm_destroy.argtypes = [ctypes.c_void_p]
        self._callback = CALLBACK(callback)  # kept alive as long as the handle
        self._model = model_path.encode()
        param = self.lib.rkllm_createDefaultParam()
        param.model_path = self._model
        param.max_new_tokens = max_new_tokens
        param.max_context_len = max_context_len
        param.top_k = 1  # greedy, as in the vendor's examples
        param.is_async = False
        self.handle = ctypes.c_void_p()
        rc = self.lib.rkllm_init(ctypes.byref(self.handle), ctypes.byref(param), self._callback)
        if rc != 0:
            raise RuntimeError(f"rkllm_init failed ({rc})")

    def run(self, prompt: str) -> int:
        inp = Input()
        inp.role = b"user"
        inp.enable_thinking = False
        inp.input_type = 0
        inp.input_data.prompt_input = prompt.encode()
        infer = InferParam()
        infer.mode = 0
        infer.keep_history = 0
        return int(self.lib.rkllm_run(self.handle, ctypes.byref(inp), ctypes.byref(infer), None))

    def close(self) -> None:
        if self.handle:
            self.lib.rkllm_destroy(self.handle)
            self.handle = ctypes.c_void_p()


class VendorPattern:
    """Global list + 5 ms polling, as in the vendor's 1.2.x Flask/Gradio servers."""

    name = "ctypes, vendor example (list + 5 ms poll)"

    def __init__(self, lib_path: str, model_path: str, max_new_tokens: int, max_context_len: int) -> None:
        self.text: list[str] = []
        self.state = -1

        def callback(result, userdata, state):  # type: ignore[no-untyped-def]
            if state == RUN_FINISH or state == RUN_ERROR:
                self.state = state
            elif state == RUN_NORMAL:
                self.state = state
                self.text += result.contents.text.decode("utf-8")
            return 0

        self.rt = _CtypesRuntime(lib_path, model_path, max_new_tokens, max_context_len, callback)

    def pieces(self, prompt: str) -> Iterator[str]:
        self.text = []
        self.state = -1
        model_thread = threading.Thread(target=self.rt.run, args=(prompt,))
        model_thread.start()
        finished = False
        while not finished:
            while len(self.text) > 0:
                yield self.text.pop(0)
            model_thread.join(timeout=0.005)
            finished = not model_thread.is_alive()
        # the thread may have delivered its last characters after the last drain
        while self.text:
            yield self.text.pop(0)

    def close(self) -> None:
        self.rt.close()


class QueuePattern:
    """ctypes callback into a queue.Queue, consumer generator on q.get()."""

    name = "ctypes into queue.Queue"

    def __init__(self, lib_path: str, model_path: str, max_new_tokens: int, max_context_len: int) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()

        def callback(result, userdata, state):  # type: ignore[no-untyped-def]
            if state == RUN_NORMAL:
                self.q.put(result.contents.text.decode("utf-8"))
            elif state == RUN_FINISH or state == RUN_ERROR:
                self.q.put(None)
            return 0

        self.rt = _CtypesRuntime(lib_path, model_path, max_new_tokens, max_context_len, callback)

    def pieces(self, prompt: str) -> Iterator[str]:
        worker = threading.Thread(target=self.rt.run, args=(prompt,))
        worker.start()
        get = self.q.get
        while (item := get()) is not None:
            yield item
        worker.join()

    def close(self) -> None:
        self.rt.close()


class AsyncioCtypesPattern:
    """asyncio fed by a ctypes callback via loop.call_soon_threadsafe into an asyncio.Queue."""

    name = "asyncio via ctypes call_soon_threadsafe"

    def __init__(self, lib_path: str, model_path: str, max_new_tokens: int, max_context_len: int) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.q: asyncio.Queue[str | None] | None = None

        def callback(result, userdata, state):  # type: ignore[no-untyped-def]
            assert self.loop is not None and self.q is not None
            if state == RUN_NORMAL:
                self.loop.call_soon_threadsafe(self.q.put_nowait, result.contents.text.decode("utf-8"))
            elif state == RUN_FINISH or state == RUN_ERROR:
                self.loop.call_soon_threadsafe(self.q.put_nowait, None)
            return 0

        self.rt = _CtypesRuntime(lib_path, model_path, max_new_tokens, max_context_len, callback)

    async def apieces(self, prompt: str):  # type: ignore[no-untyped-def]
        self.loop = asyncio.get_running_loop()
        self.q = asyncio.Queue()
        worker = self.loop.run_in_executor(None, self.rt.run, prompt)
        get = self.q.get
        while (item := await get()) is not None:
            yield item
        await worker

    def close(self) -> None:
        self.rt.close()


def busy_python_thread() -> tuple[threading.Thread, Callable[[], int]]:
    """A CPU-bound pure-Python thread (the contention case); returns (thread, stop -> loops done)."""
    flag = [True]
    count = [0]

    def spin() -> None:
        n = 0
        while flag[0]:
            n += 1
        count[0] = n

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    time.sleep(0.01)

    def stop() -> int:
        flag[0] = False
        t.join()
        return count[0]

    return t, stop
