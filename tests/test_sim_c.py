"""The simulated runtime seen from C: build it from csrc/sim for every family, compile the
C clients in tests/c against include/<family>/rkllm.h, run them and check what they report.

Independent of the package build: the libraries are compiled into a temporary directory
with the same flags setup.py uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import built_programs_run

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("1.1.0", "1.2.0", "1.2.1", "1.3.0")
NEWEST = {"1.1.0": "1.1.4", "1.2.0": "1.2.0", "1.2.1": "1.2.3", "1.3.0": "1.3.0"}
MAKE_MODEL = ROOT / "csrc" / "sim" / "make_model.py"
DEMO = ROOT / "rkllm" / "_sim" / "demo.rkllm"
CC = shutil.which("gcc") or shutil.which("cc")



pytestmark = [
    pytest.mark.skipif(CC is None, reason="no C compiler (gcc) on PATH"),
    pytest.mark.skipif(CC is not None and not built_programs_run(CC),
                       reason=f"programs built by {CC} cannot run on this machine "
                              "(a cross compiler under qemu-user)"),
]

# checks every family's client must report (more are added per family)
COMMON_CHECKS = {
    "dlopen", "sim_info", "exported_functions", "internals_hidden", "default_param",
    "init_missing_file", "init_empty_file", "init_truncated_file", "init_corrupt_file",
    "init_other_format", "init_incompatible_model", "init_lora_as_model", "init_null_arguments",
    "init_fifo", "init_big_other_file",
    "run_blocking", "blocking_callbacks_on_caller_thread",
    "async_callbacks_on_runtime_thread", "deterministic_same_handle",
    "deterministic_new_handle", "prompt_changes_text", "max_new_tokens_5", "max_new_tokens_minus_one",
    "top_k_changes_text", "temperature_changes_text", "top_p_changes_text",
    "repeat_penalty_changes_text", "frequency_penalty_changes_text",
    "presence_penalty_changes_text", "mirostat_changes_text", "special_tokens_shown",
    "special_tokens_skipped", "waiting_state", "normal_texts_complete", "raw_token_bytes",
    "ignore_eos_long_output", "prompt_longer_than_context", "bad_handles", "bad_inputs",
    "run_async_returns", "run_while_running", "abort_within_a_token", "abort_during_prefill",
    "param_is_async",
    "destroy_while_running", "two_handles", "calls_from_callback", "hidden_layer_mode",
    "token_input", "embed_input", "multimodal_input", "multimodal_needs_placeholder",
    "prompt_cache_saved", "prompt_cache_same_text", "prompt_cache_bad_files", "load_lora",
    "lora_changes_text", "lora_failures",
}
FAMILY_CHECKS = {
    "1.1.0": set(),
    "1.2.0": {"history_changes_answer", "clear_kv_cache_forgets", "chat_template_changes_text",
              "logits_mode"},
    "1.2.1": {"history_changes_answer", "clear_kv_cache_forgets", "chat_template_changes_text",
              "logits_mode", "init_n_batch_zero", "perf_stats", "callback_return_stops",
              "pause_keeps_kv_cache", "clear_kv_cache_range", "kv_cache_grows_with_history",
              "system_prompt_kept", "prompt_cache_reused", "tool_call_generated",
              "tool_role_input", "cross_attn_required", "cross_attn_changes_text",
              "enable_thinking"},
}
FAMILY_CHECKS["1.3.0"] = FAMILY_CHECKS["1.2.1"] | {
    "per_run_sampling_and_max_new_tokens", "per_run_sampling_checked", "ignore_eos_token",
    "result_userdata_fallback", "tokenizer_callback", "embed_callback",
    "tokenizer_callback_failure", "multimodal_video"}


# cross targets: compiler, qemu user emulator, sysroot for the emulator
CROSS = {
    "aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64-static", "/usr/aarch64-linux-gnu"),
    "armhf": ("arm-linux-gnueabihf-gcc", "qemu-arm-static", "/usr/arm-linux-gnueabihf"),
}


def compile_sim(family: str, out: Path, cc: str | None = CC) -> Path:
    """The simulated runtime with setup.py's flags (plus -Wall -Werror)."""
    assert cc
    lib = out / f"librkllmrt-sim-{family}.so"
    sources = sorted(str(p) for p in (ROOT / "csrc" / "sim").glob("*.c"))
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-std=gnu11", "-fvisibility=hidden", "-pthread",
                    "-Wall", "-Werror", f'-DRKLLM_SIM_FAMILY="{family}"',
                    f"-I{ROOT / 'include' / family}", f"-I{ROOT / 'csrc' / 'sim'}", *sources,
                    "-o", str(lib), "-lm"], check=True, capture_output=True, text=True)
    return lib


