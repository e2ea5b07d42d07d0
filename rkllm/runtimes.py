"""Pinned releases of Rockchip's runtime (``librkllmrt.so`` from github.com/airockchip/rknn-llm):
the one pin table, verified downloads, and the per-user cache behind ``rkllm runtime``.

``scripts/fetch_runtime.py`` uses this module at wheel-build time (before the package is
compiled), so it imports from ``rkllm`` only the standard-library-only modules (errors, releases,
machine); downloads use httpx and tqdm (imported when one starts).

Every file is pinned by the vendor commit, its path and its git blob id, which is
``sha1(b"blob <size>\\0" + content)``: a download can be checked against it without anyone
having had the file before. A SHA-256 is checked as well where one has been recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkllm import releases
from rkllm.errors import IntegrityError, RuntimeNotFoundError, UnsupportedRuntimeError
from rkllm.machine import ARCHES, RUNTIME_NAME, runtime_arch

VENDOR_REPO = "airockchip/rknn-llm"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/" + VENDOR_REPO
BASE_URL_ENV = "RKLLM_RUNTIME_BASE_URL"  # tests and mirrors point this elsewhere
LIBRARY_NAME = RUNTIME_NAME
LICENSE_NAME = "LICENSE.txt"  # the vendor's LICENSE, stored next to the library
RECORD_NAME = "RUNTIME.json"  # what was installed, from where; written last
LICENSE_SUMMARY = (
    "Copyright (c) Rockchip Electronics Co., Ltd.; BSD-3-Clause-style terms: binary "
    "redistribution must reproduce the copyright notice, conditions and disclaimer "
    "(see LICENSE.txt); bundles modified ggml/llama.cpp code under the MIT License"
)

# Release bundled in the wheels. 1.2.3 because it is the newest release built for both aarch64
# and armhf that is not 1.3.0, from which users report "Illegal instruction" on some RK3588
# boards; 1.3.0 (and older releases) stay one `rkllm runtime pull` away.
BUNDLED_RELEASE = "1.2.3"


@dataclass(frozen=True)
class PinnedFile:
    """One file of the vendor repository at one commit."""

    commit: str
    path: str
    blob: str  # git blob id (hex SHA-1 over b"blob <size>\0" + content)
    sha256: str | None = None  # recorded once computed from a verified download

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return f"{base.rstrip('/')}/{self.commit}/{self.path}"


@dataclass(frozen=True)
class Release:
    version: str
    commit: str
    license_blob: str
    library_blobs: Mapping[str, str]  # arch -> git blob id of librkllmrt.so
    library_sha256: Mapping[str, str]  # arch -> SHA-256, where recorded

    @property
    def family(self) -> str:
        """The ABI family (include/<family>/rkllm.h) this release speaks."""
        return releases.family_of(self.version)

    def library(self, arch: str) -> PinnedFile:
        if arch not in ARCHES:
            raise UnsupportedRuntimeError(
                f"unknown architecture {arch!r} (the runtime exists for {', '.join(ARCHES)})")
        blob = self.library_blobs.get(arch)
        if blob is None:
            built = ", ".join(sorted(self.library_blobs))
            raise UnsupportedRuntimeError(
                f"runtime {self.version} was not released for {arch} (only for {built})")
        return PinnedFile(self.commit, f"rkllm-runtime/Linux/librkllm_api/{arch}/{LIBRARY_NAME}",
                          blob, self.library_sha256.get(arch))

    def license(self) -> PinnedFile:
        return PinnedFile(self.commit, "LICENSE", self.license_blob)


_LICENSE_2024 = "0bc8afcf2bdb95f8233785001e87cc7d730f57b4"
_LICENSE_2025 = "347d9ab7c4bda00bacc86e9ad91f03d59a290275"

RELEASES: dict[str, Release] = {r.version: r for r in (
    Release("1.1.4", "8623edd0559a07e7127876d685f2b7ca8b83590c", _LICENSE_2024,
            {"aarch64": "3bb8cb6172c4c06e1c622c8f8c579888378784f4"}, {}),
    Release("1.2.0", "cb5b341364311065fd19eddd631a79a9f0c5afe1", _LICENSE_2024,
            {"aarch64": "d45ee9b8dcb9ef27d7dd875ce3be3d5e6dfb654d"}, {}),
    Release("1.2.3", "f7df8e5de9b40dc7aaa66194cf14d4895aaf159a", _LICENSE_2025,
            {"aarch64": "0084abc34ab43359cfa9fd5d4c92ece34127dbd0",
             "armhf": "fe1ca6849603a770c54f82d26b826a120c79a01a"}, {}),
    Release("1.3.0", "878f9361fd3afa7e167b7079918918f78d2c1c2a", _LICENSE_2025,
            {"aarch64": "34167b32f99cb7ab19e21fb579fb750d96b878f1",
             "armhf": "17c9063b46168c4e7d093d6fedb097874f92d076"}, {}),
)}


def release(version: str) -> Release:
    try:
        return RELEASES[version.lstrip("v")]
    except KeyError:
        raise UnsupportedRuntimeError(
            f"runtime release {version!r} is not pinned (known: {', '.join(RELEASES)})") from None


def resolve_arch(arch: str | None) -> str:
    """``arch`` as given (aliases allowed), or this machine's; errors name the choices."""
    aliases = {"arm64": "aarch64", "armv7l": "armhf", "armv7": "armhf", "arm": "armhf"}
    if arch is None:
        found = runtime_arch()
        if found is None:
            raise UnsupportedRuntimeError(
                f"Rockchip ships no runtime for {platform.machine()}; "
                f"pass --arch ({' or '.join(ARCHES)}) to fetch one for another machine")
        return found
    name = aliases.get(arch.lower(), arch.lower())
    if name not in ARCHES:
        raise UnsupportedRuntimeError(
            f"unknown architecture {arch!r} (choose {' or '.join(ARCHES)})")
    return name


