"""The pinned vendor runtimes: verified downloads, the user cache, `rkllm runtime`, and the
wheel-build script, all against a local HTTP server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rkllm import runtimes
from rkllm.errors import IntegrityError, RuntimeNotFoundError, UnsupportedRuntimeError
from rkllm.machine import runtime_arch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fetch_runtime.py"
FAKE_COMMIT = hashlib.sha1(b"a commit that only this test knows").hexdigest()


class VendorServer:
    """Serves files under /<commit>/<path>; paths in `truncate` send half the promised bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.ranges = False  # answer Range requests (206) when set
        self.range_starts: list[int] = []
        self.requests: list[str] = []
        self.base_url = ""

    def put(self, pin: runtimes.PinnedFile, data: bytes) -> None:
        self.files[f"/{pin.commit}/{pin.path}"] = data


@pytest.fixture
def server() -> Iterator[VendorServer]:
    state = VendorServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if state.ranges and self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].rstrip("-"))
                state.range_starts.append(start)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            data = data[start:]
            if self.path in state.truncate:
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
            else:
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fake_release(monkeypatch: pytest.MonkeyPatch, server: VendorServer,
                 tmp_path: Path) -> runtimes.Release:
    """A pinned release '1.2.2' (really released, not pinned here; family 1.2.1) whose library and licence the local server holds, with the
    cache and the download base URL pointed at tmp_path and the server."""
    library = os.urandom(50_000)
    licence = b"Test licence terms\n" + os.urandom(16).hex().encode()
    rel = runtimes.Release("1.2.2", FAKE_COMMIT, runtimes.git_blob_id(licence),
                           {"aarch64": runtimes.git_blob_id(library)}, {})
    monkeypatch.setitem(runtimes.RELEASES, rel.version, rel)
    monkeypatch.setenv(runtimes.BASE_URL_ENV, server.base_url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    server.put(rel.library("aarch64"), library)
    server.put(rel.license(), licence)
    return rel


def served(server: VendorServer, pin: runtimes.PinnedFile) -> bytes:
    return server.files[f"/{pin.commit}/{pin.path}"]


# ---------------------------------------------------------------- the pin table

def test_git_blob_id_matches_git() -> None:
    data = os.urandom(1000)
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    out = subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True,
                         check=True).stdout.decode().strip()
    assert runtimes.git_blob_id(data) == out


def test_git_blob_id_of_empty_file_is_gits() -> None:
    # git's well-known id of the empty blob
    assert runtimes.git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_pin_table_is_complete_and_well_formed() -> None:
    hex40 = re.compile(r"[0-9a-f]{40}")
    assert set(runtimes.RELEASES) == {"1.1.4", "1.2.0", "1.2.3", "1.3.0"}
    for rel in runtimes.RELEASES.values():
        assert hex40.fullmatch(rel.commit) and hex40.fullmatch(rel.license_blob)
        assert rel.library_blobs and set(rel.library_blobs) <= set(runtimes.ARCHES)
        for arch in rel.library_blobs:
            pin = rel.library(arch)
            assert hex40.fullmatch(pin.blob)
            assert pin.path == f"rkllm-runtime/Linux/librkllm_api/{arch}/librkllmrt.so"
            assert pin.url("https://example.invalid/x/") == (
                f"https://example.invalid/x/{rel.commit}/{pin.path}")
    bundled = runtimes.release(runtimes.BUNDLED_RELEASE)
    assert set(bundled.library_blobs) == set(runtimes.ARCHES), "the bundled release must exist for every arch"


def test_default_url_is_the_vendor_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtimes.BASE_URL_ENV, raising=False)
    pin = runtimes.release("1.2.3").library("armhf")
    assert pin.url() == ("https://raw.githubusercontent.com/airockchip/rknn-llm/"
                         "f7df8e5de9b40dc7aaa66194cf14d4895aaf159a/"
                         "rkllm-runtime/Linux/librkllm_api/armhf/librkllmrt.so")


