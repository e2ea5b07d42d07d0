"""Shared fixtures: the simulated runtime of every ABI family, parametrised.

A test that takes ``family`` (or a fixture built on it: ``sim_lib``, ``llm``) runs once per
family of rkllm.releases.FAMILIES (the one table).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _prefer_the_installed_package() -> None:
    """Run from an unpacked sdist's root, ``python -m pytest`` puts that root first on
    sys.path, and its rkllm/ (sources without the compiled module or the simulators) would
    shadow the installed package. A tree built in place (an editable install) is the package."""
    if any((ROOT / "rkllm").glob("_native*.so")):
        return
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != ROOT]


_prefer_the_installed_package()

from rkllm.releases import FAMILIES  # noqa: E402  (after the sys.path decision)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (packaging: build, unpack, install)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: minutes, not seconds; run with --run-slow")
    # A shell without job control starts a background job with SIGINT ignored, and Python
    # then never raises KeyboardInterrupt (nor do the children it starts): the Ctrl-C tests
    # need Python's own handler, here and (reset to the default by exec) in every child.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("RKLLM_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (or RKLLM_RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def quiet_sim(monkeypatch: pytest.MonkeyPatch) -> None:
    """No start-up line from the simulator, no per-token delay unless a test sets one."""
    monkeypatch.setenv("RKLLM_SIM_QUIET", "1")
    for name in ("RKLLM_SIM_TOKEN_US", "RKLLM_SIM_PREFILL_US", "RKLLM_SIM_RAW_TOKENS",
                 "RKLLM_SIM_IGNORE_EOS", "RKLLM_LIBRARY", "RKLLM_ABI", "RKLLM_SIM_TRACE",
                 "RKLLM_SIM_FAULT", "RKLLM_SIM_STALL_MS", "RKLLM_SIM_ABORT_DELAY_MS",
                 "RKLLM_SIM_CALLBACK_THREAD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sim_lib(family: str) -> str:
    from rkllm import sim

    return sim.library_path(family)


@pytest.fixture
def demo_model() -> str:
    from rkllm import sim

    return sim.demo_model_path()


@pytest.fixture
def llm(family: str, demo_model: str, quiet_sim: None) -> Iterator[object]:
    """The demo model on the simulated runtime of ``family``, with room for 4096 tokens."""
    import rkllm

    model = rkllm.LLM(demo_model, runtime=f"sim:{family}", max_context_len=4096)
    try:
        yield model
    finally:
        model.close()


CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


@functools.cache
def built_programs_run(cc: str | None = CC) -> bool:
    """False where programs built by ``cc`` cannot be executed (or there is no ``cc``): in the
    wheel tests under qemu-user (.ci/wheels) ``cc`` is a cross compiler for the emulated arch
    and the host kernel cannot exec its output (no binfmt_misc). A compiler that fails is
    left to fail the tests. Module-level ``skipif`` marks use this; fixtures use ``cc_program``."""
    if cc is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe")
        probe.with_suffix(".c").write_text("int main(void) { return 0; }\n")
        if subprocess.run([cc, "-o", str(probe), str(probe.with_suffix(".c"))],
                          capture_output=True, check=False).returncode != 0:
            return True
        try:
            subprocess.run([str(probe)], check=False, timeout=60)
        except OSError:  # ENOEXEC: built for another architecture than this kernel runs
            return False
    return True


@pytest.fixture(scope="session")
def cc() -> str:
    if not CC:
        pytest.skip("no C compiler")
    return CC


@pytest.fixture(scope="session")
def cc_program(cc: str) -> str:
    """``cc`` for tests that build a C program and run it (skipped where such programs cannot
    run: see built_programs_run)."""
    if not built_programs_run(cc):
        pytest.skip(f"programs built by {cc} cannot run on this machine (a cross compiler?)")
    return cc


@pytest.fixture(scope="session")
def fake_runtime(cc: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Builds tests/c/fake_symbols.c with the given flags (a library that only looks like an
    RKLLM runtime) and returns its path."""
    out_dir = tmp_path_factory.mktemp("fake-runtimes")
    built: dict[tuple[str, ...], str] = {}

    def build(*flags: str) -> str:
        if flags not in built:
            path = out_dir / f"libfake{len(built)}.so"
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(path),
                            str(ROOT / "tests" / "c" / "fake_symbols.c"), *flags], check=True)
            built[flags] = str(path)
        return built[flags]

    return build


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh interpreter (for what must not leak into this process)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """tests/fakehub.py on 127.0.0.1 as the Hugging Face endpoint, with an empty cache."""
    from fakehub import FakeHub

    with FakeHub() as server:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server
