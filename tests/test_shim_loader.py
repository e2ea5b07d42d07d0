"""The loader checks a runtime file before dlopen: a truncated library (SIGBUS inside dlopen
before) and a FIFO (open() blocked for ever before) are refused with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm import sim

# each case runs in a child process: before the fix one died of SIGBUS, the other hung
PROBE = """
import sys
from rkllm import _lowlevel as ll
from rkllm.errors import RuntimeNotFoundError
try:
    ll.open_runtime(sys.argv[1], path_source="runtime=")
except RuntimeNotFoundError as exc:
    print("refused:", exc)
else:
    print("loaded")
"""


def _probe(path: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.mark.parametrize("part", [0.0, 0.5])
def test_truncated_library_is_refused_before_dlopen(tmp_path: Path, part: float) -> None:
    """The first 4 KB, and the first half (the library's size varies by arch and build)."""
    data = Path(sim.library_path("1.3.0")).read_bytes()
    size = max(4096, int(len(data) * part))
    assert len(data) > size
    cut = tmp_path / "librkllmrt.so"
    cut.write_bytes(data[:size])
    out = _probe(cut)
    assert out.startswith("refused:"), out
    assert "truncated" in out and str(cut) in out


def test_whole_copy_still_loads(tmp_path: Path) -> None:
    whole = tmp_path / "librkllmrt.so"
    whole.write_bytes(Path(sim.library_path("1.3.0")).read_bytes())
    assert _probe(whole).startswith("loaded")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "librkllmrt.so"
    os.mkfifo(fifo)
    out = _probe(fifo)
    assert "refused:" in out and "not a regular file (a FIFO)" in out


def test_directory_is_refused(tmp_path: Path) -> None:
    out = _probe(tmp_path)
    assert "not a regular file (a directory)" in out
