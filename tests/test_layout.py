"""Struct layouts of include/<family>/rkllm.h against the releases' facts.

FACTS lists, per ABI family, every struct of the vendor's rkllm.h of that release with its
fields in order and their C types (transcribed from the public headers). The expected size,
alignment and offset of every field are computed from FACTS with the C layout rules of each
architecture (LP64: x86_64, aarch64; ILP32: armhf), then checked against what a compiler
makes of our header, with _Static_assert's, so the cross compilers only need to compile, not
run, the check.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

Field = tuple[str, str | tuple]  # (name, type); type: a scalar, a struct name,
# ("struct"|"union", [fields]) for an anonymous/inline aggregate, or ("array", scalar, n)

_ext_110: list[Field] = [("base_domain_id", "i32"), ("reserved", ("array", "u8", 112))]
_ext_120: list[Field] = [("base_domain_id", "i32"), ("embed_flash", "i8"), ("enabled_cpus_num", "i8"),
                         ("enabled_cpus_mask", "u32"), ("reserved", ("array", "u8", 106))]
_ext_121: list[Field] = [("base_domain_id", "i32"), ("embed_flash", "i8"), ("enabled_cpus_num", "i8"),
                         ("enabled_cpus_mask", "u32"), ("n_batch", "u8"), ("use_cross_attn", "i8"),
                         ("reserved", ("array", "u8", 104))]


def _param(n_keep: bool, tail: list[Field]) -> list[Field]:
    head: list[Field] = [("model_path", "ptr"), ("max_context_len", "i32"), ("max_new_tokens", "i32"),
                         ("top_k", "i32")]
    if n_keep:
        head.append(("n_keep", "i32"))
    return head + [("top_p", "float"), ("temperature", "float"), ("repeat_penalty", "float"),
                   ("frequency_penalty", "float"), ("presence_penalty", "float"), ("mirostat", "i32"),
                   ("mirostat_tau", "float"), ("mirostat_eta", "float")] + tail


_img_strings: list[Field] = [("img_start", "ptr"), ("img_end", "ptr"), ("img_content", "ptr")]
_common: dict[str, list[Field]] = {
    "RKLLMLoraAdapter": [("lora_adapter_path", "ptr"), ("lora_adapter_name", "ptr"), ("scale", "float")],
    "RKLLMEmbedInput": [("embed", "ptr"), ("n_tokens", "size_t")],
    "RKLLMTokenInput": [("input_ids", "ptr"), ("n_tokens", "size_t")],
    "RKLLMLoraParam": [("lora_adapter_name", "ptr")],
    "RKLLMPromptCacheParam": [("save_prompt_cache", "int"), ("prompt_cache_path", "ptr")],
    "RKLLMResultLastHiddenLayer": [("hidden_states", "ptr"), ("embd_size", "int"), ("num_tokens", "int")],
}
_logits: list[Field] = [("logits", "ptr"), ("vocab_size", "int"), ("num_tokens", "int")]
_perf: list[Field] = [("prefill_time_ms", "float"), ("prefill_tokens", "int"), ("generate_time_ms", "float"),
                      ("generate_tokens", "int"), ("memory_usage_mb", "float")]
_cross: list[Field] = [("encoder_k_cache", "ptr"), ("encoder_v_cache", "ptr"), ("encoder_mask", "ptr"),
                       ("encoder_pos", "ptr"), ("num_tokens", "int")]


def _input(mm: str, role: bool) -> list[Field]:
    head: list[Field] = [("role", "ptr"), ("enable_thinking", "bool")] if role else []
    return head + [("input_type", "enum"), ("", ("union", [
        ("prompt_input", "ptr"), ("embed_input", "RKLLMEmbedInput"), ("token_input", "RKLLMTokenInput"),
        ("multimodal_input", mm)]))]


_mm_121: list[Field] = [("prompt", "ptr"), ("image_embed", "ptr"), ("n_image_tokens", "size_t"),
                        ("n_image", "size_t"), ("image_width", "size_t"), ("image_height", "size_t")]

FACTS: dict[str, dict[str, list[Field]]] = {
    "1.1.0": {
        **_common,
        "RKLLMExtendParam": _ext_110,
        "RKLLMParam": _param(False, [("skip_special_token", "bool"), ("is_async", "bool"), *_img_strings,
                                     ("extend_param", "RKLLMExtendParam")]),
        "RKLLMMultiModelInput": [("prompt", "ptr"), ("image_embed", "ptr"), ("n_image_tokens", "size_t")],
        "RKLLMInput": _input("RKLLMMultiModelInput", False),
        "RKLLMInferParam": [("mode", "enum"), ("lora_params", "ptr"), ("prompt_cache_params", "ptr")],
        "RKLLMResult": [("text", "ptr"), ("token_id", "i32"), ("last_hidden_layer", "RKLLMResultLastHiddenLayer")],
    },
    "1.2.0": {
        **_common,
        "RKLLMExtendParam": _ext_120,
        "RKLLMParam": _param(True, [("skip_special_token", "bool"), ("is_async", "bool"), *_img_strings,
                                    ("extend_param", "RKLLMExtendParam")]),
        "RKLLMMultiModelInput": [("prompt", "ptr"), ("image_embed", "ptr"), ("n_image_tokens", "size_t")],
        "RKLLMInput": _input("RKLLMMultiModelInput", False),
        "RKLLMInferParam": [("mode", "enum"), ("lora_params", "ptr"), ("prompt_cache_params", "ptr"),
                            ("keep_history", "int")],
        "RKLLMResultLogits": _logits,
        "RKLLMResult": [("text", "ptr"), ("token_id", "i32"), ("last_hidden_layer", "RKLLMResultLastHiddenLayer"),
                        ("logits", "RKLLMResultLogits")],
    },
    "1.2.1": {
        **_common,
        "RKLLMExtendParam": _ext_121,
        "RKLLMParam": _param(True, [("skip_special_token", "bool"), ("is_async", "bool"), *_img_strings,
                                    ("extend_param", "RKLLMExtendParam")]),
        "RKLLMMultiModelInput": _mm_121,   # the name in 1.2.1 and 1.2.2
        "RKLLMMultiModalInput": _mm_121,   # the name in 1.2.3
        "RKLLMInput": _input("RKLLMMultiModalInput", True),
        "RKLLMCrossAttnParam": _cross,
        "RKLLMInferParam": [("mode", "enum"), ("lora_params", "ptr"), ("prompt_cache_params", "ptr"),
                            ("keep_history", "int")],
        "RKLLMResultLogits": _logits,
        "RKLLMPerfStat": _perf,
        "RKLLMResult": [("text", "ptr"), ("token_id", "i32"), ("last_hidden_layer", "RKLLMResultLastHiddenLayer"),
                        ("logits", "RKLLMResultLogits"), ("perf", "RKLLMPerfStat")],
    },
    "1.3.0": {
        **_common,
        "RKLLMExtendParam": _ext_121,
        "RKLLMParam": _param(True, [("skip_special_token", "bool"), ("ignore_eos_token", "bool"),
                                    ("is_async", "bool"), ("extend_param", "RKLLMExtendParam")]),
        "RKLLMMultiModalInput": [("prompt", "ptr"), ("image", ("struct", [
            ("image_embed", "ptr"), ("n_image_tokens", "size_t"), ("n_image", "size_t"), ("image_start", "ptr"),
            ("image_end", "ptr"), ("image_content", "ptr"), ("image_width", "size_t"),
            ("image_height", "size_t")])), ("video", ("struct", [
                ("video_embed", "ptr"), ("n_frame_tokens", "size_t"), ("n_frame_per_video", "size_t"),
                ("n_video", "size_t"), ("video_start", "ptr"), ("video_end", "ptr"), ("video_content", "ptr"),
                ("frame_width", "size_t"), ("frame_height", "size_t")]))],
        "RKLLMInput": _input("RKLLMMultiModalInput", True),
        "RKLLMCrossAttnParam": _cross,
        "RKLLMSamplingParam": [("top_k", "i32"), ("top_p", "float"), ("temperature", "float"),
                               ("repeat_penalty", "float"), ("frequency_penalty", "float"),
                               ("presence_penalty", "float"), ("mirostat", "i32"), ("mirostat_tau", "float"),
                               ("mirostat_eta", "float")],
        "RKLLMInferParam": [("mode", "enum"), ("lora_params", "ptr"), ("prompt_cache_params", "ptr"),
                            ("sampling_params", "ptr"), ("keep_history", "int"), ("max_new_tokens", "i32")],
        "RKLLMResultLogits": _logits,
        "RKLLMPerfStat": _perf,
        "RKLLMResult": [("text", "ptr"), ("token_id", "i32"), ("last_hidden_layer", "RKLLMResultLastHiddenLayer"),
                        ("logits", "RKLLMResultLogits"), ("perf", "RKLLMPerfStat")],
        "RKLLMCallback": [("result_callback", "ptr"), ("result_userdata", "ptr"), ("tokenizer_callback", "ptr"),
                          ("tokenizer_userdata", "ptr"), ("embed_callback", "ptr"), ("embed_userdata", "ptr")],
    },
}

# (compiler, pointer size) per architecture; named by target triplet, because a plain "gcc" is
# not always an x86_64 compiler (in the wheel tests under qemu-user it is the emulated arch's)
ARCHES = {"x86_64": ("x86_64-linux-gnu-gcc", 8), "aarch64": ("aarch64-linux-gnu-gcc", 8),
          "armhf": ("arm-linux-gnueabihf-gcc", 4)}


def scalar(kind: str, ptr: int) -> tuple[int, int]:
    sizes = {"ptr": ptr, "size_t": ptr, "i8": 1, "u8": 1, "bool": 1, "i32": 4, "u32": 4, "int": 4,
             "float": 4, "enum": 4}
    return sizes[kind], sizes[kind]


def layout(kind: str | tuple, structs: dict[str, list[Field]], ptr: int,
           prefix: str = "", out: dict[str, int] | None = None) -> tuple[int, int]:
    """(size, align) of a type; offsets of the fields inside it are added to out[prefix+name]."""
    if isinstance(kind, tuple) and kind[0] == "array":
        size, align = scalar(kind[1], ptr)
        return size * kind[2], align
    if isinstance(kind, str) and kind not in structs:
        return scalar(kind, ptr)
    is_union = isinstance(kind, tuple) and kind[0] == "union"
    fields = structs[kind] if isinstance(kind, str) else kind[1]
    offset = size = 0
    max_align = 1
    for name, ftype in fields:
        inner: dict[str, int] = {}
        fsize, falign = layout(ftype, structs, ptr, "", inner)
        max_align = max(max_align, falign)
        here = 0 if is_union else (offset + falign - 1) // falign * falign
        if out is not None:
            path = prefix + name
            if name:
                out[path] = here
            for sub, off in inner.items():  # members of anonymous/inline aggregates
                if isinstance(ftype, tuple):
                    out[(path + "." if name else prefix) + sub] = here + off
        size = max(size, here + fsize) if is_union else here + fsize
        offset = size
    size = (size + max_align - 1) // max_align * max_align
    return size, max_align


def expected(family: str, ptr: int) -> dict[str, tuple[int, int, dict[str, int]]]:
    structs = FACTS[family]
    table = {}
    for name in structs:
        offsets: dict[str, int] = {}
        size, align = layout(name, structs, ptr, "", offsets)
        table[name] = (size, align, offsets)
    return table


def check_source(family: str, ptr: int) -> str:
    lines = ['#include <stddef.h>', '#include "rkllm.h"']
    for struct, (size, align, offsets) in expected(family, ptr).items():
        lines.append(f'_Static_assert(sizeof({struct}) == {size}, "sizeof {struct} != {size}");')
        lines.append(f'_Static_assert(_Alignof({struct}) == {align}, "alignof {struct} != {align}");')
        for path, off in offsets.items():
            lines.append(f'_Static_assert(offsetof({struct}, {path}) == {off}, '
                         f'"offsetof {struct}.{path} != {off}");')
    return "\n".join(lines) + "\n"


def test_table_matches_the_known_sizes() -> None:
    # the sizes quoted in the issue (aarch64): RKLLMParam is 200 / 208 / 184 bytes
    assert expected("1.1.0", 8)["RKLLMParam"][0] == 200
    assert expected("1.2.0", 8)["RKLLMParam"][0] == 208
    assert expected("1.2.1", 8)["RKLLMParam"][0] == 208
    assert expected("1.3.0", 8)["RKLLMParam"][0] == 184
    assert expected("1.2.1", 8)["RKLLMExtendParam"][0] == 120
    assert expected("1.1.0", 4)["RKLLMExtendParam"][0] == 116
    # the 1.2.1 input starts with role and enable_thinking: the union moves
    assert expected("1.2.0", 8)["RKLLMInput"][2]["prompt_input"] == 8
    assert expected("1.2.1", 8)["RKLLMInput"][2]["prompt_input"] == 16
    # armhf, 1.3.0: union after role, enable_thinking, input_type; video after prompt + image
    assert expected("1.3.0", 4)["RKLLMInput"][2]["multimodal_input"] == 12
    assert expected("1.3.0", 4)["RKLLMMultiModalInput"][2]["video.frame_height"] == 4 + 32 + 32


@pytest.mark.parametrize("arch", list(ARCHES))
@pytest.mark.parametrize("family", list(FACTS))
def test_header_layout(family: str, arch: str, tmp_path: Path) -> None:
    compiler, ptr = ARCHES[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed (the cross compilers come with .ci/run); "
                    f"{arch} layouts not checked")
    src = tmp_path / f"layout_{family}_{arch}.c"
    src.write_text(check_source(family, ptr))
    proc = subprocess.run([compiler, "-std=c11", "-fsyntax-only", f"-I{ROOT / 'include' / family}", str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    n_checks = src.read_text().count("_Static_assert")
    assert n_checks > 50


@pytest.mark.parametrize("family", list(FACTS))
def test_header_compiles_as_cxx_and_names_all_structs(family: str, tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    src = tmp_path / "all.cpp"
    uses = "\n".join(f"{name} v{i}; " for i, name in enumerate(FACTS[family]))
    src.write_text(f'#include "rkllm.h"\nvoid f() {{ {uses} }}\n')
    proc = subprocess.run(["g++", "-std=c++11", "-fsyntax-only", "-Wall", f"-I{ROOT / 'include' / family}",
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
