"""What a ``.rkllm`` file says about itself, without loading it.

``inspect_model(path)`` reads a bounded amount of the file (its head and its tail, never the
whole multi-gigabyte body) and returns a :class:`ModelInfo` whose facts each name their
source:

``file``      read from the file's own bytes (the simulated format's header, or strings found
              in the head/tail of a real file),
``filename``  the file name's conventions (``...-rk3588-w8a8-opt-1-hybrid-ratio-0.0.rkllm``),
``repo``      the Hugging Face repository name's conventions (``owner/Model-rk3588-1.2.1``).

``check_compatibility(info, runtime_release, platform)`` applies the rule documented in
docs/models.md: a model built for another SoC is refused, a model needing a newer runtime ABI
family is refused, a model from a newer release of the same family is a warning.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 1024 * 1024
PLATFORMS = ("rk3588", "rk3576", "rk3562", "rv1126b")

# Families of the runtime ABI (see include/<family>/rkllm.h); a release belongs to the
# newest family whose first release is not newer than it.
_FAMILY_FIRST = ("1.1.0", "1.2.0", "1.2.1", "1.3.0")

_PLATFORM_RE = re.compile(r"(?i)(?<![a-z0-9])(rk3588s?|rk3576|rk3562|rv1126b)(?![0-9])")
_RELEASE_RE = re.compile(r"(?i)(?<![\d.])v?(1\.\d{1,2}\.\d{1,2})(?:b\d+)?(?![\d.])")
_DTYPE_RE = re.compile(r"(?i)(?<![a-z0-9])(w[48]a(?:8|16))(?:[_-]?(g\d+))?(?![a-z0-9])")
_OPT_RE = re.compile(r"(?i)(?<![a-z0-9])opt[-_]?([01])(?![0-9])")
_HYBRID_RE = re.compile(r"(?i)hybrid[-_]ratio[-_]?(\d(?:\.\d+)?)")
_CTX_RE = re.compile(r"(?i)(?<![a-z0-9])(?:ctx|context)[-_]?(\d{3,6})(?![0-9])")

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_CHAT_MARKERS = (
    (b"<|im_start|>", "chatml (<|im_start|>)"),
    (b"<|start_header_id|>", "llama3 (<|start_header_id|>)"),
    (b"<start_of_turn>", "gemma (<start_of_turn>)"),
    ("<｜User｜>".encode(), "deepseek (<｜User｜>)"),
    (b"[INST]", "llama2/mistral ([INST])"),
)


@dataclass(frozen=True)
class Fact:
    value: Any
    source: str          # "file", "filename" or "repo"
    detail: str = ""     # where exactly (an offset, the matched text)


@dataclass
class ModelInfo:
    path: str
    size: int
    format: str                     # "rkllm", "rkllm-sim", "lfs-pointer", "html", "unknown"
    facts: dict[str, Fact] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def value(self, name: str) -> Any:
        fact = self.facts.get(name)
        return None if fact is None else fact.value

    @property
    def platform(self) -> str | None:
        v = self.value("platform")
        return None if v is None else str(v)

    @property
    def toolkit_version(self) -> str | None:
        v = self.value("toolkit_version")
        return None if v is None else str(v)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "format": self.format,
                "facts": {k: asdict(v) for k, v in self.facts.items()},
                "problems": list(self.problems)}

    def _add(self, name: str, fact: Fact) -> None:
        """Keep the first (best) source; note a disagreement between sources."""
        have = self.facts.get(name)
        if have is None:
            self.facts[name] = fact
        elif str(have.value).lower() != str(fact.value).lower() and name in (
                "platform", "toolkit_version", "dtype"):
            self.problems.append(
                f"{name}: the {have.source} says {have.value}, the {fact.source} says "
                f"{fact.value} (trusting the {have.source})")


# -- releases and families ----------------------------------------------------------------------
def release_tuple(release: str) -> tuple[int, ...]:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", release.strip())
    if not m:
        raise ValueError(f"not a release number: {release!r}")
    return tuple(int(x) for x in m.groups())


def family_of(release: str) -> str | None:
    """The ABI family of a runtime or toolkit release (None before 1.1.0)."""
    rel = release_tuple(release)
    found = None
    for first in _FAMILY_FIRST:
        if rel >= release_tuple(first):
            found = first
    return found


def normalise_platform(text: str) -> str | None:
    m = _PLATFORM_RE.search(text)
    if not m:
        return None
    name = m.group(1).lower()
    return "rk3588" if name == "rk3588s" else name


# -- names --------------------------------------------------------------------------------------
def facts_from_name(name: str, source: str) -> dict[str, Fact]:
    """Facts that naming conventions reveal (``source`` is "filename" or "repo")."""
    facts: dict[str, Fact] = {}
    base = os.path.basename(name) if source == "filename" else name
    m = _PLATFORM_RE.search(base)
    if m:
        facts["platform"] = Fact(normalise_platform(m.group(1)), source, m.group(0))
    m = _RELEASE_RE.search(base)
    if m:
        facts["toolkit_version"] = Fact(m.group(1), source, m.group(0))
    m = _DTYPE_RE.search(base)
    if m:
        dtype = m.group(1).lower() + (f"_{m.group(2).lower()}" if m.group(2) else "")
        facts["dtype"] = Fact(dtype, source, m.group(0))
    m = _OPT_RE.search(base)
    if m:
        facts["optimization_level"] = Fact(int(m.group(1)), source, m.group(0))
    m = _HYBRID_RE.search(base)
    if m:
        facts["hybrid_ratio"] = Fact(float(m.group(1)), source, m.group(0))
    m = _CTX_RE.search(base)
    if m:
        facts["max_context_len"] = Fact(int(m.group(1)), source, m.group(0))
    return facts


# -- the file itself ----------------------------------------------------------------------------
def _read_ends(path: str, size: int) -> tuple[bytes, bytes, int]:
    """Head, tail, and the file offset where the tail starts."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        tail_start = max(size - TAIL_BYTES, len(head)) if size > HEAD_BYTES else size
        f.seek(tail_start)
        tail = f.read(TAIL_BYTES)
    return head, tail, tail_start


