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

import os
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from rkllm import releases
from rkllm.errors import ModelNotFoundError
from rkllm.releases import known_family, release_key

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 1024 * 1024

_PLATFORM_RE = re.compile(rf"(?i)(?<![a-z0-9])({releases.SOC_PATTERN})(?![0-9])")
_RELEASE_RE = re.compile(r"(?i)(?<![\d.])v?(1\.\d{1,2}\.\d{1,2})(?:b\d+)?(?!\d|\.\d)")
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


# -- platforms ------------------------------------------------------------------------------------
def normalise_platform(text: str) -> str | None:
    m = _PLATFORM_RE.search(text)
    return releases.normalise_soc(m.group(1)) if m else None


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
    hit = find(re.compile(_PLATFORM_RE.pattern.encode()))
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


# The simulated format (docs/sim-model-format.md): magic, version, section table, META section
# of key=value lines, CRC-32 trailer. Simulated models are small, so the CRC is checked.
SIM_MAGIC = b"RKSIMLLM"
_SIM_CRC_LIMIT = 64 * 1024 * 1024
_SIM_KEYS = {"target_platform": "platform", "toolkit_version": "toolkit_version",
             "dtype": "dtype", "max_context_len": "max_context_len", "model_name": "name",
             "kind": "kind", "vocab_size": "vocab_size", "base_model": "base_model"}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1),
                                                                          m.group(1)), value)


def _scan_sim(info: ModelInfo, path: str, head: bytes) -> None:
    import zlib
    try:
        version, count, file_size = struct.unpack_from("<IIQ", head, 8)
        if version != 1:
            raise ValueError(f"unsupported simulated format version {version}")
        if file_size != info.size:
            raise ValueError(f"header says {file_size} bytes, the file has {info.size} "
                             f"({'truncated' if info.size < file_size else 'trailing data'})")
        meta_bytes = None
        with open(path, "rb") as f:
            for i in range(min(count, 64)):
                tag, _, off, size = struct.unpack_from("<4sIQQ", head, 24 + 24 * i)
                if tag == b"META":
                    if off + size > info.size - 4 or size > 1 << 20:
                        raise ValueError("META section out of bounds")
                    f.seek(off)
                    meta_bytes = f.read(size)
            if info.size <= _SIM_CRC_LIMIT:
                f.seek(0)
                body = f.read(info.size - 4)
                (crc,) = struct.unpack("<I", f.read(4))
                if zlib.crc32(body) != crc:
                    raise ValueError("CRC-32 mismatch (corrupt file)")
        if meta_bytes is None:
            raise ValueError("no META section")
        meta = meta_bytes.decode("utf-8")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        info.problems.append(f"simulated model unreadable: {exc}")
        return
    fields: dict[str, str] = {}
    for line in meta.split("\n"):
        if "=" in line:
            key, _, raw = line.partition("=")
            fields[key.strip()] = _unescape(raw)
    for key, name in _SIM_KEYS.items():
        text = fields.get(key)
        if text:
            value: Any = text
            if name == "platform":
                value = normalise_platform(text) or text.lower()
            elif name in ("max_context_len", "vocab_size") and text.isdigit():
                value = int(text)
            info._add(name, Fact(value, "file", f"META {key}"))
    template = [fields.get(k, "") for k in ("system_prompt", "prompt_prefix", "prompt_postfix")]
    if any(template):
        info._add("chat_template", Fact({"system_prompt": template[0],
                                         "prompt_prefix": template[1],
                                         "prompt_postfix": template[2]}, "file",
                                        "META system_prompt/prompt_prefix/prompt_postfix"))


def inspect_model(path: str | os.PathLike[str], *, repo: str | None = None) -> ModelInfo:
    """Read what ``path`` records about itself, then what its name and ``repo`` suggest."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        head, tail, tail_start = _read_ends(path, size)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read model file {path}: {exc.strerror or exc}") from exc

    info = ModelInfo(path=path, size=size, format="unknown")
    stripped = head.lstrip()[:64].lower()
    if head.startswith(SIM_MAGIC):
        info.format = "rkllm-sim"
        _scan_sim(info, path, head)
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


def model_needs_newer_runtime(toolkit: str, runtime_release: str) -> bool | None:
    """True when a model from ``toolkit`` cannot load in runtime ``runtime_release`` (its ABI
    family is newer, or it is newer than every known family), False when it can, None when
    either release is unparsable."""
    try:
        tk_t, rt_t = release_key(toolkit), release_key(runtime_release)
    except ValueError:
        return None
    if tk_t <= rt_t:
        return False
    tk_fam, rt_fam = known_family(toolkit), known_family(runtime_release)
    if tk_fam is None or rt_fam is None:
        return True
    return release_key(tk_fam) > release_key(rt_fam)


def _release_finding(tk: str, runtime_release: str, src: str) -> Compatibility | None:
    said = f"the model was converted with toolkit {tk} (according to its {src})"
    if known_family(tk) is None and not releases.is_newer_than_every_family(tk):
        return Compatibility(True, f"{said}; runtime 1.1.0 and newer need a model converted "
                                   f"with toolkit 1.1.0 or newer: reconvert or pick another build")
    if model_needs_newer_runtime(tk, runtime_release):
        return Compatibility(True, f"{said} but the runtime is {runtime_release}: install a "
                                   f"runtime of release {tk} or newer (`rkllm runtime pull`)")
    if release_key(tk) > release_key(runtime_release):
        return Compatibility(False, f"{said}, newer than runtime {runtime_release} but in the "
                                    f"same ABI family: it usually loads")
    return None


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
    * the model's toolkit release is in a newer ABI family than the runtime's, or newer than
      every known family -> refuse; newer but in the same family -> warn; a model from before
      1.1.0 -> refuse (the 1.1.0 format change);
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
            finding = _release_finding(tk, runtime_release, info.facts["toolkit_version"].source)
        except ValueError:
            finding = None
        if finding:
            out.append(finding)
    return out