def compile_client(source: str, family: str, lib: Path, out: Path, cc: str | None = CC) -> Path:
    assert cc
    exe = out / f"{Path(source).stem}-{family}"
    subprocess.run([cc, "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
                    f"-I{ROOT / 'include' / family}", str(ROOT / "tests" / "c" / source),
                    "-o", str(exe), str(lib), f"-Wl,-rpath,{lib.parent}", "-lpthread", "-ldl", "-lm"],
                   check=True, capture_output=True, text=True)
    return exe


def make_model(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(MAKE_MODEL), "-o", str(out), *args], check=True)
    return out


@pytest.fixture(scope="session")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sims")
    return {family: compile_sim(family, out) for family in FAMILIES}


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The damaged and other model files the C client expects in SIM_DIR (a newer.rkllm is
    added per family)."""
    d = tmp_path_factory.mktemp("models")
    data = DEMO.read_bytes()
    (d / "empty.rkllm").write_bytes(b"")
    (d / "truncated.rkllm").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 3] ^= 0x5A
    (d / "corrupt.rkllm").write_bytes(bytes(corrupt))
    (d / "other.bin").write_bytes(b"\x7fELF" + bytes(200))
    make_model(d / "lora.rkllm", "--lora")
    make_model(d / "lora_other.rkllm", "--lora", "--base-model", "another-model")
    make_model(d / "newer-than-1.1.0.rkllm", "--toolkit-version", "1.2.0")
    make_model(d / "newer-than-1.2.0.rkllm", "--toolkit-version", "1.2.2")
    make_model(d / "newer-than-1.2.1.rkllm", "--toolkit-version", "1.3.0")
    make_model(d / "newer-than-1.3.0.rkllm", "--toolkit-version", "1.4.0")
    return d


def sim_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env.update(extra)
    return env


def run_client(cmd: list[str], family: str, lib: Path, model_files: Path, work: Path) -> str:
    """Runs sim_client; asserts every check passed and all expected ones ran; returns the
    sample text it printed."""
    shutil.copytree(model_files, work)
    shutil.copy(work / f"newer-than-{family}.rkllm", work / "newer.rkllm")
    proc = subprocess.run(cmd, env=sim_env(SIM_MODEL=str(DEMO), SIM_DIR=str(work), SIM_LIB=str(lib)),
                          capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    passed = {line.split()[1] for line in lines if line.startswith("ok ")}
    assert not failed, "\n".join(failed) + "\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    missing = (COMMON_CHECKS | FAMILY_CHECKS[family]) - passed
    assert not missing, f"checks not reported: {sorted(missing)}"
    return next(line for line in lines if line.startswith("# sample: "))


@pytest.mark.parametrize("family", FAMILIES)
def test_c_client_exercises_every_function(family: str, sims: dict[str, Path], model_files: Path,
                                           tmp_path: Path) -> None:
    exe = compile_client("sim_client.c", family, sims[family], tmp_path)
    run_client([str(exe)], family, sims[family], model_files, tmp_path / "files")


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]


@pytest.mark.parametrize("family", ["1.1.0", "1.3.0"])
def test_c_clients_under_sanitizers(family: str, model_files: Path, tmp_path: Path) -> None:
    """The simulator and the C clients built with AddressSanitizer (leaks included) and UBSan:
    every check still passes and no sanitizer reports anything, with the callbacks of blocking
    runs on the caller's thread and on the runtime's."""
    lib = tmp_path / f"librkllmrt-sim-{family}.so"
    sources = sorted(str(p) for p in (ROOT / "csrc" / "sim").glob("*.c"))
    build = subprocess.run([CC, "-shared", "-fPIC", "-O1", "-std=gnu11", "-fvisibility=hidden", "-pthread",
                            *SANITIZE, f'-DRKLLM_SIM_FAMILY="{family}"', f"-I{ROOT / 'include' / family}",
                            f"-I{ROOT / 'csrc' / 'sim'}", *sources, "-o", str(lib), "-lm"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"{CC} cannot build with sanitizers here: {build.stderr[-300:]}")
    exes = {}
    for source in ("sim_client.c", "lock_client.c"):
        exes[source] = tmp_path / f"{Path(source).stem}-{family}"
        subprocess.run([CC, "-std=gnu11", "-O1", *SANITIZE, f"-I{ROOT / 'include' / family}",
                        str(ROOT / "tests" / "c" / source), "-o", str(exes[source]), str(lib),
                        f"-Wl,-rpath,{tmp_path}", "-lpthread", "-ldl", "-lm"], check=True,
                       capture_output=True, text=True)
    san = {"ASAN_OPTIONS": "detect_leaks=1:exitcode=23", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    for mode in ("caller", "worker"):
        work = tmp_path / f"files-{mode}"
        shutil.copytree(model_files, work)
        shutil.copy(work / f"newer-than-{family}.rkllm", work / "newer.rkllm")
        proc = subprocess.run([str(exes["sim_client.c"])], capture_output=True, text=True, timeout=600,
                              env=sim_env(SIM_MODEL=str(DEMO), SIM_DIR=str(work), SIM_LIB=str(lib),
                                          RKLLM_SIM_CALLBACK_THREAD=mode, **san))
        if "LeakSanitizer has encountered a fatal error" in proc.stderr:
            pytest.skip("LeakSanitizer cannot run here (ptrace restricted)")
        assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-4000:]
        proc = subprocess.run([str(exes["lock_client.c"]), str(DEMO)], capture_output=True, text=True,
                              timeout=120, env=sim_env(RKLLM_SIM_QUIET="1", RKLLM_SIM_CALLBACK_THREAD=mode, **san))
        assert proc.returncode == 0 and "Sanitizer" not in proc.stderr, proc.stderr[-4000:]


@pytest.mark.parametrize("arch", list(CROSS))
@pytest.mark.parametrize("family", FAMILIES)
def test_c_client_on_other_architectures(family: str, arch: str, sims: dict[str, Path], model_files: Path,
                                         tmp_path: Path) -> None:
    """Same sources, same flags, built with the cross compiler and run under qemu-user; the
    text is the same as on this host."""
    cc, qemu, sysroot = CROSS[arch]
    if not shutil.which(cc) or not shutil.which(qemu) or not Path(sysroot).is_dir():
        pytest.skip(f"{cc} or {qemu} (or {sysroot}) missing; {arch} not checked")
    native = run_client([str(compile_client("sim_client.c", family, sims[family], tmp_path))], family,
                        sims[family], model_files, tmp_path / "native")
    lib = compile_sim(family, tmp_path, cc)
    exe = compile_client("sim_client.c", family, lib, tmp_path, cc)
    cross = run_client([qemu, "-L", sysroot, str(exe)], family, lib, model_files, tmp_path / "cross")
    assert cross == native


@pytest.mark.parametrize("family", FAMILIES)
def test_release_string_and_startup_line(family: str, sims: dict[str, Path], tmp_path: Path) -> None:
    # the shim detects the release by scanning the file before calling anything
    data = sims[family].read_bytes()
    assert f"RKLLM SDK (version: {NEWEST[family]})".encode() in data
    assert b"RKLLM SDK (version: " + b"1.9.9" not in data
    exe = compile_client("trace_client.c", family, sims[family], tmp_path)
    proc = subprocess.run([str(exe), str(DEMO)], env=sim_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split() == ["0", "0", "0", "-1"]
    first = proc.stderr.splitlines()[0]
    assert first.startswith("I RKLLM-SIM: rkllm-cffi simulated runtime (not an NPU)")
    assert f"ABI family {family}" in first and "rkllm-sim-demo" in first
    assert "E RKLLM-SIM: rkllm_destroy: invalid handle" in proc.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_records_every_call_and_field(family: str, sims: dict[str, Path], tmp_path: Path) -> None:
    exe = compile_client("trace_client.c", family, sims[family], tmp_path)
    trace = tmp_path / "trace.jsonl"
    subprocess.run([str(exe), str(DEMO)], env=sim_env(RKLLM_SIM_TRACE=str(trace), RKLLM_SIM_QUIET="1"),
                   check=True, capture_output=True, timeout=60)
    lines = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    # the blocking run's run_end line comes before its rkllm_run line (written when it returns)
    assert [r["call"] for r in lines] == ["rkllm_createDefaultParam", "rkllm_init", "run_end", "rkllm_run",
                                          "rkllm_destroy", "rkllm_destroy"]
    run_end = lines.pop(2)
    assert run_end["args"]["handle"] == lines[1]["args"]["handle"]
    assert run_end["args"]["prefill_tokens"] > 5 and run_end["args"]["cached_tokens"] == 0
    assert run_end["args"]["generate_tokens"] > 0 and run_end["args"]["end"] == "finish"
    assert run_end["rc"] == 0
    records = lines
    assert [r["rc"] for r in records] == [0, 0, 0, 0, -1]
    init = records[1]["args"]
    assert init["param"]["model_path"] == str(DEMO)
    assert init["param"]["top_k"] == 7 and init["param"]["max_context_len"] == 1024
    assert init["handle_ptr"] == "non-null"
    assert ("n_batch" in init["param"]["extend_param"]) == (family >= "1.2.1")
    assert ("ignore_eos_token" in init["param"]) == (family == "1.3.0")
    assert ("img_start" in init["param"]) == (family != "1.3.0")
    if family == "1.3.0":
        assert init["callback"]["result_callback"] == "non-null"
        assert init["callback"]["tokenizer_callback"] is None
    run = records[2]["args"]
    assert run["rkllm_input"]["prompt_input"] == "Say \"h\u00e9llo\"\n\u201cquoted\u201d"
    assert run["rkllm_infer_params"]["lora_params"] is None
    assert run["rkllm_infer_params"]["prompt_cache_params"] == {
        "save_prompt_cache": 0, "prompt_cache_path": "unused.bin"}
    assert run["userdata"] == "non-null"
    assert records[3]["args"]["handle"] == records[1]["args"]["handle"]


@pytest.mark.parametrize("family", FAMILIES)
def test_demo_model_loads_and_newer_models_fail(family: str, sims: dict[str, Path], model_files: Path,
                                                tmp_path: Path) -> None:
    exe = compile_client("trace_client.c", family, sims[family], tmp_path)
    ok = subprocess.run([str(exe), str(DEMO)], env=sim_env(), capture_output=True, text=True, timeout=60)
    assert ok.stdout.split()[0] == "0"
    newer = model_files / f"newer-than-{family}.rkllm"
    bad = subprocess.run([str(exe), str(newer)], env=sim_env(), capture_output=True, text=True, timeout=60)
    assert bad.stdout.split()[0] == "-1"
    assert "needs a newer runtime" in bad.stderr and f"ABI family {family}" in bad.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_lock_held_across_a_blocking_run(family: str, sims: dict[str, Path], tmp_path: Path) -> None:
    """A client that holds a lock across rkllm_run and takes it in the callback (as a pybind11
    module does with the GIL) works: a blocking run calls back on the caller's thread. With
    RKLLM_SIM_CALLBACK_THREAD=worker the callback cannot take the lock (it would deadlock;
    the client gives up after 200 ms). rkllm_abort from another thread stops a
    blocking run that calls back on the caller's thread."""
    exe = compile_client("lock_client.c", family, sims[family], tmp_path)
    proc = subprocess.run([str(exe), str(DEMO)], env=sim_env(RKLLM_SIM_QUIET="1"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split("\n")[:3] == ["runs_ok", "lock_failures 0", "abort_ok"], \
        proc.stdout + proc.stderr
    proc = subprocess.run([str(exe), str(DEMO)], env=sim_env(RKLLM_SIM_QUIET="1", RKLLM_SIM_CALLBACK_THREAD="worker"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "lock_failures 0" not in proc.stdout, proc.stdout + proc.stderr


def test_committed_demo_model_matches_generator(tmp_path: Path) -> None:
    fresh = make_model(tmp_path / "demo.rkllm")
    assert fresh.read_bytes() == DEMO.read_bytes(), "regenerate rkllm/_sim/demo.rkllm with make_model.py"


def test_demo_model_container() -> None:
    data = DEMO.read_bytes()
    assert data[:8] == b"RKSIMLLM"
    assert int.from_bytes(data[16:24], "little") == len(data)
    assert zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")
    meta_off = int.from_bytes(data[24 + 8:24 + 16], "little")
    meta_len = int.from_bytes(data[24 + 16:24 + 24], "little")
    meta = dict(line.split("=", 1) for line in data[meta_off:meta_off + meta_len].decode().splitlines())
    assert meta["kind"] == "model" and meta["toolkit_version"] == "1.1.0"
    assert int(meta["max_context_len"]) >= 4096
    assert meta["target_platform"] == "rk3588"
