"""rkllm.hub and rkllm.model_cache against the real huggingface_hub client and a local hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fakehub import FakeHub, sim_model_bytes  # noqa: E402

import rkllm.hub as rkhub  # noqa: E402
from rkllm import model_cache  # noqa: E402
from rkllm.errors import IntegrityError, ModelNotFoundError  # noqa: E402

REPO = "acme/Tiny-rk3588-1.2.1"


@pytest.fixture
def hub(local_hub: FakeHub) -> FakeHub:
    return local_hub


def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "hf" / "hub"


def test_pull_single_file_and_list(hub: FakeHub, tmp_path: Path) -> None:
    data = sim_model_bytes(target_platform="rk3588", toolkit_version="1.2.1")
    commit = hub.add_commit(REPO, {"tiny.rkllm": data, "README.md": b"# tiny\n"})
    result = rkhub.pull(REPO, platform="rk3588", runtime="1.2.1", progress=False)
    assert result.file == "tiny.rkllm" and result.commit == commit
    assert Path(result.path).read_bytes() == data
    assert str(cache_root(tmp_path)) in result.path
    [cached] = model_cache.list_cached()
    assert (cached.repo, cached.file, cached.refs) == (REPO, "tiny.rkllm", ("main",))
    assert (cached.platform, cached.toolkit_version) == ("rk3588", "1.2.1")
    assert cached.sources == {"platform": "file", "toolkit_version": "file"}
    assert cached.size == len(data)


def several(hub: FakeHub) -> dict[str, bytes]:
    files = {
        "m-rk3588-w8a8-1.1.4.rkllm": sim_model_bytes(toolkit_version="1.1.4"),
        "m-rk3588-w8a8-1.2.1.rkllm": sim_model_bytes(toolkit_version="1.2.1"),
        "m-rk3576-w8a8-1.2.1.rkllm": sim_model_bytes(toolkit_version="1.2.1",
                                                     target_platform="rk3576"),
        "README.md": b"several builds\n",
    }
    hub.add_commit("acme/many", files)
    return files


@pytest.mark.parametrize("platform,runtime,expected", [
    ("rk3588", "1.2.1", "m-rk3588-w8a8-1.2.1.rkllm"),   # newest that loads
    ("rk3588", "1.2.0", "m-rk3588-w8a8-1.1.4.rkllm"),   # 1.2.1 needs a newer runtime
    ("rk3576", "1.3.0", "m-rk3576-w8a8-1.2.1.rkllm"),   # the board decides
])
def test_pull_chooses_for_board_and_runtime(hub: FakeHub, platform: str, runtime: str,
                                            expected: str) -> None:
    files = several(hub)
    result = rkhub.pull("acme/many", platform=platform, runtime=runtime, progress=False)
    assert result.file == expected
    assert Path(result.path).read_bytes() == files[expected]
    # only the chosen file was downloaded
    assert [p for p in hub.paths_requested("GET") if "/resolve/" in p] == [
        f"/acme/many/resolve/main/{expected}"]


def test_pull_asks_or_lists_when_several_fit(hub: FakeHub) -> None:
    hub.add_commit("acme/quant", {"q-rk3588-w8a8.rkllm": sim_model_bytes(),
                                  "q-rk3588-w4a16.rkllm": sim_model_bytes(dtype="w4a16")})
    with pytest.raises(ModelNotFoundError) as exc:
        rkhub.pull("acme/quant", platform="rk3588", runtime="1.2.1", progress=False)
    assert "q-rk3588-w8a8.rkllm" in str(exc.value) and "q-rk3588-w4a16.rkllm" in str(exc.value)
    offered: list[str] = []

    def choose(cands: object) -> rkhub.Candidate:
        assert isinstance(cands, tuple)
        offered.extend(c.file for c in cands)
        return next(c for c in cands if c.dtype == "w4a16")

    result = rkhub.pull("acme/quant", platform="rk3588", runtime="1.2.1", choose=choose,
                         progress=False)
    assert sorted(offered) == ["q-rk3588-w4a16.rkllm", "q-rk3588-w8a8.rkllm"]
    assert result.file == "q-rk3588-w4a16.rkllm" and result.reason == "chosen interactively"


def test_pull_refuses_when_nothing_fits(hub: FakeHub) -> None:
    several(hub)
    with pytest.raises(ModelNotFoundError, match="none of the model files"):
        rkhub.pull("acme/many", platform="rk3562", runtime="1.2.1", progress=False)


def test_resume_after_dropped_connection(hub: FakeHub) -> None:
    big = os.urandom(12 * 1024 * 1024)  # > the client's 10 MiB chunk, so a resume is visible
    hub.add_commit("acme/big", {"big-rk3588.rkllm": big})
    hub.drop_once["big-rk3588.rkllm"] = 11 * 1024 * 1024
    result = rkhub.pull("acme/big", "big-rk3588.rkllm", progress=False)
    assert hashlib.sha256(Path(result.path).read_bytes()).digest() == \
        hashlib.sha256(big).digest()
    gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert len(gets) == 2
    assert gets[0].headers.get("Range") is None
    assert gets[1].headers.get("Range") == f"bytes={10 * 1024 * 1024}-"


def test_missing_repo_revision_file(hub: FakeHub) -> None:
    hub.add_commit(REPO, {"tiny.rkllm": sim_model_bytes()})
    with pytest.raises(ModelNotFoundError, match="repository acme/nope not found"):
        rkhub.pull("acme/nope", progress=False)
    with pytest.raises(ModelNotFoundError, match="revision 'v9' not found"):
        rkhub.pull(REPO, revision="v9", progress=False)
    with pytest.raises(ModelNotFoundError, match="other.rkllm not found in"):
        rkhub.pull(REPO, "other.rkllm", progress=False)
    with pytest.raises(ModelNotFoundError, match="has no .rkllm file"):
        hub.add_commit("acme/empty", {"README.md": b"x"})
        rkhub.pull("acme/empty", progress=False)


def test_revision_and_unused_revision_clean(hub: FakeHub, tmp_path: Path) -> None:
    old = hub.add_commit(REPO, {"tiny.rkllm": sim_model_bytes(model_name="old")},
                         tags=("v1",))
    rkhub.pull(REPO, "tiny.rkllm", progress=False)
    new = hub.add_commit(REPO, {"tiny.rkllm": sim_model_bytes(model_name="new")})
    assert rkhub.pull(REPO, "tiny.rkllm", progress=False).commit == new
    tagged = rkhub.pull(REPO, "tiny.rkllm", revision="v1", progress=False)
    assert tagged.commit == old and b"model_name=old" in Path(tagged.path).read_bytes()
    # v1 still points at the old commit: nothing is unused yet
    assert model_cache.clean(dry_run=True).unused_revisions == []
    (cache_root(tmp_path) / "models--acme--Tiny-rk3588-1.2.1" / "refs" / "v1").unlink()
    partial = cache_root(tmp_path) / "models--acme--Tiny-rk3588-1.2.1" / "blobs" / "ab.incomplete"
    partial.write_bytes(b"x" * 100)
    dry = model_cache.clean(dry_run=True)
    assert dry.unused_revisions == [f"{REPO}@{old}"] and dry.incomplete == [str(partial)]
    assert partial.exists() and len(model_cache.list_cached()) == 2
    done = model_cache.clean()
    assert done.unused_revisions == [f"{REPO}@{old}"] and done.freed >= 100
    assert not partial.exists()
    assert [m.commit for m in model_cache.list_cached()] == [new]


def test_offline_and_local_first(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_commit(REPO, {"tiny.rkllm": sim_model_bytes()})
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        rkhub.resolve_model(REPO)
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = rkhub.resolve_model(REPO)            # not cached: downloads
    n = len(hub.requests)
    assert n > 0
    assert rkhub.resolve_model(REPO) == path    # cached: no request at all
    assert rkhub.resolve_model(f"{REPO}:tiny.rkllm") == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert rkhub.resolve_model(REPO) == path
    assert len(hub.requests) == n
    with pytest.raises(ModelNotFoundError, match="cannot pull"):
        rkhub.pull(REPO, progress=False)


def test_corrupted_download_detected_and_removed(hub: FakeHub) -> None:
    data = sim_model_bytes()
    hub.add_commit(REPO, {"tiny.rkllm": data})
    hub.corrupt.add("tiny.rkllm")
    with pytest.raises(IntegrityError, match="corrupt"):
        rkhub.pull(REPO, "tiny.rkllm", progress=False)
    assert model_cache.list_cached() == []
    blobs = list(rkhub.cache_dir().glob("models--*/blobs/*"))
    assert blobs == []
    hub.corrupt.clear()                          # the next pull starts clean and succeeds
    assert Path(rkhub.pull(REPO, "tiny.rkllm", progress=False).path).read_bytes() == data


def test_small_non_lfs_file_checked_by_git_blob_id(hub: FakeHub) -> None:
    hub.add_commit(REPO, {"notes.txt.rkllm.md": b"x", "config/tiny.rkllm.json": b"{}"})
    # only .rkllm files are models; README-like files never count
    with pytest.raises(ModelNotFoundError, match="has no .rkllm file"):
        rkhub.pull(REPO, progress=False)
    p = rkhub.cache_dir() / "x"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"hello")
    assert rkhub.file_digests(p, "git_blob") == (hashlib.sha1(b"blob 5\0hello").hexdigest(),)


def test_rm(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_commit(REPO, {"a-rk3588.rkllm": sim_model_bytes(model_name="a"),
                          "b-rk3588.rkllm": sim_model_bytes(model_name="b")})
    rkhub.pull(REPO, "a-rk3588.rkllm", progress=False)
    rkhub.pull(REPO, "b-rk3588.rkllm", progress=False)
    removed = model_cache.remove(f"{REPO}:a-rk3588.rkllm")
    assert [m.file for m in removed] == ["a-rk3588.rkllm"]
    assert not Path(removed[0].path).exists()
    assert [m.file for m in model_cache.list_cached()] == ["b-rk3588.rkllm"]
    blobs = list(rkhub.cache_dir().glob("models--*/blobs/*"))
    assert len(blobs) == 1                       # a's blob went with it
    with pytest.raises(ModelNotFoundError, match="no cached model"):
        model_cache.remove("acme/other")
    outside = tmp_path / "mine.rkllm"
    outside.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not in the model cache"):
        model_cache.remove(str(outside))
    assert outside.exists()
    model_cache.remove(REPO)
    assert model_cache.list_cached() == []
    assert not (rkhub.cache_dir() / "models--acme--Tiny-rk3588-1.2.1").exists()


def test_resolve_paths(tmp_path: Path) -> None:
    f = tmp_path / "m.rkllm"
    f.write_bytes(b"x")
    assert rkhub.resolve_model(str(f)) == str(f)
    with pytest.raises(ModelNotFoundError, match="no such model file"):
        rkhub.resolve_model(str(tmp_path / "absent.rkllm"))
    with pytest.raises(ModelNotFoundError, match="directory"):
        rkhub.resolve_model(str(tmp_path))


def test_resolve_demo() -> None:
    sim = pytest.importorskip("rkllm.sim")
    assert rkhub.resolve_model("demo") == str(sim.demo_model_path())


def test_parse_ref() -> None:
    assert rkhub.parse_ref("a/b") == rkhub.ModelRef("a/b", None)
    assert rkhub.parse_ref("a/b:sub/c.rkllm") == rkhub.ModelRef("a/b", "sub/c.rkllm")
    assert rkhub.parse_ref("./a/b") is None and rkhub.parse_ref("/x/y") is None
    assert rkhub.parse_ref("demo") is None


def test_pull_with_telemetry_on_asks_only_what_the_hub_serves(hub: FakeHub, tmp_path: Path) -> None:
    """The client's own calls (agent detection, telemetry) get answers from the test hub, so
    the suite does not depend on telemetry being off (a fresh process: the client reads its
    settings at import)."""
    hub.add_commit(REPO, {"tiny.rkllm": sim_model_bytes()})
    code = f"import rkllm.hub as h; print(h.pull({REPO!r}, 'tiny.rkllm', progress=False).path)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "DO_NOT"))}
    env.update(HF_HUB_DISABLE_TELEMETRY="0", HF_HOME=str(tmp_path / "hf2"), HF_ENDPOINT=hub.url)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_file()
    assert hub.unrouted == []


def test_pull_without_network_names_the_hub_and_offline_mode(
        hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on: the hub is unreachable
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ModelNotFoundError) as err:
        rkhub.pull(REPO, progress=False, endpoint_url=dead)
    message = str(err.value)
    assert "Hugging Face Hub" in message and dead in message and "HF_HUB_OFFLINE" in message
    assert "ConnectError" not in message