def test_unknown_release_and_unreleased_arch_are_clear_errors() -> None:
    with pytest.raises(UnsupportedRuntimeError, match="1.2.3"):
        runtimes.release("0.9")
    with pytest.raises(UnsupportedRuntimeError, match="not released for armhf"):
        runtimes.release("1.1.4").library("armhf")
    with pytest.raises(UnsupportedRuntimeError, match="unknown architecture"):
        runtimes.resolve_arch("riscv64")
    assert runtimes.release("v1.3.0").version == "1.3.0"


@pytest.mark.parametrize("machine, bits, expected", [
    ("aarch64", 64, "aarch64"), ("arm64", 64, "aarch64"),
    ("aarch64", 32, "armhf"),  # 32-bit userland on a 64-bit kernel
    ("armv8l", 32, "armhf"), ("armv7l", 32, "armhf"),
    ("x86_64", 64, None), ("riscv64", 64, None),
])
def test_runtime_arch(machine: str, bits: int, expected: str | None) -> None:
    assert runtime_arch(machine, bits) == expected


def test_resolve_arch_aliases() -> None:
    assert runtimes.resolve_arch("arm64") == "aarch64"
    assert runtimes.resolve_arch("armv7l") == "armhf"
    assert runtimes.resolve_arch("ARMHF") == "armhf"


# ---------------------------------------------------------------- downloads

def test_download_good_file(server: VendorServer, fake_release: runtimes.Release,
                            tmp_path: Path) -> None:
    pin = fake_release.library("aarch64")
    dest = tmp_path / "out" / "librkllmrt.so"
    sha256, size = runtimes.download(pin, dest, base_url=server.base_url)
    data = served(server, pin)
    assert dest.read_bytes() == data
    assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert os.listdir(dest.parent) == ["librkllmrt.so"]


def test_download_wrong_checksum_leaves_nothing(server: VendorServer,
                                                fake_release: runtimes.Release,
                                                tmp_path: Path) -> None:
    pin = fake_release.library("aarch64")
    server.put(pin, b"not the pinned library")
    dest = tmp_path / "out" / "librkllmrt.so"
    with pytest.raises(IntegrityError, match=pin.blob):
        runtimes.download(pin, dest)
    assert os.listdir(dest.parent) == []


def test_download_wrong_sha256(server: VendorServer, fake_release: runtimes.Release,
                               tmp_path: Path) -> None:
    good = fake_release.library("aarch64")
    pin = runtimes.PinnedFile(good.commit, good.path, good.blob, sha256="0" * 64)
    with pytest.raises(IntegrityError, match="SHA-256"):
        runtimes.download(pin, tmp_path / "lib.so")
    assert not (tmp_path / "lib.so").exists()


def test_download_truncated(server: VendorServer, fake_release: runtimes.Release,
                            tmp_path: Path) -> None:
    pin = fake_release.library("aarch64")
    server.truncate.add(f"/{pin.commit}/{pin.path}")
    dest = tmp_path / "out" / "librkllmrt.so"
    with pytest.raises(IntegrityError, match="cut short"):
        runtimes.download(pin, dest)
    # the partial download is kept, never under the library's own name
    assert os.listdir(dest.parent) == ["librkllmrt.so.part"]


def test_download_resumes_where_it_was_cut(server: VendorServer,
                                           fake_release: runtimes.Release,
                                           tmp_path: Path) -> None:
    pin = fake_release.library("aarch64")
    data = served(server, pin)
    server.truncate.add(f"/{pin.commit}/{pin.path}")
    server.ranges = True
    dest = tmp_path / "out" / "librkllmrt.so"
    with pytest.raises(IntegrityError, match="run it again to resume"):
        runtimes.download(pin, dest)
    kept = (tmp_path / "out" / "librkllmrt.so.part").stat().st_size
    assert 0 < kept < len(data)
    server.truncate.clear()
    runtimes.download(pin, dest)
    assert server.range_starts == [kept]  # only the rest was asked for
    assert dest.read_bytes() == data and os.listdir(dest.parent) == ["librkllmrt.so"]


def test_download_restarts_when_the_server_ignores_ranges(server: VendorServer,
                                                          fake_release: runtimes.Release,
                                                          tmp_path: Path) -> None:
    pin = fake_release.library("aarch64")
    dest = tmp_path / "out" / "librkllmrt.so"
    dest.parent.mkdir()
    (tmp_path / "out" / "librkllmrt.so.part").write_bytes(b"stale bytes of another try")
    runtimes.download(pin, dest)
    assert dest.read_bytes() == served(server, pin)


