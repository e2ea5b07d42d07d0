"""The models in the Hugging Face cache: list, remove, clean (``rkllm list | rm | clean``).

Reads the cache through ``huggingface_hub``'s own ``scan_cache_dir`` and deletes with its
``delete_revisions``; only files rkllm downloaded (the hub cache) are ever removed. Downloading
and resolving references is :mod:`rkllm.hub`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkllm.errors import ModelNotFoundError
from rkllm.hub import MODEL_SUFFIX, cache_dir, parse_ref, repo_folder
from rkllm.modelfile import inspect_model


@dataclass(frozen=True)
class CachedModel:
    repo: str
    file: str
    commit: str
    refs: tuple[str, ...]
    size: int
    path: str
    platform: str | None
    toolkit_version: str | None
    sources: dict[str, str] = field(default_factory=dict)  # fact -> where it came from

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.file}"

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "file": self.file, "ref": self.ref, "commit": self.commit,
                "refs": list(self.refs), "size": self.size, "path": self.path,
                "platform": self.platform, "toolkit_version": self.toolkit_version,
                "sources": dict(self.sources)}


def _scan(cache: Path) -> Any:
    from huggingface_hub import scan_cache_dir
    if not cache.is_dir():
        return None
    return scan_cache_dir(cache)


def list_cached(cache: str | os.PathLike[str] | None = None) -> list[CachedModel]:
    """Every cached ``.rkllm`` file, one entry per (repo, revision, file)."""
    info = _scan(cache_dir(cache))
    out: list[CachedModel] = []
    if info is None:
        return out
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            for f in rev.files:
                rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                if not rel.endswith(MODEL_SUFFIX):
                    continue
                mi = inspect_model(str(f.file_path), repo=repo.repo_id)
                sources: dict[str, str] = {
                    k: mi.facts[k].source for k in ("platform", "toolkit_version")
                    if k in mi.facts}
                out.append(CachedModel(repo.repo_id, rel, rev.commit_hash,
                                       tuple(sorted(rev.refs)), f.size_on_disk,
                                       str(f.file_path), mi.platform, mi.toolkit_version,
                                       sources))
    out.sort(key=lambda m: (m.repo.lower(), m.file, m.commit))
    return out


def _in_cache(path: Path, cache: Path) -> bool:
    try:
        path.absolute().relative_to(cache.absolute())
        return True
    except ValueError:
        return False


def remove(ref: str, *, cache: str | os.PathLike[str] | None = None) -> list[CachedModel]:
    """Delete cached models: ``REPO`` (all its files and revisions), ``REPO:FILE`` (that file
    in every cached revision) or the path of a cached file. Returns what was removed."""
    root = cache_dir(cache)
    models = list_cached(root)
    parsed = parse_ref(ref)
    if parsed is not None:
        hits = [m for m in models if m.repo == parsed.repo
                and (parsed.file is None or m.file == parsed.file)]
    else:
        p = Path(os.path.expanduser(ref)).absolute()
        if not _in_cache(p, root):
            raise ModelNotFoundError(
                f"{ref} is not in the model cache ({root}); rkllm only removes what it "
                f"downloaded, delete other files yourself")
        hits = [m for m in models if Path(m.path).absolute() == p]
    if not hits:
        raise ModelNotFoundError(f"no cached model matches {ref} (see `rkllm list`)")
    if parsed is not None and parsed.file is None:
        shutil.rmtree(repo_folder(parsed.repo, root))
        return hits
    for m in hits:
        link = Path(m.path)
        blob = link.resolve()
        link.unlink()
        others = [o for o in models if o not in hits and Path(o.path).resolve() == blob]
        if not others and blob != link:
            blob.unlink(missing_ok=True)
        _prune_empty(link.parent, repo_folder(m.repo, root) / "snapshots")
    return hits


def _prune_empty(directory: Path, stop: Path) -> None:
    while directory != stop and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


@dataclass
class CleanReport:
    incomplete: list[str] = field(default_factory=list)
    unused_revisions: list[str] = field(default_factory=list)  # "repo@commit"
    freed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"incomplete": self.incomplete, "unused_revisions": self.unused_revisions,
                "freed": self.freed}


def clean(*, cache: str | os.PathLike[str] | None = None, dry_run: bool = False) -> CleanReport:
    """Remove incomplete downloads (``blobs/*.incomplete``) and cached revisions no branch or
    tag points at any more (superseded by a newer pull)."""
    root = cache_dir(cache)
    report = CleanReport()
    if not root.is_dir():
        return report
    for part in sorted(root.glob("models--*/blobs/*.incomplete")):
        report.incomplete.append(str(part))
        report.freed += part.stat().st_size
        if not dry_run:
            part.unlink(missing_ok=True)
    info = _scan(root)
    if info is None:
        return report
    unused = []
    for repo in info.repos:
        for rev in repo.revisions:
            if not rev.refs:
                unused.append(rev.commit_hash)
                report.unused_revisions.append(f"{repo.repo_id}@{rev.commit_hash}")
    if unused:
        strategy = info.delete_revisions(*unused)
        report.freed += strategy.expected_freed_size
        if not dry_run:
            strategy.execute()
    return report
