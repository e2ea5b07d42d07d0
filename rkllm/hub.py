"""Models from the Hugging Face Hub, through the real ``huggingface_hub`` client and its cache.

Local first: a reference that is already cached resolves without any network call, and
``HF_HUB_OFFLINE=1`` is honoured. Downloads go through ``hf_hub_download`` (its progress bars,
its in-process resume) and are then checked against the hub's published SHA-256 (LFS files) or
git blob id (small files): the client itself only checks sizes, so a corrupted blob would
otherwise stay in the cache and be reused. A mismatch deletes the file and raises
:class:`~rkllm.errors.IntegrityError`.

A model reference is one of

* a path to an existing file,
* ``demo``: the simulated demo model,
* ``REPO`` or ``REPO:FILE`` (``owner/name[:path/in/repo.rkllm]``).

``huggingface_hub`` is imported inside the functions so ``import rkllm`` stays light. The
cache's list / rm / clean are :mod:`rkllm.model_cache`. (About 440 lines: references, choosing a
file, downloading and verifying are one flow that reads best in one place.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkllm import machine, sim
from rkllm.errors import IntegrityError, ModelNotFoundError, RKLLMError
from rkllm.modelfile import facts_from_name, model_needs_newer_runtime
from rkllm.releases import release_key
from rkllm.runtimes import file_digests

MODEL_SUFFIX = ".rkllm"
_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<file>.+))?$")


# -- references ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    repo: str
    file: str | None = None


def parse_ref(ref: str) -> ModelRef | None:
    """``REPO[:FILE]`` -> ModelRef; anything else (a path, a word) -> None."""
    m = _REPO_RE.match(ref.strip())
    if not m or ref.startswith(("/", ".", "~")):
        return None
    return ModelRef(m.group("repo"), m.group("file") or None)


# -- environment (read at call time, so a caller can point us elsewhere) -------------------------
def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache: ``explicit``, else ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else the
    client's default."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def endpoint(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("HF_ENDPOINT") or None


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as the client read it at import, or as set now."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def repo_folder(repo: str, cache: Path) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


# -- choosing a file ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    file: str
    size: int | None = None
    platform: str | None = None
    toolkit_version: str | None = None
    dtype: str | None = None

    @classmethod
    def from_name(cls, file: str, size: int | None = None, repo: str | None = None) -> Candidate:
        facts = facts_from_name(file, "filename")
        repo_facts = facts_from_name(repo, "repo") if repo else {}

        def val(name: str) -> Any:
            fact = facts.get(name) or repo_facts.get(name)
            return None if fact is None else fact.value

        return cls(file, size, val("platform"), val("toolkit_version"), val("dtype"))

    def describe(self) -> str:
        bits = [self.platform or "platform?", self.toolkit_version or "toolkit?"]
        if self.dtype:
            bits.append(self.dtype)
        if self.size is not None:
            bits.append(machine.human_size(self.size))
        return f"{self.file} ({', '.join(bits)})"


@dataclass(frozen=True)
class Choice:
    chosen: Candidate | None
    remaining: tuple[Candidate, ...]  # the fitting candidates when nothing was chosen
    reason: str


def choose_file(candidates: Sequence[Candidate], *, platform: str | None,
                runtime_release: str | None) -> Choice:
    """Pick the model file for this board and runtime.

    Files for another platform are dropped (when the board is known), and so are files whose
    toolkit release needs a newer runtime ABI family (when the runtime is known). Among what
    is left, the newest toolkit release wins; a tie (say w8a8 and w4a16 builds) is left to the
    caller (ask, or list them)."""
    fitting = list(candidates)
    notes = []
    if platform:
        same = [c for c in fitting if c.platform in (None, platform)]
        if len(same) < len(fitting):
            notes.append(f"for {platform}")
        fitting = same
    if runtime_release:
        ok = [c for c in fitting if c.toolkit_version is None
              or not model_needs_newer_runtime(c.toolkit_version, runtime_release)]
        if len(ok) < len(fitting):
            notes.append(f"loadable by runtime {runtime_release}")
        fitting = ok
    if len(fitting) > 1:
        versions = {c.toolkit_version for c in fitting}
        if None not in versions and len(versions) > 1:
            newest = max(versions, key=lambda v: release_key(str(v)))
            fitting = [c for c in fitting if c.toolkit_version == newest]
            notes.append(f"newest toolkit ({newest})")
    why = ", ".join(notes) if notes else "the only model file"
    if len(fitting) == 1:
        return Choice(fitting[0], (), why)
    return Choice(None, tuple(fitting), why)


# -- this machine -------------------------------------------------------------------------------
def runtime_release() -> str | None:
    """The release of the runtime ``rkllm.LLM`` would load here (read from the file, not
    loaded), or None when there is none or it does not say."""
    from rkllm.runtime_finder import find_runtime

    try:
        return machine.read_runtime_file(find_runtime().path).release
    except (RKLLMError, ValueError, OSError):  # none, unreadable: choose without knowing it
        return None


# -- integrity ----------------------------------------------------------------------------------
def verify_cached_file(path: str, *, sha256: str | None, git_oid: str | None) -> None:
    """Check ``path`` against the hub's digests; on mismatch delete the blob and its
    snapshot link, then raise IntegrityError."""
    if sha256:
        expected, got, what = sha256.lower(), file_digests(path, "sha256")[0], "SHA-256"
    elif git_oid:
        expected, got, what = git_oid.lower(), file_digests(path, "git_blob")[0], "git blob id"
    else:
        return
    if got == expected:
        return
    _delete_cached(Path(path))
    raise IntegrityError(
        f"{os.path.basename(path)} is corrupt: its {what} is {got[:16]}…, the hub publishes "
        f"{expected[:16]}…; the bad copy was deleted, run the command again to re-download")


def _delete_cached(link: Path) -> None:
    blob = link.resolve()
    for p in {link, blob}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# -- pull ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PullResult:
    repo: str
    file: str
    commit: str
    path: str
    size: int
    reason: str


def _hub_error(exc: Exception, repo: str, file: str | None, revision: str | None,
               endpoint_url: str | None = None) -> Exception:
    """The client's typed errors -> one clear ModelNotFoundError."""
    from huggingface_hub import errors as hfe
    rev = revision or "main"
    if isinstance(exc, hfe.RepositoryNotFoundError):
        msg = f"repository {repo} not found on the hub (or it is private/gated: `hf auth login`)"
    elif isinstance(exc, hfe.RevisionNotFoundError):
        msg = f"revision {rev!r} not found in {repo}"
    elif isinstance(exc, hfe.EntryNotFoundError):
        msg = f"{file} not found in {repo} at revision {rev!r}"
    elif isinstance(exc, hfe.OfflineModeIsEnabled):
        msg = (f"{repo}{':' + file if file else ''} is not in the cache and HF_HUB_OFFLINE is "
               f"set: unset it to download")
    elif isinstance(exc, hfe.LocalEntryNotFoundError):
        msg = (f"{repo}{':' + file if file else ''} is not in the cache and the hub cannot be "
               f"reached ({exc.__cause__ or 'network unavailable'})")
    elif _transient(exc):
        msg = (f"cannot reach the Hugging Face Hub ({endpoint(endpoint_url) or 'https://huggingface.co'}) "
               f"for {repo}: {_reason(exc)}; check the network or HF_ENDPOINT, or set "
               f"HF_HUB_OFFLINE=1 to use only cached models (`rkllm list`)")
    else:
        return exc
    err = ModelNotFoundError(msg)
    err.__cause__ = exc
    return err