def test_download_progress_bar(server: VendorServer, fake_release: runtimes.Release,
                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pin = fake_release.library("aarch64")
    runtimes.download(pin, tmp_path / "librkllmrt.so", progress=True)
    err = capsys.readouterr().err
    assert "librkllmrt.so" in err and "100%" in err


def test_download_404(server: VendorServer, fake_release: runtimes.Release,
                      tmp_path: Path) -> None:
    pin = runtimes.PinnedFile(FAKE_COMMIT, "no/such/file.so", "0" * 40)
    with pytest.raises(RuntimeNotFoundError, match="HTTP 404"):
        runtimes.download(pin, tmp_path / "x.so")
    assert server.requests == [f"/{FAKE_COMMIT}/no/such/file.so"]
    assert os.listdir(tmp_path) == []


def test_download_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin = runtimes.PinnedFile(FAKE_COMMIT, "lib.so", "0" * 40)
    with pytest.raises(RuntimeNotFoundError, match="cannot download"):
        runtimes.download(pin, tmp_path / "lib.so", base_url=f"http://127.0.0.1:{port}")


# ---------------------------------------------------------------- install, cache, pull

def test_install_records_release_checksums_and_licence(server: VendorServer,
                                                       fake_release: runtimes.Release,
                                                       tmp_path: Path) -> None:
    lib = runtimes.install("1.2.2", "aarch64", tmp_path / "libs" / "aarch64")
    data = served(server, fake_release.library("aarch64"))
    assert lib.read_bytes() == data
    assert (lib.parent / "LICENSE.txt").read_bytes() == served(server, fake_release.license())
    record = json.loads((lib.parent / "RUNTIME.json").read_text())
    assert record["release"] == "1.2.2" and record["arch"] == "aarch64"
    assert record["commit"] == FAKE_COMMIT and record["family"] == "1.2.1"
    assert record["git_blob"] == runtimes.git_blob_id(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert record["license_file"] == "LICENSE.txt" and "Rockchip" in record["license"]
    assert runtimes.read_record(lib.parent) == record


def test_install_failure_leaves_no_record(server: VendorServer, fake_release: runtimes.Release,
                                          tmp_path: Path) -> None:
    server.files.pop(f"/{FAKE_COMMIT}/LICENSE")
    with pytest.raises(RuntimeNotFoundError, match="404"):
        runtimes.install("1.2.2", "aarch64", tmp_path / "d")
    assert runtimes.read_record(tmp_path / "d") is None


def test_pull_caches_and_reuses(server: VendorServer, fake_release: runtimes.Release,
                                tmp_path: Path) -> None:
    lib = runtimes.pull("1.2.2", "aarch64")
    assert lib == tmp_path / "cache" / "rkllm" / "runtimes" / "1.2.2" / "aarch64" / "librkllmrt.so"
    assert runtimes.cached_library("1.2.2", "aarch64") == lib
    fetched = len(server.requests)
    assert runtimes.pull("1.2.2", "aarch64") == lib
    assert len(server.requests) == fetched, "a verified cached copy is not downloaded again"
    runtimes.pull("1.2.2", "aarch64", force=True)
    assert len(server.requests) == 2 * fetched


def test_corrupted_cache_is_detected_and_repaired(server: VendorServer,
                                                  fake_release: runtimes.Release) -> None:
    lib = runtimes.pull("1.2.2", "aarch64")
    data = lib.read_bytes()
    lib.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(IntegrityError):
        runtimes.cached_library("1.2.2", "aarch64")
    assert runtimes.pull("1.2.2", "aarch64") == lib
    assert lib.read_bytes() == served(server, fake_release.library("aarch64"))


def test_pull_of_unreleased_arch_downloads_nothing(server: VendorServer,
                                                   fake_release: runtimes.Release) -> None:
    with pytest.raises(UnsupportedRuntimeError, match="armhf"):
        runtimes.pull("1.2.2", "armhf")
    with pytest.raises(RuntimeNotFoundError, match="rkllm runtime pull 1.2.2"):
        runtimes.cached_library("1.2.2", "aarch64")
    assert server.requests == []


def test_library_path_falls_back_to_the_bundled_release(server: VendorServer,
                                                          fake_release: runtimes.Release,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bundled = tmp_path / "wheel" / "rkllm" / "libs"
    monkeypatch.setattr(runtimes, "bundled_dir", lambda arch: bundled / arch)
    lib = runtimes.install("1.2.2", "aarch64", bundled / "aarch64")
    assert runtimes.library_path("1.2.2", "aarch64") == lib
    with pytest.raises(RuntimeNotFoundError, match="rkllm runtime pull 1.3.0"):
        runtimes.library_path("1.3.0", "aarch64")  # neither cached nor the bundled release
    rc, out, _ = run_cli(capsys, "runtime", "list", "--arch", "aarch64")
    row = next(line for line in out.splitlines() if line.startswith("1.2.2"))
    assert rc == 0 and "bundled" in row and str(lib) in row
    cached = runtimes.pull("1.2.2", "aarch64")  # a cached copy wins over the bundled one
    assert runtimes.library_path("1.2.2", "aarch64") == cached != lib
    lib.write_bytes(b"tampered")
    cached.unlink()
    with pytest.raises(IntegrityError):
        runtimes.library_path("1.2.2", "aarch64")


# ---------------------------------------------------------------- the CLI

def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from rkllm.cli import main
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_pull_path_list(server: VendorServer, fake_release: runtimes.Release,
                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, "runtime", "path", "1.2.2", "--arch", "aarch64")
    assert rc == 1 and "rkllm runtime pull 1.2.2" in err and out == ""

    rc, out, err = run_cli(capsys, "runtime", "pull", "1.2.2", "--arch", "arm64")
    assert rc == 0 and "verified" in err
    lib = Path(out.strip())
    assert lib.read_bytes() == served(server, fake_release.library("aarch64"))

    rc, out, _ = run_cli(capsys, "runtime", "path", "1.2.2", "--arch", "aarch64")
    assert rc == 0 and out.strip() == str(lib)

    rc, out, _ = run_cli(capsys, "runtime", "list", "--arch", "aarch64")
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("1.2.2"))
    assert "cached" in row and str(lib) in row
    other = next(line for line in out.splitlines() if line.startswith("1.3.0"))
    assert "cached" not in other


def test_cli_pull_bad_checksum_fails_cleanly(server: VendorServer,
                                             fake_release: runtimes.Release,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    server.put(fake_release.library("aarch64"), b"tampered")
    rc, out, err = run_cli(capsys, "runtime", "pull", "1.2.2", "--arch", "aarch64")
    assert rc == 1 and "git blob id" in err and out == ""
    assert len(err.strip().splitlines()) == 2  # "fetching URL" and one error line, no traceback


def test_cli_list_shows_every_pinned_release(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rc, out, err = run_cli(capsys, "runtime", "list")
    assert rc == 0, err
    rows = {tuple(line.split()[:3]) for line in out.splitlines() if line[:1].isdigit()}
    expected = {(r.version, r.family, a) for r in runtimes.RELEASES.values() for a in r.library_blobs}
    assert rows == expected


def test_import_rkllm_does_not_import_runtimes() -> None:
    code = "import sys, rkllm; print('rkllm.runtimes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- the wheel-build script

def load_script() -> object:
    if not SCRIPT.is_file():
        pytest.skip("scripts/fetch_runtime.py is not next to these tests")
    spec = importlib.util.spec_from_file_location("fetch_runtime", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_bundles_runtime_and_licence(server: VendorServer,
                                            fake_release: runtimes.Release,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    libs = tmp_path / "libs"
    (libs / "armhf").mkdir(parents=True)
    (libs / "armhf" / "librkllmrt.so").write_bytes(b"left over from another arch")
    assert script.main(["--arch", "aarch64", "--release", "1.2.2", "--libs", str(libs)]) == 0  # type: ignore[attr-defined]
    assert sorted(os.listdir(libs)) == ["aarch64"]
    assert sorted(os.listdir(libs / "aarch64")) == ["LICENSE.txt", "RUNTIME.json", "librkllmrt.so"]
    assert (runtimes.read_record(libs / "aarch64") or {})["release"] == "1.2.2"
    fetched = len(server.requests)
    assert script.main(["--arch", "aarch64", "--release", "1.2.2", "--libs", str(libs)]) == 0  # type: ignore[attr-defined]
    assert len(server.requests) == fetched and "already holds 1.2.2" in capsys.readouterr().out


def make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("rkllm/__init__.py", "x = 1\n")
        z.writestr("rkllm_cffi-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
        z.writestr("rkllm_cffi-0.1.0.dist-info/RECORD",
                   "rkllm/__init__.py,sha256=abc,6\nrkllm_cffi-0.1.0.dist-info/WHEEL,sha256=def,20\n"
                   "rkllm_cffi-0.1.0.dist-info/RECORD,,\n")
    return path


def record_of(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as z:
        text = z.read("rkllm_cffi-0.1.0.dist-info/RECORD").decode()
    rows = [line.split(",") for line in text.splitlines()]
    assert len({r[0] for r in rows}) == len(rows), "no duplicate RECORD rows"
    return {r[0]: r[1] for r in rows}


def test_script_adds_runtime_to_repaired_wheels(server: VendorServer,
                                                fake_release: runtimes.Release,
                                                tmp_path: Path) -> None:
    script = load_script()
    house = tmp_path / "wheelhouse"
    house.mkdir()
    arm = make_wheel(house / "rkllm_cffi-0.1.0-cp310-abi3-manylinux_2_28_aarch64.whl")
    x86 = make_wheel(house / "rkllm_cffi-0.1.0-cp310-abi3-manylinux_2_28_x86_64.whl")
    x86_before = x86.read_bytes()
    for _ in range(2):  # idempotent: a second run replaces, never duplicates
        assert script.main(["--into-wheel", str(house), "--release", "1.2.2"]) == 0  # type: ignore[attr-defined]
    assert x86.read_bytes() == x86_before
    lib_data = served(server, fake_release.library("aarch64"))
    with zipfile.ZipFile(arm) as z:
        names = z.namelist()
        assert sorted(n for n in names if n.startswith("rkllm/libs/")) == [
            "rkllm/libs/aarch64/LICENSE.txt", "rkllm/libs/aarch64/RUNTIME.json",
            "rkllm/libs/aarch64/librkllmrt.so"]
        assert z.read("rkllm/libs/aarch64/librkllmrt.so") == lib_data
        assert (z.getinfo("rkllm/libs/aarch64/librkllmrt.so").external_attr >> 16) & 0o777 == 0o755
        assert json.loads(z.read("rkllm/libs/aarch64/RUNTIME.json"))["release"] == "1.2.2"
        record = record_of(arm)
        for name in names:
            if name.startswith("rkllm/libs/"):
                digest = base64.urlsafe_b64encode(hashlib.sha256(z.read(name)).digest())
                assert record[name] == "sha256=" + digest.rstrip(b"=").decode()
        assert record["rkllm/__init__.py"] == "sha256=abc"  # the other rows are kept as they were
        assert set(record) == set(names)


def test_script_fails_on_mismatch_and_skips_x86(server: VendorServer, tmp_path: Path) -> None:
    if not SCRIPT.is_file():
        pytest.skip("scripts/fetch_runtime.py is not next to these tests")
    # the real pins against a server holding wrong bytes for 1.2.3 armhf
    pin = runtimes.release("1.2.3").library("armhf")
    server.put(pin, b"wrong bytes")
    env = dict(os.environ, RKLLM_RUNTIME_BASE_URL=server.base_url)
    libs = tmp_path / "libs"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "armv7l", "--libs", str(libs)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "fetch_runtime: error:" in proc.stderr and pin.blob in proc.stderr
    assert not (libs / "armhf" / "librkllmrt.so").exists()

    env["AUDITWHEEL_ARCH"] = "x86_64"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--libs", str(libs)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "bundles none" in proc.stdout
    assert not (libs / "x86_64").exists()