# ---------------------------------------------------------------- hashing and downloading

def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_digests(path: str | os.PathLike[str], *kinds: str) -> tuple[str, ...]:
    """Hex digests of a file, read once in chunks, one per kind: ``"git_blob"`` (git's blob
    id, ``sha1(b"blob <size>\\0" + content)``) or ``"sha256"``."""
    size = os.path.getsize(path)
    hashes = [hashlib.sha1(b"blob %d\0" % size) if kind == "git_blob" else hashlib.new(kind)
              for kind in kinds]
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes:
                h.update(chunk)
    return tuple(h.hexdigest() for h in hashes)


def verify(path: Path, pin: PinnedFile) -> tuple[str, int]:
    """Check a file against its pin; returns (SHA-256, size) or raises IntegrityError."""
    blob, sha256 = file_digests(path, "git_blob", "sha256")
    size = path.stat().st_size
    if blob != pin.blob:
        raise IntegrityError(
            f"{path} ({size} bytes) is not {pin.path} of {VENDOR_REPO}@{pin.commit[:7]}: "
            f"git blob id {blob}, expected {pin.blob}")
    if pin.sha256 is not None and sha256 != pin.sha256:
        raise IntegrityError(f"{path}: SHA-256 {sha256}, expected {pin.sha256}")
    return sha256, size


