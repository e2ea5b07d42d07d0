"""The request fields of OpenAI / llama-cpp-python completions, checked and turned into run
options before anything runs, and ``stop`` strings found across piece boundaries.

A field the runtime cannot honour (``logprobs``, ``n`` > 1, ``response_format``, ``min_p``,
...) raises one :class:`~rkllm.errors.ParamError` naming it and why, unless its value is the
one that changes nothing (``n=1``, ``logprobs=False``, ``min_p=0``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rkllm import params as P
from rkllm.core import CoreLLM
from rkllm.errors import ParamError

__all__ = ["RequestOptions", "StopScanner", "request_options"]

_NO_PROBS = "the runtime does not report token probabilities"
_NO_GRAMMAR = "the runtime cannot constrain what it generates (no grammar)"
_NO_FUNCTIONS = "the deprecated form of tools: pass tools=[{'type': 'function', 'function': ...}]"

#: field -> (the values that change nothing, why any other value cannot be honoured)
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "the runtime makes one answer per request"),
    "best_of": ((None, 1), "the runtime makes one answer per request"),
    "logprobs": ((None, False), _NO_PROBS),
    "top_logprobs": ((None, 0), _NO_PROBS),
    "response_format": ((None, {"type": "text"}), _NO_GRAMMAR),
    "grammar": ((None,), _NO_GRAMMAR),
    "logit_bias": ((None, {}), "the runtime cannot bias tokens"),
    "logits_processor": ((None,), "tokens are sampled inside the runtime, with no Python hook"),
    "stopping_criteria": ((None,), "tokens are sampled inside the runtime, with no Python hook"
                                   " (use stop=)"),
    "min_p": ((None, 0, 0.0), "the runtime has no min-p sampling"),
    "typical_p": ((None, 1, 1.0), "the runtime has no typical-p sampling"),
    "tfs_z": ((None, 1, 1.0), "the runtime has no tail-free sampling"),
    "suffix": ((None, ""), "the runtime cannot fill in the middle"),
    "echo": ((None, False), "only text completions echo the prompt"),
    "functions": ((None,), _NO_FUNCTIONS),
    "function_call": ((None,), _NO_FUNCTIONS),
    "parallel_tool_calls": ((None, True), "the runtime cannot limit the number of calls"),
    "audio": ((None,), "text only"),
    "modalities": ((None, ["text"]), "text only"),
    "prediction": ((None,), "the runtime has no predicted outputs"),
    "reasoning_effort": ((None,), "use enable_thinking= (runtime 1.2.1+)"),
    "store": ((None, False), "nothing is stored"),
    "service_tier": ((None, "auto", "default"), "there is one tier: this board"),
    "web_search_options": ((None,), "the model has no web search"),
}
#: labels that do not change the answer
IGNORED = ("user", "metadata")
#: OpenAI / llama-cpp name -> the runtime's sampling parameter
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
            "repeat_penalty": "repeat_penalty", "mirostat_mode": "mirostat",
            "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta"}


@dataclass
class RequestOptions:
    """A checked request: options for ``generate``, the stop strings, the usage chunk."""

    run: dict[str, Any] = field(default_factory=dict)
    stops: tuple[str, ...] = ()
    include_usage: bool = False


def _unsupported(fields: Mapping[str, Any]) -> None:
    bad = [f"{name}={value!r} ({UNSUPPORTED[name][1]})" for name, value in fields.items()
           if name in UNSUPPORTED and not any(_same(value, ok) for ok in UNSUPPORTED[name][0])]
    if bad:
        raise ParamError("not supported by the RKLLM runtime: " + "; ".join(bad))


def _same(value: Any, neutral: Any) -> bool:
    if neutral is None:
        return value is None
    if isinstance(value, bool) and not isinstance(neutral, bool):
        return False  # n=True is not n=1
    return bool(value == neutral)


def _sampling(llm: CoreLLM, given: Mapping[str, Any]) -> dict[str, Any]:
    """Per-request sampling: passed on in 1.3.0; before, only the values the model was
    loaded with are accepted (the runtime fixes them at load time)."""
    wanted = {SAMPLING[k]: v for k, v in given.items() if v is not None}
    if not wanted or P.family_key(llm.family) >= P.family_key(P.RUN_FEATURES["sampling"]):
        return wanted
    for name, value in wanted.items():
        loaded = llm.params.get(name)
        same = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            loaded is not None and math.isclose(float(value), float(loaded), rel_tol=1e-6,
                                                abs_tol=1e-6)
        if not same:
            raise ParamError(
                f"{name}={value!r} per request needs RKLLM runtime "
                f"{P.RUN_FEATURES['sampling']} or later; this runtime (family {llm.family}) "
                f"fixes it when the model is loaded ({name}={loaded!r}): load the model with "
                f"the value you want")
    return {}


def _check_seed(llm: CoreLLM, seed: Any, sampling: Mapping[str, Any]) -> None:
    """The runtime takes no seed. A seed is honoured where the answer cannot depend on one:
    on the simulator (deterministic for given inputs) and with greedy sampling; elsewhere
    the same seed could give another answer, so it is refused."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    top_k = sampling.get("top_k", llm.params.get("top_k"))
    temperature = sampling.get("temperature", llm.params.get("temperature"))
    if llm.is_simulator or top_k == 1 or temperature == 0:
        return
    raise ParamError(f"seed={seed}: the RKLLM runtime takes no seed, so its sampling "
                     f"(top_k={top_k}, temperature={temperature}) cannot be repeated by seed; "
                     "ask for greedy sampling (top_k=1) for repeatable answers, or leave "
                     "seed out")


