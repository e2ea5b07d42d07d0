#!/usr/bin/env python3
"""Make simulated models and LoRA adapters (docs/sim-model-format.md).

A build tool, not part of the runtime. The committed demo model is made with:

    python csrc/sim/make_model.py -o rkllm/_sim/demo.rkllm

Tests use it to make variants (another toolkit version, a LoRA adapter, ...).
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
import zlib
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"RKSIMLLM"
FORMAT_VERSION = 1
MAX_NEXT = 64  # successors kept per word

# special tokens first: ids are fixed so the runtime's docs can name them
SPECIAL = ["<|begin_of_text|>", "<|im_end|>", "<|im_start|>"]
BOS_ID, EOS_ID = 0, 1
# ordinary added tokens (always shown, even with skip_special_token)
ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
         "</tool_response>", "<image>", "<video>", "\n\n", "\n"]

# extra vocabulary so that ordinary prompts tokenize into words, not bytes
COMMON_WORDS = """
a about after again all also always am an and any are as ask at back be because been before
being best better between both but by call can city could day did do does done down each
even every few find first for from get give go good great had has have he hello help helpful
her here hi him his how i if in into is it its just know last like little long look make
many may me more most much must my name need never new next no not now of off old on once
one only or other our out over own people place please question read really right said same
say see she should show so some something still such system take tell than thank thanks that
the their them then there these they thing think this those through time to today too two up
us use user very want was way we weather well were what when where which while who why will
with word work world would write year yes yesterday you your assistant answer explain
describe story about summary translate code python list number help tool function
""".split()

TEMPLATE = {
    "system_prompt": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "prompt_prefix": "<|im_start|>user\n",
    "prompt_postfix": "<|im_end|>\n<|im_start|>assistant\n",
}

WORD_RE = re.compile(r" ?(?:[\w’']+|[^\w\s])")


def escape(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("\n", "\\n")
            .replace("\t", "\\t").replace("\r", "\\r"))


def meta_bytes(meta: dict[str, object]) -> bytes:
    return "".join(f"{k}={escape(str(v))}\n" for k, v in meta.items()).encode("utf-8")


def pieces_of(word: str) -> list[bytes]:
    """Split a word the way a byte-level tokenizer might: runs of 1- and 2-byte characters
    whole, 3- and 4-byte characters in two pieces (so a piece can end mid-character)."""
    out: list[bytes] = []
    run = b""
    for ch in word:
        b = ch.encode("utf-8")
        if len(b) <= 2:
            run += b
            continue
        first, rest = b[:2], b[2:]
        if run == b" ":  # a lone leading space sticks to the first half
            out.append(run + first)
        else:
            if run:
                out.append(run)
            out.append(first)
        out.append(rest)
        run = b""
    if run:
        out.append(run)
    return out


def container(sections: list[tuple[bytes, bytes]]) -> bytes:
    header_len = 24 + 24 * len(sections)
    offset = header_len
    table = b""
    for tag, data in sections:
        table += struct.pack("<4sIQQ", tag, 0, offset, len(data))
        offset += len(data)
    file_size = offset + 4
    body = struct.pack("<8sIIQ", MAGIC, FORMAT_VERSION, len(sections), file_size) + table
    body += b"".join(data for _, data in sections)
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def build_model(corpus: str, args: argparse.Namespace) -> bytes:
    paragraphs = [p.strip() for p in corpus.split("\n\n") if p.strip()]
    tokens: list[bytes] = [s.encode() for s in SPECIAL] + [bytes([i]) for i in range(256)]
    flags = [1] * len(SPECIAL) + [0] * 256
    token_id: dict[bytes, int] = {bytes([i]): len(SPECIAL) + i for i in range(256)}

    def token(piece: bytes) -> int:
        if piece not in token_id:
            token_id[piece] = len(tokens)
            tokens.append(piece)
            flags.append(0)
        return token_id[piece]

    for added in ADDED:
        token(added.encode())
    for w in COMMON_WORDS:
        for spelling in (w, " " + w, w.capitalize(), " " + w.capitalize()):
            token(spelling.encode())
    words: list[tuple[int, ...]] = [(EOS_ID,)]
    word_id: dict[str, int] = {}
    follow: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for para in paragraphs:
        prev = 0
        for w in WORD_RE.findall(para):
            if w not in word_id:
                word_id[w] = len(words)
                words.append(tuple(token(p) for p in pieces_of(w)))
                if w.startswith(" ") and w[1:].isascii() and len(w) > 2:
                    token(w[1:].encode())  # bare spelling helps prompt tokenization
            follow[prev][word_id[w]] += 1
            prev = word_id[w]
        follow[prev][0] += 1

    vocb = struct.pack("<I", len(tokens)) + b"".join(
        struct.pack("<BB", f, len(t)) + t for f, t in zip(flags, tokens))
    word = struct.pack("<I", len(words)) + b"".join(
        struct.pack("<B", len(p)) + struct.pack(f"<{len(p)}I", *p) for p in words)
    chan = b""
    for i in range(len(words)):
        nxt = sorted(follow[i].items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_NEXT]
        chan += struct.pack("<I", len(nxt)) + b"".join(struct.pack("<II", w, c) for w, c in nxt)
    meta = {
        "kind": "model",
        "model_name": args.name,
        "target_platform": args.platform,
        "toolkit_version": args.toolkit_version,
        "dtype": args.dtype,
        "max_context_len": args.max_context_len,
        "vocab_size": len(tokens),
        "embed_size": args.embed_size,
        "n_layers": 24,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        **TEMPLATE,
        "description": "Simulated model for the rkllm-cffi simulated runtime: a word-level "
                       "Markov chain, not a neural network.",
    }
    return container([(b"META", meta_bytes(meta)), (b"VOCB", vocb), (b"WORD", word),
                      (b"CHAN", chan)])


def build_lora(args: argparse.Namespace) -> bytes:
    meta = {
        "kind": "lora",
        "model_name": args.name,
        "toolkit_version": args.toolkit_version,
        "base_model": args.base_model,
        "boost": args.boost,
        "description": "Simulated LoRA adapter for the rkllm-cffi simulated runtime.",
    }
    return container([(b"META", meta_bytes(meta))])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--corpus", default=os.path.join(HERE, "corpus.txt"))
    p.add_argument("--name", default=None, help="model (or LoRA) name")
    p.add_argument("--platform", default="rk3588")
    p.add_argument("--toolkit-version", default="1.1.0")
    p.add_argument("--dtype", default="w8a8")
    p.add_argument("--max-context-len", type=int, default=16384)
    p.add_argument("--embed-size", type=int, default=128)
    p.add_argument("--lora", action="store_true", help="make a LoRA adapter instead")
    p.add_argument("--base-model", default="rkllm-sim-demo", help="(LoRA) model it applies to")
    p.add_argument("--boost", default="river sea water light", help="(LoRA) words to favour")
    args = p.parse_args(argv)
    if args.lora:
        args.name = args.name or "rkllm-sim-lora"
        data = build_lora(args)
    else:
        args.name = args.name or "rkllm-sim-demo"
        with open(args.corpus, encoding="utf-8") as f:
            data = build_model(f.read(), args)
    with open(args.output, "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