def _reason(exc: BaseException) -> str:
    """The innermost cause of a network error, in words (not the exception's class name)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


DOWNLOAD_ATTEMPTS = 3


def _transient(exc: BaseException) -> bool:
    """A dropped connection or timeout that the client did not retry itself (huggingface_hub
    0.x lets requests' errors through; 1.x and 2.x retry in-process first)."""
    module = type(exc).__module__.split(".")[0]
    if module in ("requests", "urllib3", "httpx", "httpx2", "httpcore"):
        return "status" not in type(exc).__name__.lower()
    return isinstance(exc, (ConnectionError, TimeoutError))


def list_remote(repo: str, *, revision: str | None = None,
                endpoint_url: str | None = None) -> tuple[str, list[Any]]:
    """(commit, siblings with sizes and LFS digests) of ``repo`` at ``revision``."""
    from huggingface_hub import HfApi
    try:
        info = HfApi(endpoint=endpoint(endpoint_url)).model_info(
            repo, revision=revision, files_metadata=True)
    except Exception as exc:
        raise _hub_error(exc, repo, None, revision, endpoint_url) from exc
    return str(info.sha), list(info.siblings or [])


def pull(repo: str, file: str | None = None, *, revision: str | None = None,
         platform: str | None = None, runtime: str | None = None,
         choose: Callable[[Sequence[Candidate]], Candidate | None] | None = None,
         cache: str | os.PathLike[str] | None = None, endpoint_url: str | None = None,
         progress: bool = True) -> PullResult:
    """Download (or re-verify) one model file of ``repo`` into the hub cache.

    Without ``file``, the repository's ``.rkllm`` files are listed and one is chosen for
    ``platform`` and ``runtime`` (default: this board and the runtime found here); when several
    fit equally, ``choose`` is asked (None -> ModelNotFoundError listing them)."""
    if offline():
        raise ModelNotFoundError(
            f"cannot pull {repo} while HF_HUB_OFFLINE is set (cached models still work)")
    commit, siblings = list_remote(repo, revision=revision, endpoint_url=endpoint_url)
    by_name = {s.rfilename: s for s in siblings}
    reason = "named on the command line"
    if file is None:
        models = [Candidate.from_name(s.rfilename, s.size, repo)
                  for s in siblings if s.rfilename.endswith(MODEL_SUFFIX)]
        if not models:
            raise ModelNotFoundError(f"{repo} has no {MODEL_SUFFIX} file at revision "
                                     f"{revision or 'main'!r}")
        if platform is None:
            platform = machine.board_soc()
        if runtime is None:
            runtime = runtime_release()
        choice = choose_file(models, platform=platform, runtime_release=runtime)
        picked = choice.chosen
        reason = choice.reason
        if picked is None and choice.remaining and choose is not None:
            picked = choose(choice.remaining)
            reason = "chosen interactively"
        if picked is None:
            if not choice.remaining:
                listing = "; ".join(c.describe() for c in models)
                raise ModelNotFoundError(
                    f"none of the model files in {repo} fits this board "
                    f"({platform or 'unknown board'}, runtime {runtime or 'unknown'}): "
                    f"{listing}; name one as {repo}:FILE to take it anyway")
            listing = "; ".join(c.describe() for c in choice.remaining)
            raise ModelNotFoundError(
                f"{repo} holds several model files that fit: {listing}; "
                f"name one: rkllm pull {repo} FILE")
        file = picked.file
    sibling = by_name.get(file)
    if sibling is None:
        raise ModelNotFoundError(f"{file} not found in {repo} at revision "
                                 f"{revision or 'main'!r}")

    import importlib

    from huggingface_hub import hf_hub_download
    hf_tqdm: Any = importlib.import_module("huggingface_hub.utils.tqdm")
    # Download by the branch/tag name so the cache records the ref (local-first lookups need
    # it); if the branch moved since the listing, the digests are re-read for the new commit.
    if not progress:
        hf_tqdm.disable_progress_bars()
    try:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                path = hf_hub_download(repo, file, revision=revision or "main",
                                       cache_dir=str(cache_dir(cache)),
                                       endpoint=endpoint(endpoint_url))
                break
            except Exception as exc:
                if attempt < DOWNLOAD_ATTEMPTS and _transient(exc):
                    continue  # the client resumes from what it kept (0.x) or starts over
                raise _hub_error(exc, repo, file, revision, endpoint_url) from exc
    finally:
        if not progress:
            hf_tqdm.enable_progress_bars()
    path = str(path)
    got_commit = Path(path).parents[len(Path(file).parts) - 1].name
    if got_commit != commit:  # the branch moved between the listing and the download
        commit, siblings = list_remote(repo, revision=got_commit, endpoint_url=endpoint_url)
        sibling = {s.rfilename: s for s in siblings}.get(file, sibling)
    lfs = getattr(sibling, "lfs", None)
    verify_cached_file(path, sha256=lfs.sha256 if lfs else None,
                       git_oid=None if lfs else getattr(sibling, "blob_id", None))
    return PullResult(repo, file, commit, path, os.path.getsize(path), reason)


# -- local-first resolution ---------------------------------------------------------------------
def _cached_commit(repo: str, revision: str | None, cache: Path) -> str | None:
    folder = repo_folder(repo, cache)
    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev if (folder / "snapshots" / rev).is_dir() else None
    ref = folder / "refs" / rev
    if ref.is_file():
        sha = ref.read_text().strip()
        return sha if (folder / "snapshots" / sha).is_dir() else None
    return None


def cached_model_files(repo: str, revision: str | None = None,
                       cache: str | os.PathLike[str] | None = None) -> list[str]:
    """Paths of the ``.rkllm`` files cached for ``repo`` at ``revision`` (no network)."""
    root = cache_dir(cache)
    commit = _cached_commit(repo, revision, root)
    if commit is None:
        return []
    snap = repo_folder(repo, root) / "snapshots" / commit
    return sorted(str(p) for p in snap.rglob("*" + MODEL_SUFFIX) if p.is_file())


def demo_model_path() -> str:
    try:
        return sim.demo_model_path()
    except OSError as exc:
        raise ModelNotFoundError(f"the simulated demo model is not available: {exc}") from exc


def resolve_model(ref: str, *, revision: str | None = None) -> str:
    """A model reference -> the path of a local file (downloading only when not cached)."""
    if ref == "demo" and not os.path.exists(ref):
        return demo_model_path()
    expanded = os.path.expanduser(ref)
    if os.path.isfile(expanded):
        return os.path.abspath(expanded)
    parsed = parse_ref(ref)
    if parsed is None:
        if os.path.isdir(expanded):
            raise ModelNotFoundError(f"{ref} is a directory; name the {MODEL_SUFFIX} file in it")
        raise ModelNotFoundError(
            f"no such model file: {ref} (a model is a path, `demo`, or REPO[:FILE] such as "
            f"owner/Model-rk3588:model.rkllm)")
    repo, file = parsed.repo, parsed.file
    cache = cache_dir()
    if file is not None:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(repo, file, revision=revision, cache_dir=str(cache))
        if isinstance(hit, str):
            return hit
    else:
        cached = cached_model_files(repo, revision, cache)
        if len(cached) == 1:
            return cached[0]
        if len(cached) > 1:
            snap = Path(cached[0]).parents[0]
            cands = [Candidate.from_name(os.path.relpath(p, snap), os.path.getsize(p), repo)
                     for p in cached]
            choice = choose_file(cands, platform=machine.board_soc(),
                                 runtime_release=runtime_release())
            if choice.chosen is not None:
                return str(snap / choice.chosen.file)
            listing = ", ".join(c.file for c in (choice.remaining or cands))
            raise ModelNotFoundError(
                f"several cached model files of {repo} fit: {listing}; name one as {repo}:FILE")
    if offline():
        raise ModelNotFoundError(
            f"{ref} is not in the cache ({cache}) and HF_HUB_OFFLINE is set: unset it to "
            f"download, or `rkllm list` to see what is cached")
    return pull(repo, file, revision=revision).path


# -- repository metadata for `rkllm info` -------------------------------------------------------
def repo_metadata(repo: str, *, revision: str | None = None,
                  endpoint_url: str | None = None) -> dict[str, Any]:
    """What the hub says about ``repo`` (raises ModelNotFoundError when it cannot say)."""
    from huggingface_hub import HfApi
    if offline():
        raise ModelNotFoundError("HF_HUB_OFFLINE is set")
    try:
        info = HfApi(endpoint=endpoint(endpoint_url)).model_info(
            repo, revision=revision, files_metadata=True)
    except Exception as exc:
        raise _hub_error(exc, repo, None, revision, endpoint_url) from exc
    card = getattr(info, "card_data", None)
    out: dict[str, Any] = {
        "id": info.id, "commit": info.sha, "author": info.author,
        "last_modified": info.last_modified.isoformat() if info.last_modified else None,
        "downloads": info.downloads, "likes": info.likes, "tags": list(info.tags or []),
        "license": getattr(card, "license", None) if card else None,
        "base_model": getattr(card, "base_model", None) if card else None,
        "model_files": [
            {"file": s.rfilename, "size": s.size,
             "sha256": s.lfs.sha256 if s.lfs else None}
            for s in (info.siblings or []) if s.rfilename.endswith(MODEL_SUFFIX)],
    }
    return out