def _check_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise TypeError(f"stop must be a str or a list of str, got {stop!r}")
    if any(not s for s in stops):
        raise ParamError("stop strings must not be empty")
    return tuple(stops)


def _max_tokens(max_tokens: Any, max_completion_tokens: Any) -> Any:
    if max_tokens is not None and max_completion_tokens is not None and \
            max_tokens != max_completion_tokens:
        raise ParamError(f"max_tokens={max_tokens!r} and max_completion_tokens="
                         f"{max_completion_tokens!r} disagree: give one of them")
    return max_completion_tokens if max_completion_tokens is not None else max_tokens


def _include_usage(stream: bool, stream_options: Any) -> bool:
    if stream_options is None:
        return False
    if not stream:
        raise ParamError("stream_options is only allowed with stream=True")
    if not isinstance(stream_options, Mapping):
        raise TypeError(f"stream_options must be a dict, got {type(stream_options).__name__}")
    unknown = set(stream_options) - {"include_usage"}
    if unknown:
        raise ParamError(f"stream_options: unknown field(s) {', '.join(sorted(unknown))} "
                         "(supported: include_usage)")
    value = stream_options.get("include_usage", False)
    if not isinstance(value, bool):
        raise TypeError("stream_options['include_usage'] must be a bool")
    return value


def request_options(llm: CoreLLM, *, stream: Any, max_tokens: Any = None,
                    max_completion_tokens: Any = None, stop: Any = None, seed: Any = None,
                    stream_options: Any = None, **fields: Any) -> RequestOptions:
    """Checks a request's fields (``fields``: sampling, the unsupported ones, labels, and
    run options such as ``enable_thinking``) before anything runs."""
    if not isinstance(stream, bool):
        raise TypeError(f"stream must be a bool, got {type(stream).__name__}")
    _unsupported(fields)
    sampling = _sampling(llm, {k: v for k, v in fields.items() if k in SAMPLING})
    _check_seed(llm, seed, {SAMPLING[k]: v for k, v in fields.items()
                            if k in SAMPLING and v is not None})
    run = {k: v for k, v in fields.items()
           if k not in SAMPLING and k not in UNSUPPORTED and k not in IGNORED}
    limit = _max_tokens(max_tokens, max_completion_tokens)
    if limit is not None:
        run["max_new_tokens"] = limit
    return RequestOptions({**run, **sampling}, _check_stop(stop),
                          _include_usage(stream, stream_options))


class StopScanner:
    """Finds the first stop string in a run's text, also when it spans several pieces: text
    that may be the start of a stop string is held back until it is known not to be."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The text that is safe to hand out now (after a hit: what precedes the stop)."""
        if not self._stops:
            return piece
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if found:
            self.hit = True
            self._held = ""
            return text[:min(found)]
        keep = 0
        for k in range(min(len(text), max(map(len, self._stops)) - 1), 0, -1):
            if any(s.startswith(text[-k:]) for s in self._stops):
                keep = k
                break
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the run ended without a stop string."""
        out, self._held = self._held, ""
        return out
