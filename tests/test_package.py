"""The package surface: lazy top-level names and LLM's convenience methods over chat/aio."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import rkllm
from rkllm.chat import ChatSession
from rkllm.errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent


def test_import_stays_light() -> None:
    code = ("import sys, rkllm; heavy = [m for m in ('asyncio', 'huggingface_hub', 'numpy', "
            "'rkllm.cli', 'rkllm.chat', 'rkllm.models') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve() -> None:
    assert rkllm.ChatSession is ChatSession
    assert callable(rkllm.inspect_model) and callable(rkllm.create_chat_completion)
    assert rkllm.sim.demo_model_path().endswith("demo.rkllm")
    try:
        rkllm.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_agenerate_matches_generate(llm: rkllm.LLM) -> None:
    expected = list(llm.generate("Tell me about rivers", max_new_tokens=20))

    async def collect() -> list[str]:
        return [p async for p in llm.agenerate("Tell me about rivers", max_new_tokens=20)]

    assert asyncio.run(collect()) == expected
    result = asyncio.run(llm.acomplete("Tell me about rivers", max_new_tokens=20))
    assert result.text == "".join(expected)


def test_chat_and_completion_methods(llm: rkllm.LLM) -> None:
    session = llm.chat()
    assert isinstance(session, ChatSession)
    answer = session.send("Hello there", stream=False, max_new_tokens=8)
    assert session.history[-1] == {"role": "assistant", "content": answer.text}
    session.close()
    out = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=6)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["message"]["content"]


def test_model_for_a_newer_family_is_refused_before_init(tmp_path: Path, quiet_sim: None) -> None:
    """A model whose toolkit is newer than the runtime's family is refused by rkllm-cffi
    before rkllm_init (the simulator would refuse it too, later and less helpfully)."""
    model = tmp_path / "new.rkllm"
    subprocess.run([sys.executable, str(ROOT / "csrc/sim/make_model.py"), "-o", str(model),
                    "--toolkit-version", "1.3.0"], check=True, capture_output=True)
    with pytest.raises(ModelLoadError) as err:
        rkllm.LLM(str(model), runtime="sim:1.2.1")
    assert "1.3.0" in str(err.value) and "check_model=False" in str(err.value)
    assert err.value.runtime_message is None  # refused before any runtime call
    with pytest.raises(ModelLoadError) as err:  # the simulator's own refusal, with its message
        rkllm.LLM(str(model), runtime="sim:1.2.1", check_model=False)
    assert err.value.runtime_message
    with rkllm.LLM(str(model), runtime="sim:1.3.0") as llm:  # right family: loads and runs
        assert llm.complete("Hi", max_new_tokens=4).text


def test_runtime_by_pinned_release(monkeypatch: pytest.MonkeyPatch, quiet_sim: None) -> None:
    """runtime="1.2.3" (or RKLLM_LIBRARY=1.2.3) loads the pinned release from the runtime
    cache; here the cache lookup hands back the simulator of that family."""
    from rkllm import runtimes, sim

    asked: list[str] = []

    def fake_library_path(version: str, arch: str | None = None) -> Path:
        asked.append(version)
        return Path(sim.library_path(version))

    monkeypatch.setattr(runtimes, "library_path", fake_library_path)
    assert rkllm.load_runtime("1.2.3").family == "1.2.1"
    monkeypatch.setenv("RKLLM_LIBRARY", "1.1.4")
    assert rkllm.load_runtime().family == "1.1.0"
    assert asked == ["1.2.3", "1.1.4"]
    monkeypatch.undo()
    with pytest.raises(rkllm.UnsupportedRuntimeError, match="not pinned"):
        rkllm.load_runtime("9.9.9")


# ---------------------------------------------------------------- packaging

def test_simulated_runtimes_have_a_soname_and_no_runpath() -> None:
    """Each simulator is named by its own file name (never the vendor's librkllmrt.so, which a
    later dlopen by name would then resolve to it) and carries no path of the machine that
    built it."""
    from rkllm import machine, releases, sim

    for family in releases.FAMILIES:
        elf = machine.elf_info(Path(sim.library_path(family)).read_bytes())
        assert elf.soname == f"librkllmrt-sim-{family}.so", family
        assert elf.runpath == (), (family, elf.runpath)
        # glibc only (thread-local storage brings in the dynamic loader, ld-linux-<arch>)
        libs = {n for n in elf.needed if not n.startswith("ld-linux")}
        assert libs <= {"libc.so.6", "libm.so.6", "libpthread.so.0"}, elf.needed


needs_tree = pytest.mark.skipif(not (ROOT / "setup.py").is_file(), reason="needs the source tree")


@pytest.mark.slow
@needs_tree
def test_sdist_builds_a_wheel_and_its_tests_pass_from_its_root(tmp_path: Path) -> None:
    """The sdist holds the licence and everything a build needs; a wheel built from it holds
    the licence; the sdist's tests pass from its root against that wheel (the source tree does
    not shadow the installed package); no build warns about the project's own configuration."""
    import tarfile
    import zipfile

    def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900,
                              env={**__import__("os").environ, **(env or {})})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    out = run(sys.executable, "setup.py", "sdist", "-d", str(tmp_path / "dist"))
    assert "no files found matching" not in out, out
    assert "Warning" not in out, out  # no deprecated or experimental configuration
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "src", filter="data")
    top = names[0].split("/")[0]
    assert f"{top}/LICENSE" in names and f"{top}/CHANGELOG.md" in names
    assert not [n for n in names if n.endswith((".so", ".o"))]
    src = tmp_path / "src" / top

    out = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "-w", str(tmp_path / "wheel"), str(src))
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        listed = whl.namelist()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in listed), listed
        assert "License-Expression: Apache-2.0" in whl.read(
            next(n for n in listed if n.endswith(".dist-info/METADATA"))).decode()
        whl.extractall(tmp_path / "installed")

    # the wheel's files first on the path stand for an installed package; pytest starts in the
    # sdist's root, as a user who unpacked it would
    run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_sim.py",
        "tests/test_modelfile.py", "tests/test_architecture.py", cwd=src,
        env={"PYTHONPATH": str(tmp_path / "installed")})
