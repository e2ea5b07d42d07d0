"""The token ring's C unit test (tests/c/ring_test.c): producer and consumer threads,
wrap-around, a full ring, big texts and every wake-up, without any runtime.
.ci/sanitize runs the same driver under ThreadSanitizer."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ring_unit(cc_program: str, tmp_path: Path) -> None:
    exe = tmp_path / "ring_test"
    build = subprocess.run(
        [cc_program, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
         f"-I{ROOT / 'csrc' / 'shim'}", f"-I{ROOT / 'include'}",
         str(ROOT / "tests" / "c" / "ring_test.c"), str(ROOT / "csrc" / "shim" / "ring.c"),
         "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe), "1000000"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"