def _printable_window(data: bytes, pos: int, span: int = 40) -> str:
    chunk = data[max(pos - span, 0):pos + span]
    return re.sub(rb"[^\x20-\x7e]+", b" ", chunk).decode("ascii").strip()


def _scan_real(info: ModelInfo, head: bytes, tail: bytes, tail_start: int) -> None:
    """Best-effort reading of a real (vendor-toolkit) file.

    The vendor does not publish the layout; what peers observed is printable metadata in the
    last part of the file (the toolkit version string among it) and the target platform name.
    Every value found here records the offset it was read at."""
    regions = ((tail, tail_start, "tail"), (head, 0, "head"))

    def find(pattern: re.Pattern[bytes]) -> tuple[re.Match[bytes], int, str, bytes] | None:
        for data, base, where in regions:
            matches = list(pattern.finditer(data))
            if matches:
                m = matches[-1] if where == "tail" else matches[0]  # nearest the end / start
                return m, base, where, data
        return None

    keyed_version = re.compile(
        rb"(?i)(?:rkllm[-_ ]?toolkit|toolkit[-_ ]?version|rkllm[-_ ]?version|rkllm)"
        rb"[^\x00-\x1f0-9]{0,24}v?(\d\.\d{1,2}\.\d{1,2})")
    hit = find(keyed_version) or find(re.compile(rb"(?<![\d.])v?(1\.\d{1,2}\.\d{1,2})(?![\d.])"))
    if hit:
        m, base, where, data = hit
        info._add("toolkit_version", Fact(m.group(1).decode(), "file",
                                          f"{where} offset {base + m.start(1)}: "
                                          f"{_printable_window(data, m.start(1))!r}"))
    hit = find(re.compile(rb"(?i)(?<![a-z0-9])(rk3588s?|rk3576|rk3562|rv1126b)(?![0-9])"))
    if hit:
        m, base, where, data = hit
        info._add("platform", Fact(normalise_platform(m.group(1).decode()), "file",
                                   f"{where} offset {base + m.start(1)}"))
    hit = find(re.compile(rb"(?i)max_context(?:_len)?[\"':= ]{1,4}(\d{2,7})"))
    if hit:
        m, base, where, _ = hit
        info._add("max_context_len", Fact(int(m.group(1)), "file",
                                          f"{where} offset {base + m.start(1)}"))
    hit = find(re.compile(rb"(?i)(?<![a-z0-9])(w[48]a(?:8|16))(?:_(g\d+))?(?![a-z0-9])"))
    if hit:
        m, base, where, _ = hit
        dtype = m.group(1).decode().lower() + (
            f"_{m.group(2).decode().lower()}" if m.group(2) else "")
        info._add("dtype", Fact(dtype, "file", f"{where} offset {base + m.start(1)}"))
    for marker, style in _CHAT_MARKERS:
        for data, base, where in regions:
            pos = data.find(marker)
            if pos >= 0:
                info._add("chat_template", Fact(style, "file", f"{where} offset {base + pos}"))
                break
        if "chat_template" in info.facts:
            break


# The simulated format (docs/sim-model-format.md): a fixed magic, then a little-endian u32
# length and that many bytes of UTF-8 JSON describing the model.
SIM_MAGIC = b"RKLLMSIM"


