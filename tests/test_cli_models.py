"""`rkllm pull | list | info | rm | clean` as a user runs them: a subprocess whose
huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE at import, against the local hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fakehub import FakeHub, sim_model_bytes  # noqa: E402


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_commit("acme/tiny", {"tiny-rk3588.rkllm": sim_model_bytes(),
                                        "README.md": b"# tiny\n"},
                          card={"cardData": {"license": "apache-2.0"}, "downloads": 7})
        server.add_commit("acme/quant", {
            "q-rk3588-w8a8-1.2.1.rkllm": sim_model_bytes(),
            "q-rk3588-w4a16-1.2.1.rkllm": sim_model_bytes(dtype="w4a16")})
        yield server


def rkllm(hub: FakeHub, home: Path, *args: str,
          **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update(HF_HOME=str(home), HF_ENDPOINT=hub.url,
                    HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1", **env)
    return subprocess.run([sys.executable, "-m", "rkllm.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=120, stdin=subprocess.DEVNULL)


def test_help_everywhere() -> None:
    for verb in ("pull", "list", "info", "rm", "clean"):
        proc = subprocess.run([sys.executable, "-m", "rkllm.cli", verb, "--help"],
                              capture_output=True, text=True,
                              env=dict(os.environ))
        assert proc.returncode == 0 and "usage: rkllm " + verb in proc.stdout


def test_pull_list_info_rm(hub: FakeHub, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    proc = rkllm(hub, home, "pull", "acme/tiny", "--json", "--platform", "rk3588",
                 "--runtime", "1.2.1")
    assert proc.returncode == 0, proc.stderr
    pulled = json.loads(proc.stdout)
    assert pulled["file"] == "tiny-rk3588.rkllm" and pulled["verified"] is True
    assert pulled["path"].startswith(str(home))

    proc = rkllm(hub, home, "list")
    assert proc.returncode == 0
    header, row = proc.stdout.splitlines()[:2]
    assert header.split() == ["REPO", "FILE", "SIZE", "PLATFORM", "TOOLKIT", "REVISION"]
    assert row.split()[:2] == ["acme/tiny", "tiny-rk3588.rkllm"]
    assert "rk3588" in row and "1.2.1" in row and "(main)" in row
    [entry] = json.loads(rkllm(hub, home, "list", "--json").stdout)
    assert entry["ref"] == "acme/tiny:tiny-rk3588.rkllm"

    proc = rkllm(hub, home, "info", "acme/tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["path"] == pulled["path"]
    assert info["hub"]["license"] == "apache-2.0" and info["hub"]["downloads"] == 7
    assert info["inspect"]["facts"]["toolkit_version"]["source"] == "file"
    assert info["inspect"]["facts"]["platform"]["value"] == "rk3588"
    proc = rkllm(hub, home, "info", "acme/tiny")
    assert proc.returncode == 0, proc.stderr
    assert "toolkit version" in proc.stdout and "file: META toolkit_version" in proc.stdout

    proc = rkllm(hub, home, "rm", "acme/tiny:tiny-rk3588.rkllm")
    assert proc.returncode == 0 and "removed acme/tiny:tiny-rk3588.rkllm" in proc.stdout
    assert json.loads(rkllm(hub, home, "list", "--json").stdout) == []
    proc = rkllm(hub, home, "rm", "acme/tiny")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no cached model" in proc.stderr


def test_info_without_download(hub: FakeHub, tmp_path: Path) -> None:
    proc = rkllm(hub, tmp_path / "hf", "info", "acme/quant:q-rk3588-w4a16-1.2.1.rkllm", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["path"] is None
    facts = info["inspect"]["facts"]
    assert facts["dtype"] == {"value": "w4a16", "source": "filename", "detail": "w4a16"}
    assert [f["file"] for f in info["hub"]["model_files"]] == [
        "q-rk3588-w4a16-1.2.1.rkllm", "q-rk3588-w8a8-1.2.1.rkllm"]
    assert not any("/resolve/" in p for p in hub.paths_requested())


def test_pull_ambiguous_without_terminal_lists_candidates(hub: FakeHub, tmp_path: Path) -> None:
    proc = rkllm(hub, tmp_path / "hf", "pull", "acme/quant", "--platform", "rk3588",
                 "--runtime", "1.2.1")
    assert proc.returncode == 1
    for name in ("q-rk3588-w8a8-1.2.1.rkllm", "q-rk3588-w4a16-1.2.1.rkllm"):
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = rkllm(hub, tmp_path / "hf", "pull", "acme/quant", "q-rk3588-w8a8-1.2.1.rkllm", "-q")
    assert proc.returncode == 0 and "checksum verified" in proc.stdout


def test_errors_are_one_line(hub: FakeHub, tmp_path: Path) -> None:
    for args, text in ((("pull", "acme/missing"), "repository acme/missing not found"),
                       (("pull", "acme/tiny", "--revision", "nope"), "revision 'nope' not found"),
                       (("pull", "acme/tiny", "nope.rkllm"), "nope.rkllm not found"),
                       (("info", "./nope.rkllm"), "no such model file")):
        proc = rkllm(hub, tmp_path / "hf", *args)
        assert proc.returncode == 1, args
        assert text in proc.stderr and proc.stderr.startswith("rkllm: error:")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = rkllm(hub, tmp_path / "hf", "--debug", "pull", "acme/missing")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_offline(hub: FakeHub, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    assert rkllm(hub, home, "pull", "acme/tiny", "-q").returncode == 0
    before = len(hub.requests)
    proc = rkllm(hub, home, "info", "acme/tiny", "--json", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["path"] and "HF_HUB_OFFLINE" in info["hub"]["error"]
    proc = rkllm(hub, home, "pull", "acme/quant", HF_HUB_OFFLINE="1")
    assert proc.returncode == 1 and "HF_HUB_OFFLINE" in proc.stderr
    assert len(hub.requests) == before


def test_clean(hub: FakeHub, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    assert rkllm(hub, home, "pull", "acme/tiny", "-q").returncode == 0
    hub.add_commit("acme/tiny", {"tiny-rk3588.rkllm": sim_model_bytes(model_name="v2")})
    assert rkllm(hub, home, "pull", "acme/tiny", "-q").returncode == 0
    partial = next((home / "hub").glob("models--acme--tiny/blobs")) / "deadbeef.incomplete"
    partial.write_bytes(b"\0" * 10)
    proc = rkllm(hub, home, "clean", "--dry-run", "--json")
    dry = json.loads(proc.stdout)
    assert dry["dry_run"] and len(dry["unused_revisions"]) == 1 and partial.exists()
    proc = rkllm(hub, home, "clean")
    assert proc.returncode == 0 and "removed unused revision acme/tiny@" in proc.stdout
    assert not partial.exists()
    assert len(json.loads(rkllm(hub, home, "list", "--json").stdout)) == 1
    assert "nothing to clean" in rkllm(hub, home, "clean").stdout


def test_info_says_which_context_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    from rkllm.cli import main
    from rkllm.core import DEFAULT_CONTEXT_CAP

    assert main(["info", "demo"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("context used"))
    # the demo model file allows 16384: the default is the cap, and the line says why
    assert f"{DEFAULT_CONTEXT_CAP} tokens" in line and "16384" in line
