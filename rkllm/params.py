"""The parameter schema of every ABI family, and validation against it.

Everything here runs before any native call: an unknown name (with the closest valid names),
a wrong type, an out-of-range value (with the allowed range), a CPU mask naming cores this
machine lacks, or a parameter the loaded release does not have (naming the release that
introduced it) raises :class:`~rkllm.errors.ParamError`. Defaults are the runtime's own
(``rkllm_createDefaultParam``), passed in by the caller.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rkllm import _lowlevel as ll
from rkllm import releases
from rkllm.errors import ParamError, ParamTypeError

# the one table of the families and of what each family has (rkllm/releases.py)
FAMILIES = releases.FAMILIES
RUN_FEATURES = releases.FEATURES

INT32_MAX = 2**31 - 1


@functools.lru_cache(maxsize=64)  # asked several times a request; a handful of families
def family_key(family: str) -> tuple[int, ...]:
    return tuple(int(x) for x in family.split("."))


@dataclass(frozen=True)
class Spec:
    """One parameter: its name, kind (int, float, bool, str, cpumask), allowed range, the
    first family that has it (and the first that dropped it), and what it does."""

    name: str
    kind: str
    lo: float | None
    hi: float | None
    since: str
    doc: str
    until: str | None = None
    extend: bool = False  # lives in extend_param
    lo_open: bool = False  # lo itself is refused (the runtime wants more than lo)

    def in_family(self, family: str) -> bool:
        k = family_key(family)
        return family_key(self.since) <= k and (self.until is None or k < family_key(self.until))


def _s(name: str, kind: str, lo: float | None, hi: float | None, since: str, doc: str,
       **kw: Any) -> Spec:
    return Spec(name, kind, lo, hi, since, doc, **kw)


# Model parameters (rkllm_init). Ranges are what the runtime documents or enforces (the
# simulator, csrc/sim, is the strict model of its checks: sim_check_sampling, rkllm_init);
# where it says nothing, the strict reading of the field's meaning (docs/api.md).
MODEL_PARAMS: tuple[Spec, ...] = (
    _s("max_context_len", "int", 1, INT32_MAX, "1.1.0", "tokens the context holds"),
    _s("max_new_tokens", "int", -1, INT32_MAX, "1.1.0",
       "default limit on generated tokens per run (-1 or 0: the runtime's own limit)"),
    _s("top_k", "int", 0, INT32_MAX, "1.1.0", "sample from the k most likely tokens (1: greedy)"),
    _s("n_keep", "int", -1, INT32_MAX, "1.2.0",
       "kv-cache entries kept at the start when the context window shifts"),
    _s("top_p", "float", 0.0, 1.0, "1.1.0", "nucleus sampling threshold", lo_open=True),
    _s("temperature", "float", 0.0, 100.0, "1.1.0", "sampling temperature"),
    _s("repeat_penalty", "float", 0.0, 100.0, "1.1.0", "penalty for repeated tokens (1: none)",
       lo_open=True),
    _s("frequency_penalty", "float", -2.0, 2.0, "1.1.0", "penalty by frequency in the output"),
    _s("presence_penalty", "float", -2.0, 2.0, "1.1.0", "penalty for presence in the output"),
    _s("mirostat", "int", 0, 2, "1.1.0", "mirostat sampling (0 off, 1 or 2)"),
    _s("mirostat_tau", "float", 0.0, 100.0, "1.1.0",
       "mirostat target entropy (> 0 when mirostat is on)"),
    _s("mirostat_eta", "float", 0.0, 1.0, "1.1.0",
       "mirostat learning rate (> 0 when mirostat is on)"),
    _s("skip_special_token", "bool", None, None, "1.1.0", "leave special tokens out of the text"),
    _s("ignore_eos_token", "bool", None, None, "1.3.0", "keep generating past end-of-sequence"),
    _s("img_start", "str", None, None, "1.1.0", "text marking where image embeddings start",
       until="1.3.0"),
    _s("img_end", "str", None, None, "1.1.0", "text marking where image embeddings end",
       until="1.3.0"),
    _s("img_content", "str", None, None, "1.1.0", "placeholder text of image tokens",
       until="1.3.0"),
    _s("base_domain_id", "int", 0, INT32_MAX, "1.1.0", "NPU memory domain", extend=True),
    _s("embed_flash", "bool", None, None, "1.2.0",
       "keep the embedding table in flash rather than RAM", extend=True),
    _s("enabled_cpus_num", "int", 1, 8, "1.2.0", "how many CPU cores the runtime uses",
       extend=True),
    _s("enabled_cpus_mask", "cpumask", 0, 0xFF, "1.2.0",
       "which CPU cores (an int bit mask, or a list of core numbers)", extend=True),
    _s("n_batch", "int", 1, 100, "1.2.1", "prompts decoded together", extend=True),
    _s("use_cross_attn", "bool", None, None, "1.2.1", "the model takes cross-attention params",
       extend=True),
)

# Sampling settings a single run may override (family 1.3.0 only): the shim's
# rkshim_sampling fields.
SAMPLING_PARAMS = tuple(s for s in MODEL_PARAMS if s.name in ll.SAMPLING_FIELDS)
SAMPLING_NAMES = frozenset(s.name for s in SAMPLING_PARAMS)

# Names that exist in rkllm.h but are not set through params, with the reason.
MANAGED = {
    "model_path": "pass the model file as LLM's first argument",
    "is_async": "rkllm-cffi always streams from its own thread; is_async is managed for you",
    "extend_param": "give extend_param as a dict",
}

def schema(family: str) -> dict[str, Spec]:
    """Every parameter the family has, by name."""
    return {s.name: s for s in MODEL_PARAMS if s.in_family(family)}


def require(family: str, feature: str, what: str | None = None) -> None:
    """Raises ParamError when ``feature`` (a RUN_FEATURES key) is not in the family."""
    since = RUN_FEATURES[feature]
    if family_key(family) < family_key(since):
        raise ParamError(f"{what or feature} needs RKLLM runtime {since} or later; the loaded "
                         f"runtime is family {family}")


def cpu_count() -> int:
    """CPU cores of this machine (all of them, not just those this process may use)."""
    try:
        with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
            last = f.read().strip().replace(",", "-").split("-")[-1]
            return int(last) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_value(spec: Spec, value: Any, *, cores: int | None = None, where: str = "") -> Any:
    """Returns the value in its C form or raises ParamError."""
    label = f"{where}{spec.name}"
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParamTypeError(f"{label} must be a bool, got {_type_name(value)} {value!r}")
        return int(value)
    if kind == "str":
        if value is not None and not isinstance(value, str):
            raise ParamTypeError(f"{label} must be a str, got {_type_name(value)} {value!r}")
        if value is not None:
            ll.c_text(value, label)
        return value
    if kind == "cpumask":
        mask = _cpu_mask(label, value)
        n = cores if cores is not None else cpu_count()
        missing = [i for i in range(32) if mask >> i & 1 and i >= n]
        if missing:
            raise ParamError(f"{label} names CPU core(s) {missing}, but this machine has "
                             f"{n} core(s) (0-{n - 1})")
        if mask > 0xFF:
            raise ParamError(f"{label} may only name cores 0-7, got {mask:#x}")
        return mask
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamTypeError(f"{label} must be an int, got {_type_name(value)} {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamTypeError(f"{label} must be a number, got {_type_name(value)} {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond any float
            raise ParamError(f"{label} must be {_range(spec)}, got {value!r}") from None
        if math.isnan(value):
            raise ParamError(f"{label} must be a number, got NaN")
    assert spec.lo is not None and spec.hi is not None
    # the runtime holds floats as float32: 1e-50 reaches it as 0
    if not spec.lo <= value <= spec.hi:
        raise ParamError(f"{label} must be {_range(spec)}, got {value!r}")
    if spec.lo_open and float32(value) <= spec.lo:
        raise ParamError(f"{label} must be {_range(spec)}, got {value!r}"
                         + (f" ({float32(value)!r} as the runtime's float32)"
                            if float32(value) != value else ""))
    return value


def float32(value: float) -> float:
    """``value`` as the runtime gets it (a C float)."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _range(spec: Spec) -> str:
    assert spec.lo is not None and spec.hi is not None
    lo, hi = (int(spec.lo), int(spec.hi)) if spec.kind == "int" else (spec.lo, spec.hi)
    return f"between {lo} and {hi}" + (f" ({lo} excluded)" if spec.lo_open else "")


