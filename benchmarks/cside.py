"""The C side of the benchmark: builds benchmarks/cconsumer.c and benchmarks/tap.c with gcc
(against include/1.2.1) into a temporary directory and wraps them with ctypes.
ctypes releases the GIL around these calls, so the C consumer runs undisturbed in-process."""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(os.path.dirname(HERE), "include", "1.2.1")
CFLAGS = ["-std=gnu11", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread"]


def build(out_dir: str | None = None) -> tuple[str, str]:
    """Compile both helpers; return (consumer .so, tap runtime .so)."""
    out_dir = out_dir or tempfile.mkdtemp(prefix="rkllm-bench-")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for src, lib in (("cconsumer.c", "libcconsumer.so"), ("tap.c", "librkllmrt-tap.so")):
        out = os.path.join(out_dir, lib)
        cmd = [os.environ.get("CC", "gcc"), *CFLAGS, "-I", INCLUDE, "-o", out, os.path.join(HERE, src), "-ldl"]
        subprocess.run(cmd, check=True)
        paths.append(out)
    return paths[0], paths[1]


class Stats(ctypes.Structure):
    _fields_ = [
        ("run_ns", ctypes.c_int64),
        ("first_ns", ctypes.c_int64),
        ("tokens", ctypes.c_int64),
        ("bytes", ctypes.c_int64),
        ("cpu_ns", ctypes.c_int64),
        ("wakeups", ctypes.c_int64),
        ("final_state", ctypes.c_int32),
    ]


class CConsumer:
    """The pure-C consumer (see cconsumer.c): threaded=False is the floor, True adds a consumer thread."""

    def __init__(self, so_path: str, lib_path: str, model_path: str, max_new_tokens: int,
                 max_context_len: int, threaded: bool = False, top_k: int = 1) -> None:
        self.so = ctypes.CDLL(so_path)
        self.so.cc_open.restype = ctypes.c_void_p
        self.so.cc_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.so.cc_run.restype = ctypes.c_int
        self.so.cc_run.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
                                   ctypes.c_long, ctypes.POINTER(Stats)]
        self.so.cc_close.argtypes = [ctypes.c_void_p]
        self.threaded = threaded
        self.h = self.so.cc_open(lib_path.encode(), model_path.encode(), max_new_tokens, max_context_len, top_k)
        if not self.h:
            raise RuntimeError("the C consumer could not open the runtime (see stderr)")

    def run(self, prompt: str, record: int = 0) -> tuple[Stats, list[tuple[int, int]]]:
        """One generation; with record > 0 (threaded) also the first `record` (recv ns, cum bytes)."""
        times = (ctypes.c_int64 * max(record, 1))()
        sizes = (ctypes.c_int64 * max(record, 1))()
        st = Stats()
        rc = self.so.cc_run(self.h, prompt.encode(), int(self.threaded), times, sizes, record, ctypes.byref(st))
        if rc != 0:
            raise RuntimeError(f"rkllm_run failed in the C consumer ({rc})")
        n = min(st.wakeups, record) if record else 0
        return st, [(times[i], sizes[i]) for i in range(n)]

    def close(self) -> None:
        if self.h:
            self.so.cc_close(self.h)
            self.h = None


class Tap:
    """The timing runtime (see tap.c): forwards to the simulator, times every callback."""

    def __init__(self, so_path: str, target_lib: str) -> None:
        os.environ["RKLLM_BENCH_TAP_TARGET"] = target_lib
        self.path = so_path
        self.so = ctypes.CDLL(so_path)
        self.so.tap_reset.argtypes = [ctypes.c_long]
        self.so.tap_count.restype = ctypes.c_long
        self.so.tap_recorded.restype = ctypes.c_long
        self.so.tap_dur_sum.restype = ctypes.c_int64
        self.so.tap_dur_max.restype = ctypes.c_int64
        for name in ("tap_entry_array", "tap_dur_array", "tap_bytes_array"):
            getattr(self.so, name).restype = ctypes.POINTER(ctypes.c_int64)
        self.so.tap_state_array.restype = ctypes.POINTER(ctypes.c_int32)

    def reset(self, capacity: int) -> None:
        if self.so.tap_reset(capacity) != 0:
            raise MemoryError("tap_reset")

    def records(self) -> list[tuple[int, int, int, int]]:
        """(entry ns, ns inside the callback, cumulative text bytes, state) per recorded callback."""
        n = self.so.tap_recorded()
        e, d, b, s = (self.so.tap_entry_array(), self.so.tap_dur_array(), self.so.tap_bytes_array(),
                      self.so.tap_state_array())
        return [(e[i], d[i], b[i], s[i]) for i in range(n)]

    def totals(self) -> tuple[int, int, int]:
        """(callbacks, total ns inside, max ns inside) since reset, recorded or not."""
        return self.so.tap_count(), self.so.tap_dur_sum(), self.so.tap_dur_max()
