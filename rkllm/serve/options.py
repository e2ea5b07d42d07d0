"""Reading a request: JSON body, typed fields, per-request sampling as the runtime allows."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from rkllm import params as P
from rkllm.serve.errors import APIError

if TYPE_CHECKING:
    from rkllm.llm import LLM

SAMPLING = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty",
            "repeat_penalty", "mirostat", "mirostat_tau", "mirostat_eta")


def bad(message: str, param: str | None = None, status: int = 400) -> APIError:
    return APIError(status, message, param=param, code="invalid_value" if param else None)


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise bad("the request needs a JSON body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def refuse_unknown(body: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise bad(f"unsupported field(s) for {what}: {', '.join(unknown)} (the server does "
                  f"not implement them, and ignoring them could change the answer)",
                  param=unknown[0])


def number(body: Mapping[str, Any], name: str, lo: float | None = None,
           hi: float | None = None, *, integer: bool = False) -> Any:
    """``body[name]`` checked (None when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise bad(f"{name} must be {kind}, got {json.dumps(value)}", name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        limits = f"between {lo} and {hi}" if lo is not None and hi is not None else \
            f"at least {lo}" if lo is not None else f"at most {hi}"
        raise bad(f"{name} must be {limits}, got {value}", name)
    return value


def boolean(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def stop_list(value: Any, name: str = "stop") -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad(f"{name} must be a string or a list of strings", name)
    return [s for s in items if s]


def tools_json(tools: Any, param: str = "tools") -> str | None:
    """OpenAI's ``tools`` list, checked, as the JSON text the runtime takes."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise bad("tools must be a list of {\"type\": \"function\", \"function\": {...}}", param)
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                      f"{{\"name\": ..., ...}}}}", param)
    return json.dumps(tools, ensure_ascii=False)


def run_options(llm: LLM, sampling: Mapping[str, Any], defaults: Mapping[str, Any],
                max_tokens: int | None) -> dict[str, Any]:
    """Run options for ``llm``: per-request sampling where the runtime takes it (1.3.0);
    before, only the values the model was loaded with are accepted (it fixes them at load)."""
    wanted = {k: v for k, v in {**defaults, **sampling}.items()
              if k in SAMPLING and v is not None}
    opts: dict[str, Any] = {}
    if max_tokens is None:
        max_tokens = defaults.get("max_tokens")
    if max_tokens is not None:
        opts["max_new_tokens"] = max_tokens
    if wanted.get("temperature") == 0:  # OpenAI's greedy: the most likely token each time
        wanted.pop("temperature")
        wanted["top_k"] = 1
    if P.family_key(llm.family) >= P.family_key(P.RUN_FEATURES["sampling"]):
        return {**opts, **wanted}
    for name, value in wanted.items():
        loaded = llm.params.get(name)
        if loaded is None or not math.isclose(float(value), float(loaded), rel_tol=1e-6,
                                              abs_tol=1e-6):
            raise bad(f"{name}={value} per request needs RKLLM runtime "
                      f"{P.RUN_FEATURES['sampling']} or later; this runtime (family "
                      f"{llm.family}) fixes it when the model is loaded ({name}={loaded}): "
                      f"set it in the model's \"params\" in the server's config", name)
    return opts


def check_seed(body: Mapping[str, Any], sampling: Mapping[str, Any]) -> None:
    """The runtime has no per-request seed: a seed is accepted only where it changes
    nothing (greedy decoding)."""
    if number(body, "seed", integer=True) is None:
        return
    greedy = sampling.get("temperature") == 0 or sampling.get("top_k") == 1
    if not greedy:
        raise bad("seed is not supported: the RKLLM runtime has no per-request random seed; "
                  "for reproducible answers use temperature 0 (greedy), where seed is "
                  "accepted", "seed")
