"""rkllm.sim (where the simulated runtimes and the demo model are) and ``rkllm sim``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rkllm import sim


@pytest.mark.parametrize("release, family", [
    ("1.1.0", "1.1.0"), ("1.1.4", "1.1.0"), ("v1.1.2", "1.1.0"), ("1.2.0", "1.2.0"), ("1.2.1", "1.2.1"),
    ("1.2.2", "1.2.1"), ("1.2.3", "1.2.1"), ("1.3.0", "1.3.0"),
])
def test_family_of(release: str, family: str) -> None:
    assert sim.family_of(release) == family


@pytest.mark.parametrize("release", ["1.0.1", "1.2.4", "1.4.0", "", "latest"])
def test_family_of_unknown_release_names_the_supported_ones(release: str) -> None:
    with pytest.raises(ValueError, match=r"supported releases: 1\.1\.0, .*1\.2\.3, 1\.3\.0"):
        sim.family_of(release)


def test_families_oldest_first() -> None:
    assert sim.FAMILIES == ("1.1.0", "1.2.0", "1.2.1", "1.3.0")
    assert sim.DEFAULT_FAMILY == "1.3.0"


def test_paths_are_absolute_files() -> None:
    model = sim.demo_model_path()
    assert os.path.isabs(model) and Path(model).read_bytes()[:8] == b"RKSIMLLM"
    for family in sim.FAMILIES:
        lib = sim.library_path(family)
        assert os.path.isabs(lib) and lib.endswith(f"librkllmrt-sim-{family}.so")
        assert b"rkllm_sim_info" in Path(lib).read_bytes()
    assert sim.library_path("1.2.2") == sim.library_path("1.2.1")
    assert sim.library_path() == sim.library_path("1.3.0")


def test_library_path_when_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sim, "SIM_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="not built"):
        sim.library_path("1.2.1")
    with pytest.raises(FileNotFoundError, match="demo model is missing"):
        sim.demo_model_path()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # from a neutral directory: `-m` puts the cwd first on sys.path, and the source tree must not
    # shadow the installed package (a wheel under test has the compiled module, the tree may not)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          cwd=tempfile.gettempdir())


def test_python_m_rkllm_sim() -> None:
    proc = run("-m", "rkllm.sim", "path", "--abi", "1.2.1")
    assert proc.returncode == 0 and proc.stdout.strip() == sim.library_path("1.2.1")
    proc = run("-m", "rkllm.sim", "model")
    assert proc.stdout.strip() == sim.demo_model_path()
    proc = run("-m", "rkllm.sim", "path", "--abi", "9.9.9")
    assert proc.returncode == 1 and "supported releases" in proc.stderr and not proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "ValueError" not in proc.stderr


def test_rkllm_sim_cli() -> None:
    proc = run("-m", "rkllm.cli", "sim", "path", "--abi", "1.1.4")
    assert proc.returncode == 0 and proc.stdout.strip() == sim.library_path("1.1.0")
    proc = run("-m", "rkllm.cli", "sim", "info")
    assert proc.returncode == 0
    for family in sim.FAMILIES:
        assert sim.library_path(family) in proc.stdout
    assert sim.demo_model_path() in proc.stdout
    proc = run("-m", "rkllm.cli", "sim", "path", "--abi", "2.0.0")
    assert proc.returncode == 1 and "2.0.0" in proc.stderr
