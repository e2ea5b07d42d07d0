"""The shim's loader, release detection and handle lifetime (rkllm._lowlevel)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from rkllm import _lowlevel as ll
from rkllm.errors import (
    ClosedError,
    ModelLoadError,
    RuntimeNotFoundError,
    UnsupportedRuntimeError,
)
from rkllm.request import RunRequest


class Owner:
    """The owner of a generation session, as rkllm.stream's run state is."""

    ended = False


SIM_RELEASE = {"1.1.0": "1.1.4", "1.2.0": "1.2.0", "1.2.1": "1.2.3", "1.3.0": "1.3.0"}


def test_interface_version_is_checked() -> None:
    assert ll.lib.rkshim_interface_version() == ll.INTERFACE_VERSION


def test_sim_detected_by_version_string(family: str, sim_lib: str) -> None:
    rt = ll.open_runtime(sim_lib)
    assert rt.family == family
    assert rt.release == SIM_RELEASE[family]
    assert rt.detected_by == "version string"
    assert rt.is_simulator and "simulat" in (rt.simulator_info or "")
    assert rt.path == os.path.realpath(sim_lib)
    assert ll.open_runtime(sim_lib) is rt  # loaded once


def test_default_params_come_from_the_runtime(family: str, sim_lib: str) -> None:
    d = ll.open_runtime(sim_lib).default_params()
    assert d["max_context_len"] > 0 and d["top_k"] > 0
    if family >= "1.2.1":
        assert d["n_batch"] >= 1


def test_missing_file_is_named() -> None:
    with pytest.raises(RuntimeNotFoundError) as err:
        ll.open_runtime("/nonexistent/librkllmrt.so")
    assert "/nonexistent/librkllmrt.so" in str(err.value) and "no such file" in str(err.value)


def test_non_elf_file(tmp_path: Path) -> None:
    path = tmp_path / "librkllmrt.so"
    path.write_text("not a library\n")
    with pytest.raises(RuntimeNotFoundError, match="not an ELF shared library"):
        ll.open_runtime(str(path))


def _elf_header(machine: int, elf_class: int = 2, elf_type: int = 3) -> bytes:
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", elf_type, machine, 1) + bytes(64 - 24)


def _host_elf() -> tuple[int, int]:
    """(EI_CLASS, e_machine) of this machine: the compiled shim is built for it. The tests
    also run on aarch64 and armhf (wheel tests under qemu-user, ARM CI runners)."""
    import rkllm._native as native_module

    head = Path(native_module.__file__).read_bytes()[:20]
    return head[4], struct.unpack_from("<H", head, 18)[0]


HOST_CLASS, HOST_MACHINE = _host_elf()
HOST_ARCH = {62: "x86_64", 183: "aarch64", 40: "armhf"}.get(HOST_MACHINE, "unknown")
ARCHES = [(62, 2, "x86_64"), (183, 2, "aarch64"), (40, 1, "armv7")]


@pytest.mark.parametrize("machine,elf_class,name", [a for a in ARCHES if a[0] != HOST_MACHINE])
def test_wrong_architecture(tmp_path: Path, machine: int, elf_class: int, name: str) -> None:
    path = tmp_path / "librkllmrt.so"
    path.write_bytes(_elf_header(machine, elf_class) + bytes(1024))
    with pytest.raises(RuntimeNotFoundError) as err:
        ll.open_runtime(str(path))
    assert f"built for {name}" in str(err.value) and f"this is {HOST_ARCH}" in str(err.value)


def test_elf_executable_is_not_a_library(tmp_path: Path) -> None:
    path = tmp_path / "librkllmrt.so"
    path.write_bytes(_elf_header(HOST_MACHINE, HOST_CLASS, elf_type=2) + bytes(1024))
    with pytest.raises(RuntimeNotFoundError, match="not a shared library"):
        ll.open_runtime(str(path))


def test_random_shared_library_is_not_a_runtime() -> None:
    import rkllm._native as native_module  # any shared library will do: the shim itself

    with pytest.raises(RuntimeNotFoundError, match="does not export rkllm_init"):
        ll.open_runtime(native_module.__file__)


def test_search_names_every_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RKLLM_LIBRARY", raising=False)
    if any(os.path.exists(p) for p in ("/usr/lib/librkllmrt.so", "/usr/local/lib/librkllmrt.so")):
        pytest.skip("a runtime is installed on this machine")
    bundled = f"libs/{HOST_ARCH}/librkllmrt.so"
    if os.path.exists(os.path.join(ll.PACKAGE_DIR, bundled)):
        pytest.skip("this wheel bundles a runtime")
    with pytest.raises(RuntimeNotFoundError) as err:
        ll.open_runtime(None)
    text = str(err.value)
    for place in (bundled, "dynamic loader", "/usr/lib/librkllmrt.so",
                  "/usr/local/lib/librkllmrt.so"):
        assert place in text


def test_rkllm_library_variable(monkeypatch: pytest.MonkeyPatch, sim_lib: str) -> None:
    monkeypatch.setenv("RKLLM_LIBRARY", sim_lib)
    assert ll.open_runtime(None).path == os.path.realpath(sim_lib)
    monkeypatch.setenv("RKLLM_LIBRARY", "/nope/librkllmrt.so")
    with pytest.raises(RuntimeNotFoundError, match=r"/nope/librkllmrt.so \(RKLLM_LIBRARY\)"):
        ll.open_runtime(None)


# ---- release detection ---------------------------------------------------------------------