def _scan_sim(info: ModelInfo, head: bytes) -> None:
    try:
        (length,) = struct.unpack_from("<I", head, len(SIM_MAGIC))
        start = len(SIM_MAGIC) + 4
        if start + length > len(head):
            raise ValueError("header longer than the part read")
        meta = json.loads(head[start:start + length].decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        info.problems.append(f"simulated model header unreadable: {exc}")
        return
    mapping = {"platform": "platform", "toolkit_version": "toolkit_version",
               "max_context_len": "max_context_len", "dtype": "dtype",
               "chat_template": "chat_template", "name": "name"}
    for key, fact in mapping.items():
        if key in meta and meta[key] not in (None, ""):
            value = meta[key]
            if key == "platform":
                value = normalise_platform(str(value)) or str(value).lower()
            info._add(fact, Fact(value, "file", f"header field {key!r}"))


def inspect_model(path: str | os.PathLike[str], *, repo: str | None = None) -> ModelInfo:
    """Read what ``path`` records about itself, then what its name and ``repo`` suggest."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        head, tail, tail_start = _read_ends(path, size)
    except OSError as exc:
        from rkllm.errors import ModelNotFoundError
        raise ModelNotFoundError(f"cannot read model file {path}: {exc.strerror or exc}") from exc

    info = ModelInfo(path=path, size=size, format="unknown")
    stripped = head.lstrip()[:64].lower()
    if head.startswith(SIM_MAGIC):
        info.format = "rkllm-sim"
        _scan_sim(info, head)
    elif head.startswith(_LFS_POINTER):
        info.format = "lfs-pointer"
        info.problems.append(
            "this is a Git LFS pointer, not the model (the repository was cloned without "
            "git-lfs): fetch the real file with `rkllm pull` or `git lfs pull`")
    elif stripped.startswith((b"<!doctype html", b"<html")):
        info.format = "html"
        info.problems.append(
            "this is a web page, not a model (a /blob/ URL was downloaded instead of "
            "/resolve/): fetch it with `rkllm pull REPO FILE`")
    elif size == 0:
        info.problems.append("the file is empty")
    else:
        info.format = "rkllm"
        _scan_real(info, head, tail, tail_start)
        if size < HEAD_BYTES:
            info.problems.append(f"only {size} bytes: too small to be a real model")

    for name, fact in facts_from_name(path, "filename").items():
        info._add(name, fact)
    if repo:
        for name, fact in facts_from_name(repo, "repo").items():
            info._add(name, fact)
    return info


# -- compatibility --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compatibility:
    """One finding of :func:`check_compatibility`; ``refuse`` means loading would fail."""

    refuse: bool
    message: str

    @property
    def level(self) -> str:
        return "refuse" if self.refuse else "warn"


def check_compatibility(info: ModelInfo, runtime_release: str | None,
                        platform: str | None, *,
                        simulator: bool | None = None) -> list[Compatibility]:
    """Findings about loading ``info`` on a ``platform`` board with runtime ``runtime_release``.

    The rule (docs/models.md):

    * the file is not a model (LFS pointer, web page, empty) -> refuse;
    * the model's platform differs from the board's -> refuse (the runtime fails with
      "target_platform does not match");
    * a simulated model on the real runtime, or a real model on the simulator -> refuse
      (only when ``simulator`` is given);
    * the model's toolkit release is in a newer ABI family than the runtime's -> refuse;
      newer but in the same family -> warn; a model from before 1.1.0 on a 1.1.0+ runtime ->
      refuse (the 1.1.0 format change);
    * anything unknown (no platform, no version) -> no finding: the runtime decides.
    """
    out: list[Compatibility] = []
    if info.format in ("lfs-pointer", "html") or info.size == 0:
        out.append(Compatibility(True, f"{info.path} is not a model: {info.problems[0]}"
                                 if info.problems else f"{info.path} is not a model"))
        return out
    if simulator is True and info.format == "rkllm":
        out.append(Compatibility(True, "a real .rkllm model cannot run on the simulated runtime; "
                                       "use `rkllm run demo` or a simulated model"))
    if simulator is False and info.format == "rkllm-sim":
        out.append(Compatibility(True, "this is a simulated model: it only runs on the "
                                       "simulated runtime"))
    model_platform = info.platform
    board = normalise_platform(platform) if platform else None
    if model_platform and board and model_platform != board:
        src = info.facts["platform"].source
        out.append(Compatibility(
            True, f"the model was built for {model_platform.upper()} (according to its {src}) "
                  f"but this board is {board.upper()}: get the {board} build of the model"))
    tk = info.toolkit_version
    if tk and runtime_release:
        try:
            tk_t, rt_t = release_tuple(tk), release_tuple(runtime_release)
            tk_fam, rt_fam = family_of(tk), family_of(runtime_release)
        except ValueError:
            return out
        src = info.facts["toolkit_version"].source
        if tk_fam is None and rt_fam is not None:
            out.append(Compatibility(
                True, f"the model was converted with toolkit {tk} (according to its {src}); "
                      f"runtime {runtime_release} needs a model converted with 1.1.0 or newer"))
        elif tk_t > rt_t:
            if tk_fam is not None and rt_fam is not None and \
                    release_tuple(tk_fam) > release_tuple(rt_fam):
                out.append(Compatibility(
                    True, f"the model was converted with toolkit {tk} (according to its {src}) "
                          f"but the runtime is {runtime_release}: install runtime {tk} or "
                          f"newer (`rkllm runtime pull {tk}`)"))
            else:
                out.append(Compatibility(
                    False, f"the model was converted with toolkit {tk} (according to its {src}), "
                           f"newer than runtime {runtime_release}; same ABI family, it usually "
                           f"loads"))
    return out