def download(pin: PinnedFile, dest: Path, *, base_url: str | None = None,
             timeout: float = 60.0, progress: bool = False) -> tuple[str, int]:
    """Download ``pin`` to ``dest`` and verify it; returns (SHA-256, size).

    The bytes go to ``dest`` + ``.part`` and are renamed into place only once verified, so
    ``dest`` never holds a partial or wrong file. A download cut short keeps its ``.part``
    and the next call resumes it (an HTTP range request); bytes that fail verification are
    deleted. ``progress`` shows a progress bar on stderr.
    """
    url = pin.url(base_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_into(url, part, timeout, progress)
    try:
        digest = verify(part, pin)
    except IntegrityError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when the server ignores ranges)."""
    import httpx
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "rkllm-cffi runtime fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout,
                          follow_redirects=True) as resp:
            if resp.status_code == 416 and have:  # nothing left to fetch
                return
            if resp.status_code >= 400:
                raise RuntimeNotFoundError(
                    f"cannot download {url}: HTTP {resp.status_code} {resp.reason_phrase}")
            if resp.status_code != 206:
                have = 0  # the server sends the whole file
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if have else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=part.name.removesuffix(".part"), disable=not progress,
                    leave=True) as bar:
                for chunk in resp.iter_bytes():  # as received: a cut keeps what came
                    out.write(chunk)
                    bar.update(len(chunk))
    except httpx.RemoteProtocolError as exc:  # the server closed before the promised end
        got = part.stat().st_size if part.exists() else 0
        raise IntegrityError(f"download of {url} was cut short after {got} bytes ({exc}); "
                             f"run it again to resume") from None
    except httpx.HTTPError as exc:  # DNS, refused, reset, timeout
        raise RuntimeNotFoundError(f"cannot download {url}: {exc}") from None
    if length is not None and part.stat().st_size != total:
        raise IntegrityError(f"download of {url} was cut short: {part.stat().st_size} of "
                             f"{total} bytes; run it again to resume")


# ---------------------------------------------------------------- installing a release

def install(version: str, arch: str, dest_dir: Path, *, base_url: str | None = None,
            progress: bool = False) -> Path:
    """Download release ``version`` for ``arch`` into ``dest_dir`` (library, the vendor's
    licence, and a RUNTIME.json record); returns the library's path. Used for the wheel's
    ``rkllm/libs/<arch>/`` and for the user cache alike."""
    rel = release(version)
    lib_pin, lic_pin = rel.library(arch), rel.license()
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / RECORD_NAME).unlink(missing_ok=True)  # the record marks a complete install
    lib = dest_dir / LIBRARY_NAME
    sha256, size = download(lib_pin, lib, base_url=base_url, progress=progress)
    download(lic_pin, dest_dir / LICENSE_NAME, base_url=base_url)
    record = {
        "release": rel.version,
        "family": rel.family,
        "arch": arch,
        "repository": f"https://github.com/{VENDOR_REPO}",
        "commit": rel.commit,
        "path": lib_pin.path,
        "git_blob": lib_pin.blob,
        "sha256": sha256,
        "size": size,
        "license_file": LICENSE_NAME,
        "license": LICENSE_SUMMARY,
    }
    (dest_dir / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return lib


def read_record(dest_dir: Path) -> dict[str, Any] | None:
    """The RUNTIME.json of an install directory, or None when there is no complete install."""
    try:
        data = json.loads((dest_dir / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not (dest_dir / LIBRARY_NAME).is_file():
        return None
    return data


# ---------------------------------------------------------------- the user cache and the wheel

def cache_root() -> Path:
    """``$XDG_CACHE_HOME/rkllm/runtimes`` (default ``~/.cache/rkllm/runtimes``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rkllm" / "runtimes"


def cache_dir(version: str, arch: str) -> Path:
    return cache_root() / release(version).version / arch


def pull(version: str, arch: str | None = None, *, base_url: str | None = None,
         force: bool = False, progress: bool = False) -> Path:
    """Make release ``version`` available in the user cache; returns the library path.
    A cached copy that still verifies is reused unless ``force``."""
    rel = release(version)  # an unknown release is the first thing to report
    arch = resolve_arch(arch)
    rel.library(arch)  # unknown release/arch combinations fail before any download
    where = cache_dir(rel.version, arch)
    if not force:
        try:
            return cached_library(rel.version, arch)
        except (RuntimeNotFoundError, IntegrityError):
            pass
    return install(rel.version, arch, where, base_url=base_url, progress=progress)


def cached_library(version: str, arch: str | None = None) -> Path:
    """The verified cached library of ``version``; raises RuntimeNotFoundError when it is not
    cached and IntegrityError when the cached file no longer matches its pin."""
    rel = release(version)  # an unknown release is the first thing to report
    arch = resolve_arch(arch)
    where = cache_dir(rel.version, arch)
    if read_record(where) is None:
        raise RuntimeNotFoundError(
            f"runtime {rel.version} for {arch} is not in the cache ({where}); "
            f"fetch it with: rkllm runtime pull {rel.version}"
            + ("" if arch == runtime_arch() else f" --arch {arch}"))
    lib = where / LIBRARY_NAME
    verify(lib, rel.library(arch))
    return lib


def library_path(version: str, arch: str | None = None) -> Path:
    """The verified library of release ``version``: the cached copy, else the wheel's bundled
    one if it is that release. This is what a release-valued setting (``RKLLM_RUNTIME=1.3.0``,
    ``rkllm runtime path 1.3.0``) resolves to; it never downloads."""
    rel = release(version)  # an unknown release is the first thing to report
    arch = resolve_arch(arch)
    try:
        return cached_library(rel.version, arch)
    except RuntimeNotFoundError:
        bundled = bundled_record(arch)
        if bundled is None or bundled.get("release") != rel.version:
            raise
    lib = bundled_dir(arch) / LIBRARY_NAME
    verify(lib, rel.library(arch))
    return lib


def bundled_dir(arch: str) -> Path:
    """Where a wheel carries its vendor runtime (empty in sdists and source checkouts)."""
    return Path(__file__).resolve().parent / "libs" / arch


def bundled_record(arch: str | None = None) -> dict[str, Any] | None:
    """The RUNTIME.json of the runtime bundled for ``arch`` (default: this machine), or None."""
    arch = arch or runtime_arch()
    return None if arch is None else read_record(bundled_dir(arch))


__all__ = [
    "ARCHES", "BUNDLED_RELEASE", "RELEASES", "PinnedFile", "Release", "bundled_dir",
    "bundled_record", "cache_dir", "cache_root", "cached_library", "download", "file_digests",
    "git_blob_id",
    "install", "library_path", "pull", "read_record", "release", "resolve_arch", "verify",
]
