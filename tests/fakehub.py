"""A local stand-in for the Hugging Face Hub, served on 127.0.0.1.

It speaks just enough of the hub's HTTP protocol for the real ``huggingface_hub`` client:
repository info (``/api/models/{repo}[/revision/{rev}]``), the file tree
(``/api/models/{repo}/tree/{rev}``), and ``HEAD``/``GET`` of
``/{repo}/resolve/{rev}/{path}`` with range requests. Errors carry the hub's
``X-Error-Code`` header so the client raises its own typed exceptions.

Tests can make it misbehave: drop the connection once part-way through a file
(``drop_once``) or serve bytes that differ from the published checksum (``corrupt``).
Every request is recorded in ``requests`` so a test can assert that no network call was made.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".rkllm", ".bin", ".safetensors", ".gguf")
# what huggingface_hub asks on its own (agent detection, telemetry), not on our behalf
CLIENT_CHATTER = ("/api/agent-harnesses", "/api/telemetry/")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    refs: dict[str, str] = field(default_factory=dict)        # branch/tag -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)       # extra model-info fields

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


class FakeHub:
    """``with FakeHub() as hub: hub.add_commit(...); os.environ["HF_ENDPOINT"] = hub.url``"""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.unrouted: list[str] = []          # paths the client asked for that no route serves
        self.drop_once: dict[str, int] = {}   # file path -> bytes to send before dropping (once)
        self.corrupt: set[str] = set()        # file paths served with wrong bytes (same size)
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- set-up -------------------------------------------------------------------------------
    def add_commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main",
                   tags: tuple[str, ...] = (), card: dict[str, Any] | None = None) -> str:
        """Add a commit holding exactly ``files`` and point ``branch`` (and ``tags``) at it."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        digest = hashlib.sha1(repo_id.encode() + b"\0" + branch.encode()
                              + str(len(repo.commits)).encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha, dict(files))
        repo.refs[branch] = sha
        for tag in tags:
            repo.refs[tag] = sha
        if card:
            repo.card.update(card)
        return sha

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def paths_requested(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def _entry(path: str, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data),
                             "oid": git_blob_sha1(data)}
    if _is_lfs(path):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                        "pointerSize": 134}
    return entry


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- plumbing -----------------------------------------------------------------------------
    def _record(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        with self.hub._lock:
            # the client's own background calls are answered but not counted as ours
            if not parts.path.startswith(CLIENT_CHATTER):
                self.hub.requests.append(Request(self.command, parts.path, dict(self.headers)))
        return parts.path, parse_qs(parts.query)

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, code: str, message: str,
               headers: dict[str, str] | None = None) -> None:
        hdrs = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        self._send(status, json.dumps({"error": message}).encode(), hdrs)

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- routes -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        path, query = self._record()
        if path == "/api/agent-harnesses":  # huggingface_hub 1.x+: agent detection registry
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if path.startswith("/api/telemetry/"):  # telemetry pings (HEAD), when not disabled
            return self._json({})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            return self._tree(m.group(1), unquote(m.group(2)), unquote(m.group(3) or ""))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._info(m.group(1), unquote(m.group(2) or "main"), "blobs" in query)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)))
        with self.hub._lock:
            self.hub.unrouted.append(path)
        self._error(404, "NotFound", f"no route for {path}")

    def _info(self, repo_id: str, revision: str, blobs: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit(repo, revision)
        if commit is None:
            return
        siblings = []
        for name, data in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": name}
            if blobs:
                sib["size"] = len(data)
                sib["blobId"] = git_blob_sha1(data)
                if _is_lfs(name):
                    sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                  "pointerSize": 134}
            siblings.append(sib)
        info = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": commit.sha,
                "private": False, "disabled": False, "gated": False,
                "author": repo_id.split("/")[0], "siblings": siblings,
                "tags": [], "downloads": 0, "likes": 0,
                "lastModified": "2025-06-01T12:00:00.000Z",
                "createdAt": "2025-05-01T12:00:00.000Z"}
        info.update(repo.card)
        self._json(info)

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit(repo, revision)
        if commit is None:
            return
        entries = [_entry(p, d) for p, d in sorted(commit.files.items())
                   if not prefix or p.startswith(prefix.rstrip("/") + "/")]
        self._json(entries)

    def _resolve(self, repo_id: str, revision: str, file: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit(repo, revision)
        if commit is None:
            return
        data = commit.files.get(file)
        if data is None:
            return self._error(404, "EntryNotFound", f"{file} does not exist at {revision}",
                               {"X-Repo-Commit": commit.sha})
        if file in self.hub.corrupt:
            data = bytes(b ^ 0x5A for b in data)  # same size, wrong bytes
        true_data = commit.files[file]
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if _is_lfs(file):
            sha256 = hashlib.sha256(true_data).hexdigest()
            headers["ETag"] = f'"{sha256}"'
            headers["X-Linked-Etag"] = f'"{sha256}"'
            headers["X-Linked-Size"] = str(len(true_data))
        else:
            headers["ETag"] = f'"{git_blob_sha1(true_data)}"'
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if self.command == "GET" and m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            body = data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status = 206
        else:
            body = data
            status = 200
        if self.command == "GET" and file in self.hub.drop_once:
            keep = self.hub.drop_once.pop(file) - start
            return self._drop(status, body, max(keep, 0), headers)
        self._send(status, body, headers, content_type="application/octet-stream")

    def _drop(self, status: int, body: bytes, keep: int, headers: dict[str, str]) -> None:
        """Promise the whole body, send ``keep`` bytes of it, then hang up."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body[:keep])
        self.wfile.flush()
        self.close_connection = True


# -- model files the hub can serve ----------------------------------------------------------------
def sim_model_bytes(**meta: object) -> bytes:
    """A small file in the simulated model format (docs/sim-model-format.md), with ``meta``
    overriding the default META keys. Only the structure matters here, not the chain."""
    import struct
    import zlib

    fields: dict[str, object] = {
        "kind": "model", "model_name": "test-model", "target_platform": "rk3588",
        "toolkit_version": "1.2.1", "dtype": "w8a8", "max_context_len": 4096,
        "vocab_size": 2, "embed_size": 8, "bos_token_id": 0, "eos_token_id": 1,
        "system_prompt": "", "prompt_prefix": "<|im_start|>user\\n",
        "prompt_postfix": "<|im_end|>\\n<|im_start|>assistant\\n",
    }
    fields.update(meta)
    sections = [
        (b"META", "".join(f"{k}={v}\n" for k, v in fields.items()).encode()),
        (b"VOCB", struct.pack("<I", 2) + b"\x01\x03<s>" + b"\x01\x04</s>"),
        (b"WORD", struct.pack("<I", 1) + b"\x01" + struct.pack("<I", 1)),
        (b"CHAN", struct.pack("<I", 0)),
    ]
    table_end = 24 + 24 * len(sections)
    offset = table_end
    table = b""
    for tag, data in sections:
        table += tag + struct.pack("<IQQ", 0, offset, len(data))
        offset += len(data)
    total = offset + 4
    body = b"RKSIMLLM" + struct.pack("<IIQ", 1, len(sections), total) + table
    body += b"".join(data for _, data in sections)
    return body + struct.pack("<I", zlib.crc32(body))
