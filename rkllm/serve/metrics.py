"""Prometheus text exposition (``GET /metrics``), without a client library.

Counters and histograms are plain dicts keyed by label tuples; the event loop is the only
writer, so no locks. Every series carries ``board="<--name>"`` when a name is set (fleet).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10000, 100000)

Labels = tuple[tuple[str, str], ...]


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.series: dict[Labels, list[float]] = {}  # counts per bucket + [sum, count]

    def observe(self, value: float, labels: Labels = ()) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        i = bisect_left(self.buckets, value)
        if i < len(self.buckets):
            row[i] += 1
        row[-2] += value
        row[-1] += 1


class Metrics:
    def __init__(self, board: str | None = None) -> None:
        self.board = board
        self.counters: dict[str, dict[Labels, float]] = {}
        self.histograms: dict[str, Histogram] = {
            "rkllm_queue_wait_seconds": Histogram(SECONDS),
            "rkllm_time_to_first_token_seconds": Histogram(SECONDS),
            "rkllm_tokens_per_second": Histogram(RATES),
            "rkllm_request_duration_seconds": Histogram(SECONDS),
        }
        self.gauges: dict[str, Callable[[], dict[Labels, float]]] = {}
        self.help = {
            "rkllm_requests_total": "HTTP requests by route and status",
            "rkllm_queue_wait_seconds": "time a request waited for its model",
            "rkllm_time_to_first_token_seconds": "from the start of a run to its first token",
            "rkllm_tokens_per_second": "generation rate of each finished run",
            "rkllm_request_duration_seconds": "whole request time",
            "rkllm_generated_tokens_total": "tokens generated",
            "rkllm_prefill_tokens_total": "prompt tokens the runtime prefilled",
            "rkllm_prefill_tokens_saved_total": "prompt tokens not prefilled again thanks to "
                                                "the kept conversation (kv cache reuse)",
            "rkllm_aborted_runs_total": "runs stopped early, by reason",
            "rkllm_rejected_requests_total": "requests refused by the queue, by reason",
            "rkllm_model_loads_total": "models loaded",
            "rkllm_model_unloads_total": "models unloaded, by reason",
        }

    def _labels(self, labels: dict[str, str]) -> Labels:
        if self.board:
            labels = {"board": self.board, **labels}
        return tuple(sorted(labels.items()))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        series = self.counters.setdefault(name, {})
        key = self._labels(labels)
        series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.histograms[name].observe(value, self._labels(labels))

    def gauge(self, name: str, text: str, read: Callable[[], dict[str, float]],
              label: str = "model") -> None:
        """A gauge read at scrape time: ``read()`` gives {label value: number}."""
        self.help[name] = text
        self.gauges[name] = lambda: {self._labels({label: k} if k else {}): v
                                     for k, v in read().items()}

    def render(self) -> str:
        out: list[str] = []
        for name, series in sorted(self.counters.items()):
            out.append(f"# HELP {name} {self.help.get(name, name)}\n# TYPE {name} counter")
            out += [f"{name}{_fmt(k)} {_num(v)}" for k, v in sorted(series.items())]
        for name, read in sorted(self.gauges.items()):
            out.append(f"# HELP {name} {self.help[name]}\n# TYPE {name} gauge")
            out += [f"{name}{_fmt(k)} {_num(v)}" for k, v in sorted(read().items())]
        for name, hist in sorted(self.histograms.items()):
            out.append(f"# HELP {name} {self.help[name]}\n# TYPE {name} histogram")
            for labels, row in sorted(hist.series.items()):
                running = 0.0
                for bound, count in zip(hist.buckets, row):
                    running += count
                    out.append(f"{name}_bucket{_fmt(labels + (('le', _num(bound)),))} "
                               f"{_num(running)}")
                out.append(f"{name}_bucket{_fmt(labels + (('le', '+Inf'),))} {_num(row[-1])}")
                out.append(f"{name}_sum{_fmt(labels)} {row[-2]!r}")
                out.append(f"{name}_count{_fmt(labels)} {_num(row[-1])}")
        return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
