"""rkllm.modelfile: what a model file says about itself, and the compatibility rule."""

from __future__ import annotations

import builtins
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fakehub import sim_model_bytes  # noqa: E402

import rkllm.modelfile as ins  # noqa: E402
from rkllm.modelfile import check_compatibility, inspect_model
from rkllm.releases import known_family  # noqa: E402


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_simulated_model_facts_come_from_the_file(tmp_path: Path) -> None:
    p = write(tmp_path / "x.rkllm", sim_model_bytes(target_platform="RK3576",
                                                    toolkit_version="1.2.3", dtype="w4a16_g128",
                                                    max_context_len=8192))
    info = inspect_model(p)
    assert info.format == "rkllm-sim"
    assert info.problems == []
    assert info.platform == "rk3576"
    assert info.toolkit_version == "1.2.3"
    assert info.value("dtype") == "w4a16_g128"
    assert info.value("max_context_len") == 8192
    assert info.value("chat_template")["prompt_prefix"] == "<|im_start|>user\n"
    assert {info.facts[k].source for k in ("platform", "toolkit_version", "dtype")} == {"file"}


def test_simulated_model_damage_is_reported(tmp_path: Path) -> None:
    good = sim_model_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    info = inspect_model(write(tmp_path / "crc.rkllm", bytes(flipped)))
    assert any("CRC" in p for p in info.problems)
    info = inspect_model(write(tmp_path / "short.rkllm", good[:-10]))
    assert any("truncated" in p for p in info.problems)


def test_demo_model_when_available() -> None:
    sim = pytest.importorskip("rkllm.sim")
    path = sim.demo_model_path()
    if not os.path.exists(path):
        pytest.skip("demo model not built")
    info = inspect_model(path)
    assert info.format == "rkllm-sim" and info.problems == []
    assert info.toolkit_version and info.platform


def test_name_conventions_with_sources(tmp_path: Path) -> None:
    name = "Qwen2.5-3B-Instruct-rk3588-w8a8-opt-1-hybrid-ratio-0.5.rkllm"
    p = write(tmp_path / name, os.urandom(HEAD := ins.HEAD_BYTES + 10))
    info = inspect_model(p, repo="someone/Qwen2.5-3B-Instruct-RK3588-1.1.4")
    assert info.format == "rkllm"
    assert info.facts["platform"].value == "rk3588"
    assert info.facts["platform"].source == "filename"
    assert info.facts["dtype"].value == "w8a8"
    assert info.facts["optimization_level"].value == 1
    assert info.facts["hybrid_ratio"].value == 0.5
    # "2.5-3B" and "ratio-0.5" are not releases; the repo name carries the toolkit release
    assert info.facts["toolkit_version"].value == "1.1.4"
    assert info.facts["toolkit_version"].source == "repo"
    assert info.size == HEAD


@pytest.mark.parametrize("name,platform,release", [
    ("deepseek-r1-1.5B-rkllm1.1.4.rkllm", None, "1.1.4"),
    ("gemma-3-4b-it-rk3588-w8a8-opt-1-hybrid-ratio-0.0_rk3588-1.2.0.rkllm", "rk3588", "1.2.0"),
    ("Llama-3.2-1B-Instruct_W8A8_RK3576.rkllm", "rk3576", None),
    ("model-RK3588S-v1.2.1.rkllm", "rk3588", "1.2.1"),
    ("qwen-rv1126b-w4a16_g64.rkllm", "rv1126b", None),
])
def test_name_patterns(name: str, platform: str | None, release: str | None) -> None:
    facts = ins.facts_from_name(name, "filename")
    assert (facts["platform"].value if "platform" in facts else None) == platform
    assert (facts["toolkit_version"].value if "toolkit_version" in facts else None) == release


def test_real_file_strings_near_the_end(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024)
    tail = (b"\x00\x01{\"target_platform\": \"RK3576\", \"max_context_len\": 4096, "
            b"\"dtype\": \"w8a8\"}\x00rkllm-toolkit version: 1.2.1\x00<|im_start|>\x00")
    p = write(tmp_path / "model-rk3588.rkllm", body + tail)
    info = inspect_model(p)
    assert info.facts["toolkit_version"].value == "1.2.1"
    assert info.facts["toolkit_version"].source == "file"
    assert "tail offset" in info.facts["toolkit_version"].detail
    assert info.facts["platform"] == ins.Fact("rk3576", "file", info.facts["platform"].detail)
    assert info.value("max_context_len") == 4096
    assert info.value("chat_template").startswith("chatml")
    # the name says rk3588, the file rk3576: the file wins and the conflict is reported
    assert any("platform" in p and "rk3588" in p for p in info.problems)