def check_together(values: Mapping[str, Any], where: str = "") -> None:
    """What the runtime checks across fields: mirostat (1 or 2) needs mirostat_tau and
    mirostat_eta above 0. ``values``: merged C values, as :func:`validate` returns."""
    mode = values.get("mirostat")
    if not mode:
        return
    for name in ("mirostat_tau", "mirostat_eta"):
        value = values.get(name)
        if value is not None and float32(value) <= 0:
            spec = next(s for s in MODEL_PARAMS if s.name == name)
            raise ParamError(f"{where}{name} must be {_range(spec)} ({spec.lo} excluded) when "
                             f"mirostat is {mode}, got {value!r}")


def _cpu_mask(label: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ParamTypeError(f"{label} must be an int bit mask or a list of core numbers, "
                             "got bool")
    if isinstance(value, int):
        if value < 0:
            raise ParamError(f"{label} must not be negative, got {value}")
        return value
    if isinstance(value, (list, tuple, set, frozenset, range)):
        mask = 0
        for core in value:
            if isinstance(core, bool) or not isinstance(core, int) or core < 0 or core > 31:
                raise ParamError(f"{label}: {core!r} is not a CPU core number")
            mask |= 1 << core
        return mask
    raise ParamTypeError(f"{label} must be an int bit mask or a list of core numbers, "
                     f"got {_type_name(value)} {value!r}")


def unknown_param(name: str, family: str, candidates: Iterable[str], where: str = ""
                  ) -> ParamError:
    """The error for a name that is not a parameter here: managed, of another release, or
    a typo (with the closest valid names)."""
    if name in MANAGED:
        return ParamError(f"{where}{name} cannot be set: {MANAGED[name]}")
    for spec in MODEL_PARAMS:
        if spec.name == name:
            if spec.until and family_key(family) >= family_key(spec.until):
                return ParamError(f"{where}{name} was removed in RKLLM {spec.until}; the loaded "
                                  f"runtime is family {family}")
            return ParamError(f"{where}{name} needs RKLLM runtime {spec.since} or later; the "
                              f"loaded runtime is family {family}")
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ParamError(f"unknown parameter {where}{name!r}{hint}")


def validate(family: str, given: Mapping[str, Any], defaults: Mapping[str, Any], *,
             cores: int | None = None) -> dict[str, Any]:
    """Merges user params (flat, or with a nested ``extend_param`` dict) over the runtime's
    defaults; returns the neutral param dict for :class:`rkllm._lowlevel.Model`."""
    known = schema(family)
    values = dict(defaults)
    flat: list[tuple[str, Any, str]] = []
    for name, value in given.items():
        if name == "extend_param":
            if not isinstance(value, Mapping):
                raise ParamTypeError(f"extend_param must be a dict, got {_type_name(value)}")
            flat.extend((str(k), v, "extend_param.") for k, v in value.items())
        else:
            flat.append((name, value, ""))
    for name, value, where in flat:
        spec = known.get(name)
        if spec is None or (where and not spec.extend):
            pool = [s.name for s in known.values() if s.extend or not where]
            raise unknown_param(name, family, pool, where)
        values[name] = check_value(spec, value, cores=cores, where=where)
    check_together(values)
    return values


def validate_sampling(family: str, given: Mapping[str, Any], model_values: Mapping[str, Any]
                      ) -> dict[str, Any] | None:
    """Per-run sampling overrides (1.3.0); None when none were given."""
    if not given:
        return None
    require(family, "sampling", "per-run sampling (" + ", ".join(sorted(given)) + ")")
    specs = {s.name: s for s in SAMPLING_PARAMS}
    out = {name: model_values[name] for name in specs}
    for name, value in given.items():
        out[name] = check_value(specs[name], value)
    check_together(out)
    return out


def describe(family: str) -> list[tuple[str, str, str, str]]:
    """(name, type, range, doc) rows for documentation and ``--help`` text."""
    rows = []
    for s in schema(family).values():
        rng = "" if s.lo is None else f"{s.lo:g}..{s.hi:g}" + (
            f" (not {s.lo:g})" if s.lo_open else "")
        name = ("extend_param." if s.extend else "") + s.name
        rows.append((name, s.kind, rng, s.doc))
    return rows