def test_abi_override_of_the_wrong_family_is_refused(family: str, sim_lib: str) -> None:
    other = "1.1.0" if family != "1.1.0" else "1.3.0"
    with pytest.raises(UnsupportedRuntimeError) as err:
        ll.open_runtime(sim_lib, abi=other)
    assert f"RKLLM_ABI={other}" in str(err.value) and SIM_RELEASE[family] in str(err.value)


def test_abi_override_within_the_family(sim_lib: str, family: str) -> None:
    release = {"1.1.0": "1.1.2", "1.2.0": "1.2.0", "1.2.1": "1.2.2", "1.3.0": "1.3.0"}[family]
    rt = ll.open_runtime(sim_lib, abi=release)
    assert rt.family == family and rt.detected_by.startswith(f"RKLLM_ABI={release}")


def test_unknown_abi_override(sim_lib: str) -> None:
    with pytest.raises(UnsupportedRuntimeError, match="RKLLM_ABI=9.9.9 is not a supported"):
        ll.open_runtime(sim_lib, abi="9.9.9")


def test_detection_by_symbols_without_version_string(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    assert ll.open_runtime(fake_runtime("-DLEVEL=110")).family == "1.1.0"
    rt = ll.open_runtime(fake_runtime("-DLEVEL=120"))
    assert rt.family == "1.2.0" and rt.release is None and "symbols" in rt.detected_by


def test_symbols_cannot_tell_121_from_130(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    path = fake_runtime("-DLEVEL=121")
    with pytest.raises(UnsupportedRuntimeError, match="cannot be told apart"):
        ll.open_runtime(path)
    assert ll.open_runtime(path, abi="1.3.0").family == "1.3.0"
    assert ll.open_runtime(path, abi="1.2.3").family == "1.2.1"
    with pytest.raises(UnsupportedRuntimeError, match="rkllm_set_function_tools"):
        ll.open_runtime(path, abi="1.2.0")


def test_unsupported_release_is_refused(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    path = fake_runtime("-DLEVEL=121", '-DVERSION_TEXT="RKLLM SDK (version: 1.4.0)"')
    with pytest.raises(UnsupportedRuntimeError) as err:
        ll.open_runtime(path)
    assert "1.4.0 is not supported" in str(err.value)
    assert "1.1.0-1.1.4, 1.2.0, 1.2.1-1.2.3, 1.3.0" in str(err.value)


def test_version_string_contradicted_by_symbols(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    path = fake_runtime("-DLEVEL=120", '-DVERSION_TEXT="RKLLM SDK (version: 1.2.2)"')
    with pytest.raises(UnsupportedRuntimeError, match="says it is release 1.2.2 but"):
        ll.open_runtime(path)


def test_older_than_110_is_refused(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    path = fake_runtime("-DLEVEL=100", '-DVERSION_TEXT="RKLLM SDK (version: 1.0.1)"')
    with pytest.raises(UnsupportedRuntimeError, match="1.0.1 is not supported"):
        ll.open_runtime(path)


def test_library_without_init(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeNotFoundError, match="rkllm_init"):
        ll.open_runtime(fake_runtime("-DLEVEL=121", "-DNO_INIT"))


# ---- model lifetime ------------------------------------------------------------------------

def _params(sim_lib: str) -> dict[str, object]:
    p = ll.open_runtime(sim_lib).default_params()
    p["max_context_len"] = 4096
    return p


def test_close_is_idempotent_and_final(sim_lib: str, demo_model: str, quiet_sim: None) -> None:
    m = ll.Model(ll.open_runtime(sim_lib), demo_model, _params(sim_lib))
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(ClosedError):
        m.start(RunRequest(ll.INPUT_PROMPT, ll.MODE_GENERATE, prompt="hi"), Owner())
    with pytest.raises(ClosedError):
        m.release_prompt_cache()


def test_init_failure_carries_the_runtime_message(sim_lib: str, tmp_path: Path,
                                                  quiet_sim: None) -> None:
    bad = tmp_path / "corrupt.rkllm"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelLoadError) as err:
        ll.Model(ll.open_runtime(sim_lib), str(bad), _params(sim_lib))
    assert err.value.code is not None and err.value.code != 0
    assert err.value.runtime_message  # the simulator's own line about the failure


def test_generation_end_to_end(sim_lib: str, demo_model: str, quiet_sim: None) -> None:
    m = ll.Model(ll.open_runtime(sim_lib), demo_model, _params(sim_lib))
    owner = Owner()
    m.start(RunRequest(ll.INPUT_PROMPT, ll.MODE_GENERATE, prompt="Tell me about the sea.",
                       max_new_tokens=12), owner)
    pieces, n, done = [], 0, False
    while not done:
        text, ends, done = m.pull(1000)
        n += len(ends)
        pieces.append(text)
    outcome = m.end(owner)
    assert outcome is not None and outcome["status"] == ll.RUN_LENGTH
    assert outcome["n_tokens"] == n == 12
    assert "".join(pieces)
    assert m.end(owner) is None  # already ended
    m.close()


def test_init_success_without_a_handle_is_an_error(cc: str, tmp_path: Path,
                                                   demo_model: str) -> None:
    import subprocess

    from conftest import ROOT

    lib = tmp_path / "libnullhandle.so"
    subprocess.run([cc, "-shared", "-fPIC", "-I", str(ROOT / "include" / "1.2.0"), "-o",
                    str(lib), str(ROOT / "tests" / "c" / "fake_null_handle.c")], check=True)
    rt = ll.open_runtime(str(lib))
    assert rt.family == "1.2.0" and not rt.is_simulator
    with pytest.raises(ModelLoadError, match="returned 0 but no model handle"):
        ll.Model(rt, demo_model, rt.default_params())