def test_reads_only_head_and_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.rkllm"
    with open(p, "wb") as f:  # a sparse 4 GiB file with its metadata at the very end
        f.seek(4 << 30)
        f.write(b"rkllm version 1.2.3 rk3588")
    read_total = 0
    real_open = builtins.open

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            nonlocal read_total
            data: bytes = self.f.read(n)
            read_total += len(data)
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(ins, "open", lambda *a, **k: Counting(real_open(*a, **k)),
                        raising=False)
    info = inspect_model(p)
    assert info.toolkit_version == "1.2.3" and info.platform == "rk3588"
    assert read_total <= ins.HEAD_BYTES + ins.TAIL_BYTES


def test_not_a_model(tmp_path: Path) -> None:
    lfs = write(tmp_path / "a.rkllm", b"version https://git-lfs.github.com/spec/v1\n"
                                      b"oid sha256:abc\nsize 123\n")
    info = inspect_model(lfs)
    assert info.format == "lfs-pointer" and "git lfs" in info.problems[0]
    assert check_compatibility(info, "1.2.1", "rk3588")[0].refuse
    html = write(tmp_path / "b.rkllm", b"\n<!DOCTYPE html><html>...")
    assert inspect_model(html).format == "html"
    from rkllm.errors import ModelNotFoundError
    with pytest.raises(ModelNotFoundError):
        inspect_model(tmp_path / "missing.rkllm")


def test_known_family_of_runtime_and_toolkit_releases() -> None:
    assert known_family("1.1.0") == known_family("v1.1.4") == "1.1.0"
    assert known_family("1.2.0") == "1.2.0"
    assert known_family("1.2.1") == known_family("1.2.3b1") == "1.2.1"
    assert known_family("1.3.0") == "1.3.0"
    assert known_family("1.0.1") is None and known_family("1.4.0") is None
    assert known_family("not a release") is None


@pytest.mark.parametrize("model_tk,model_platform,runtime,board,expect", [
    ("1.2.1", "rk3588", "1.2.1", "rk3588", []),
    ("1.1.4", "rk3588", "1.3.0", "rk3588", []),               # older models load
    ("1.2.1", "rk3576", "1.2.1", "rk3588", ["refuse"]),       # another SoC
    ("1.2.1", "rk3588", "1.2.0", "rk3588", ["refuse"]),       # newer family
    ("1.2.3", "rk3588", "1.2.1", "rk3588", ["warn"]),         # newer, same family
    ("1.0.1", "rk3588", "1.2.1", "rk3588", ["refuse"]),       # before the 1.1.0 format
    ("1.4.0", "rk3588", "1.3.0", "rk3588", ["refuse"]),       # newer than every family
    ("1.2.1", "rk3576", None, None, []),                      # nothing known: no finding
])
def test_compatibility_rule(tmp_path: Path, model_tk: str, model_platform: str,
                            runtime: str | None, board: str | None, expect: list[str]) -> None:
    p = write(tmp_path / "m.rkllm", sim_model_bytes(toolkit_version=model_tk,
                                                    target_platform=model_platform))
    findings = check_compatibility(inspect_model(p), runtime, board)
    assert [f.level for f in findings] == expect
    for f in findings:
        assert "according to its file" in f.message


def test_simulated_vs_real_runtime(tmp_path: Path) -> None:
    sim = inspect_model(write(tmp_path / "s.rkllm", sim_model_bytes()))
    on_real = check_compatibility(sim, "1.2.1", "rk3588", simulator=False)
    assert [f.refuse for f in on_real] == [True]
    assert check_compatibility(sim, "1.2.1", "rk3588", simulator=True) == []
    real = inspect_model(write(tmp_path / "r-rk3588.rkllm", os.urandom(ins.HEAD_BYTES * 2)))
    assert check_compatibility(real, "1.2.1", "rk3588", simulator=True)[0].refuse
