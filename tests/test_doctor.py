"""rkllm doctor on fake system trees (tests/data/doctor/*) and on this machine."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fakehub import sim_model_bytes  # noqa: E402

from rkllm import doctor, machine  # noqa: E402

DATA = Path(__file__).parent / "data" / "doctor"


def fake_elf(machine: int, needed: list[str], rodata: bytes) -> bytes:
    """A minimal 64-bit little-endian ELF shared object: a .dynstr, a .dynamic with
    DT_NEEDED entries, and some read-only bytes (where a release string would live)."""
    dynstr = b"\0"
    offsets = []
    for name in needed:
        offsets.append(len(dynstr))
        dynstr += name.encode() + b"\0"
    dynamic = b"".join(struct.pack("<qQ", 1, off) for off in offsets) + struct.pack("<qQ", 0, 0)
    header_size = 64
    dynstr_off = header_size
    dynamic_off = dynstr_off + len(dynstr)
    rodata_off = dynamic_off + len(dynamic)
    shoff = rodata_off + len(rodata)
    shoff += (-shoff) % 8

    def section(stype: int, off: int, size: int, link: int = 0) -> bytes:
        return struct.pack("<IIQQQQIIQQ", 0, stype, 0, 0, off, size, link, 0, 1, 0)

    sections = [section(0, 0, 0), section(3, dynstr_off, len(dynstr)),
                section(6, dynamic_off, len(dynamic), link=1),
                section(1, rodata_off, len(rodata))]
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, shoff, 0, 64, 56, 0, 64,
                                 len(sections), 0)
    body = header + dynstr + dynamic + rodata
    body += b"\0" * (shoff - len(body))
    return body + b"".join(sections)


def tree(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(DATA / name, root)
    return root


def add_runtime(root: Path, release: str, *, machine: int = 183,
                needed: tuple[str, ...] = ("libc.so.6", "libomp.so")) -> Path:
    lib = root / "usr" / "lib" / "librkllmrt.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(fake_elf(machine, list(needed),
                             b"\0RKLLM SDK (version: " + release.encode() + b")\0"))
    return lib


def test_read_runtime_file(tmp_path: Path) -> None:
    lib = add_runtime(tmp_path, "1.2.3", needed=("libomp.so", "libstdc++.so.6"))
    info = machine.read_runtime_file(lib)
    assert (info.release, info.family, info.arch) == ("1.2.3", "1.2.1", "aarch64")
    assert info.needed == ("libomp.so", "libstdc++.so.6")
    assert not info.is_simulator


def test_rk3588_with_old_driver(tmp_path: Path) -> None:
    root = tree(tmp_path, "rk3588-old-driver")
    add_runtime(root, "1.2.1")  # needs libomp.so, which this tree lacks
    report = doctor.run(root, cache=tmp_path / "nocache")
    assert report.failed
    assert report.get("os").data["machine"] == "aarch64"
    board = report.get("board")
    assert board.status == "ok" and "ROCK 5B" in board.summary
    assert board.data["platform"] == "rk3588"
    drv = report.get("npu_driver")
    assert drv.status == "fail" and "0.9.6" in drv.summary and "0.9.8" in drv.summary
    assert drv.data["source"] == "/sys/kernel/debug/rknpu/version"
    assert drv.fix and "kernel" in drv.fix
    rt = report.get("runtime")
    assert rt.status == "ok" and rt.data["release"] == "1.2.1" and rt.data["family"] == "1.2.1"
    libs = report.get("libraries")
    assert libs.status == "fail" and libs.data["missing"] == ["libomp.so"]
    assert libs.fix and "libomp" in libs.fix
    cpu = report.get("cpu")
    assert cpu.status == "ok" and "asimddp" in cpu.data["fp16_dotprod"]
    files = report.get("open_files")
    assert files.status == "warn" and files.data["soft"] == 1024
    assert files.fix and "ulimit -n" in files.fix
    assert report.get("memory").data["total"] == 8 * 1024 ** 3
    with pytest.raises(KeyError):
        report.get("simulator")  # it is a board: no pointer to the simulator


def test_rk3576_with_current_driver_and_models(tmp_path: Path) -> None:
    root = tree(tmp_path, "rk3576")
    lib = add_runtime(root, "1.2.3")
    (lib.parent / "libomp.so").write_bytes(b"")
    cache = tmp_path / "hub"
    for repo, platform in (("a/m-rk3576", "rk3576"), ("a/m-rk3588", "rk3588")):
        snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (snap / "m.rkllm").write_bytes(sim_model_bytes(target_platform=platform,
                                                       toolkit_version="1.2.1"))
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    report = doctor.run(root, cache=cache)
    assert report.get("board").data["platform"] == "rk3576"
    drv = report.get("npu_driver")
    assert drv.status == "ok" and drv.data["version"] == "0.9.8"
    assert drv.data["source"] == "/proc/rknpu/version"
    assert report.get("libraries").status == "ok"
    cpu = report.get("cpu")
    assert cpu.status == "ok" and cpu.data["fp16_dotprod"] == []
    assert report.get("open_files").status == "ok"
    models = report.get("models")
    assert models.status == "warn" and "a/m-rk3588:m.rkllm" in models.summary
    rows = {r["ref"]: r for r in models.data["models"]}
    assert rows["a/m-rk3576:m.rkllm"]["findings"] == []
    assert rows["a/m-rk3588:m.rkllm"]["findings"][0]["level"] == "refuse"
    assert not report.failed


def test_host_without_npu(tmp_path: Path) -> None:
    root = tree(tmp_path, "x86-host")
    report = doctor.run(root, cache=tmp_path / "nocache")
    assert not report.failed
    assert report.get("os").status == "info" and report.get("os").data["machine"] == "x86_64"
    assert "not a Rockchip board" in report.get("board").summary
    assert report.get("npu_driver").status == "info"
    assert report.get("runtime").status == "info"
    sim = report.get("simulator")
    assert sim.fix and "rkllm run demo" in sim.fix


def test_mainline_rocket_driver(tmp_path: Path) -> None:
    root = tree(tmp_path, "rk3588-old-driver")
    shutil.rmtree(root / "sys" / "kernel" / "debug")
    (root / "sys" / "module" / "rocket").mkdir(parents=True)
    drv = doctor.run(root, cache=tmp_path / "nocache").get("npu_driver")
    assert drv.status == "fail" and "rocket" in drv.summary and drv.data["driver"] == "rocket"


def test_no_driver_and_wrong_runtime_arch(tmp_path: Path) -> None:
    root = tree(tmp_path, "rk3588-old-driver")
    shutil.rmtree(root / "sys")
    add_runtime(root, "1.2.1", machine=62)  # an x86_64 build on an aarch64 board
    report = doctor.run(root, cache=tmp_path / "nocache")
    assert report.get("npu_driver").status == "fail"
    rt = report.get("runtime")
    assert rt.status == "fail" and "x86_64" in rt.summary


def test_missing_runtime_on_a_board(tmp_path: Path) -> None:
    root = tree(tmp_path, "rk3576")
    rt = doctor.run(root, cache=tmp_path / "nocache").get("runtime")
    assert rt.status == "fail" and rt.fix and "rkllm runtime pull" in rt.fix


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, NO_COLOR="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "rkllm.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_cli_json_and_exit_codes(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf")}
    board = tree(tmp_path, "rk3588-old-driver")
    proc = run_cli("doctor", "--json", "--root", str(board), env=env)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["npu_driver"]["status"] == "fail"
    host = tree(tmp_path, "x86-host")
    proc = run_cli("doctor", "--root", str(host), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "rkllm run demo" in proc.stdout
    assert "\033[" not in proc.stdout  # no colour when not a terminal
    assert run_cli("doctor", "--help").returncode == 0


def test_this_machine_does_not_crash(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--json", env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode in (0, 1), proc.stderr
    names = [c["name"] for c in json.loads(proc.stdout)["checks"]]
    assert names[:4] == ["os", "board", "npu_driver", "runtime"]
