"""One run request: every option of a generation, checked once, then handed to C as is.

:func:`build` turns the keyword options of ``generate`` / ``complete`` / ``hidden_states`` /
``logits`` into a frozen :class:`RunRequest`, raising ParamError (a ValueError; ParamTypeError,
also a TypeError, for a wrong type) naming the option and its range before anything reaches
the runtime. The field names of RunRequest are those of the shim's ``rkshim_run_args``
(``rkllm._lowlevel.RUN_FIELDS``, read from the compiled interface); a test holds them equal.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rkllm import _lowlevel as ll
from rkllm import params as P
from rkllm.errors import ContextLengthError, ParamError, ParamTypeError

INT32_MAX = P.INT32_MAX

# The options a run takes besides its input, for "did you mean" hints.
_PER_RUN = ("max_new_tokens", "keep_history", "role", "enable_thinking", "lora",
            "save_prompt_cache")
RUN_OPTIONS = (*_PER_RUN, "tokens", "embeddings", "n_embed_tokens",
               "image_embeddings", "n_image_tokens", "n_images", "image_size", "image_markers")

# The roles a run takes (1.2.1+): the runtime knows these two (a tool's result is wrapped in
# its tool-response tag); others are refused here, the strict reading (docs/api.md).
ROLES = ("user", "tool")
# Where a multimodal prompt's image tokens go (the runtime refuses a prompt without it).
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True, eq=False)
class RunRequest:
    """A checked run request; fields as in ``rkshim_run_args`` (None: left unset)."""

    input_type: int
    mode: int
    prompt: str | None = None
    role: str | None = None
    enable_thinking: bool | None = None
    token_ids: tuple[int, ...] | None = None
    embed: memoryview[Any] | None = None           # float32, n_embed_tokens x embedding size
    n_embed_tokens: int | None = None
    image_embed: memoryview[Any] | None = None     # float32, image rows x embedding size
    n_image_tokens: int | None = None
    n_image: int | None = None
    image_width: int | None = None
    image_height: int | None = None
    image_start: str | None = None
    image_end: str | None = None
    image_content: str | None = None
    lora_adapter_name: str | None = None
    save_prompt_cache_path: str | None = None
    keep_history: bool | None = None
    max_new_tokens: int = -1                  # < 0: the model's limit
    sampling: Mapping[str, Any] | None = None  # per-run sampling (1.3.0)
    embed_size: int | None = None             # floats per embedding row, for the shim's checks


def check_int(value: Any, what: str, lo: int, hi: int = INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamTypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ParamError(f"{what} must be an int >= {lo} and <= {hi}, got {value}")
    return value


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ParamTypeError(f"{what} must be a bool (True or False), got "
                             f"{type(value).__name__} {value!r}")
    return value


def check_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ParamTypeError(f"{what} must be a str, got {type(value).__name__}")
    ll.c_text(value, what)
    return value


def check_path(value: Any, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ParamTypeError(f"{what} must be a path (str or os.PathLike), got "
                             f"{type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise ParamTypeError(f"{what} must be a str path, got {type(path).__name__}")
    ll.c_text(path, what)
    return path


def _check_floats(view: memoryview[Any], rows: int, width: int, what: str, rows_what: str) -> None:
    if len(view) != rows * width:
        raise ParamError(f"{what} has {len(view)} floats; {rows_what} = {rows} rows of the "
                         f"model's embedding size {width} need exactly {rows * width}")


def _fits(rows: int, limit: int, what: str) -> None:
    if rows > limit:
        raise ContextLengthError(f"{what} is {rows} tokens, more than the context holds "
                                 f"(max_context_len {limit})", n_tokens=rows, limit=limit)


def build(family: str, params: Mapping[str, Any], prompt: str | None, *, mode: int,
          loras: Sequence[str], embedding_size: Callable[[], int], vocab_size: int | None,
          options: Mapping[str, Any], bare_template: bool = False) -> RunRequest:
    """Checks a run's input and options; returns the request. ``embedding_size`` is called
    only for embedding input; ``vocab_size`` (from the model file, when known) bounds token
    ids; ``bare_template``: the runtime adds nothing around a prompt (1.1.0, or an empty
    chat template), so an empty prompt would be an empty input."""
    opts = dict(options)
    out: dict[str, Any] = {"mode": mode}
    limit = int(params["max_context_len"])
    sampling = {k: opts.pop(k) for k in list(opts) if k in P.SAMPLING_NAMES}
    per_run = {k: opts.pop(k) for k in list(opts) if k in _PER_RUN}
    tokens, embeddings = opts.pop("tokens", None), opts.pop("embeddings", None)
    n_embed_tokens = opts.pop("n_embed_tokens", None)
    image_embeddings = opts.pop("image_embeddings", None)
    n_image_tokens, n_images = opts.pop("n_image_tokens", None), opts.pop("n_images", 1)
    image_size, image_markers = opts.pop("image_size", (0, 0)), opts.pop("image_markers", None)
    if opts:
        name = sorted(opts)[0]
        raise P.unknown_param(name, family, [*P.SAMPLING_NAMES, *RUN_OPTIONS])
    if image_embeddings is not None:
        if prompt is None:
            raise ParamError("image_embeddings need a prompt (with the image placeholder)")
        if tokens is not None or embeddings is not None:
            raise ParamError("give exactly one input: a prompt, tokens= or embeddings=")
        out.update(_image_input(family, prompt, image_embeddings, n_image_tokens, n_images,
                                image_size, image_markers, limit, embedding_size))
    elif (prompt is not None) + (tokens is not None) + (embeddings is not None) != 1:
        raise ParamError("give exactly one input: a prompt, tokens= or embeddings=")
    elif prompt is not None:
        out.update(input_type=ll.INPUT_PROMPT, prompt=check_text(prompt, "prompt"))
        if not prompt and bare_template:  # the runtime refuses an empty input
            raise ParamError("prompt is empty, and the chat template adds nothing around it "
                             "(an empty input): give some text")
    elif tokens is not None:
        out.update(input_type=ll.INPUT_TOKEN, token_ids=_token_ids(tokens, vocab_size, limit))
    else:
        if n_embed_tokens is None:
            raise ParamError("embeddings need n_embed_tokens (the number of rows)")
        rows = check_int(n_embed_tokens, "n_embed_tokens", 1)
        _fits(rows, limit, "the embeddings input")
        view = ll.float32_view(embeddings, "embeddings")
        width = embedding_size()
        _check_floats(view, rows, width, "embeddings", "n_embed_tokens")
        out.update(input_type=ll.INPUT_EMBED, embed=view, n_embed_tokens=rows,
                   embed_size=width)
    if n_embed_tokens is not None and embeddings is None:
        raise ParamError("n_embed_tokens goes with embeddings=")
    out.update(_run_options(family, params, loras, sampling, per_run))
    return RunRequest(**out)


def _token_ids(tokens: Any, vocab_size: int | None, limit: int) -> tuple[int, ...]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise ParamTypeError(f"tokens must be a sequence of ints, got {type(tokens).__name__}")
    # ints, or integer objects that say so (numpy's): operator.index
    ids = tuple(t if isinstance(t, bool) or not hasattr(type(t), "__index__")
                else operator.index(t) for t in tokens)
    if not ids:
        raise ParamError("tokens must be a non-empty sequence of ints")
    top = vocab_size - 1 if vocab_size else INT32_MAX
    for i, t in enumerate(ids):
        check_int(t, f"tokens[{i}]", 0, top)
    _fits(len(ids), limit, "the tokens input")
    return ids


def _image_input(family: str, prompt: str, embeds: Any, n_image_tokens: Any, n_images: Any,
                 image_size: Any, markers: Any, limit: int,
                 embedding_size: Callable[[], int]) -> dict[str, Any]:
    if n_image_tokens is None:
        raise ParamError("image_embeddings need n_image_tokens")
    per_image = check_int(n_image_tokens, "n_image_tokens", 1)
    many = P.family_key(family) >= P.family_key("1.2.1")  # n_images exists from 1.2.1
    count = check_int(n_images, "n_images", 1, INT32_MAX if many else 1)
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ParamTypeError(f"image_size must be (width, height), got {image_size!r}")
    width = check_int(image_size[0], "image_size width", 0)
    height = check_int(image_size[1], "image_size height", 0)
    if IMAGE_PLACEHOLDER not in check_text(prompt, "prompt"):
        raise ParamError(f"the prompt of image input must contain {IMAGE_PLACEHOLDER} (where "
                         "the image tokens go)")
    rows = per_image * count
    _fits(rows, limit, "the image input (n_images x n_image_tokens)")
    view = ll.float32_view(embeds, "image_embeddings")
    row_size = embedding_size()
    _check_floats(view, rows, row_size, "image_embeddings",
                  "n_images x n_image_tokens" if many else "n_image_tokens")
    out: dict[str, Any] = dict(
        input_type=ll.INPUT_MULTIMODAL, prompt=prompt, image_embed=view,
        embed_size=row_size,
        n_image_tokens=per_image, n_image=count, image_width=width, image_height=height)
    if markers is not None:
        P.require(family, "image_markers", "image_markers per run")
        if not isinstance(markers, (tuple, list)) or len(markers) != 3:
            raise ParamTypeError("image_markers must be (start, end, content) strings")
        for name, text in zip(("image_start", "image_end", "image_content"), markers):
            out[name] = check_text(text, f"image_markers {name}")
    return out


def _run_options(family: str, params: Mapping[str, Any], loras: Sequence[str],
                 sampling: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.get("max_new_tokens") is not None:
        out["max_new_tokens"] = check_int(options["max_new_tokens"], "max_new_tokens", 1)
    if options.get("keep_history") is not None:
        if check_bool(options["keep_history"], "keep_history"):
            P.require(family, "keep_history")
            out["keep_history"] = True
    if options.get("role") is not None:
        P.require(family, "role")
        role = check_text(options["role"], "role")
        if role not in ROLES:
            raise ParamError(f"role must be one of {', '.join(map(repr, ROLES))}, got {role!r}")
        out["role"] = role
    if options.get("enable_thinking") is not None:
        P.require(family, "enable_thinking")
        out["enable_thinking"] = check_bool(options["enable_thinking"], "enable_thinking")
    lora = options.get("lora")
    if lora is not None:
        if lora not in loras:
            raise ParamError(f"no LoRA adapter named {lora!r} is loaded (loaded: "
                             f"{', '.join(loras) or 'none'}); use load_lora first")
        out["lora_adapter_name"] = lora
    if options.get("save_prompt_cache") is not None:
        path = check_path(options["save_prompt_cache"], "save_prompt_cache")
        if not path:
            raise ParamError("save_prompt_cache must be a file path, got ''")
        out["save_prompt_cache_path"] = path
    out["sampling"] = P.validate_sampling(family, sampling, params)
    return out
