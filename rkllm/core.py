"""The loaded model: generation, the runtime's other calls, lifetime.

:class:`CoreLLM` is everything :class:`rkllm.LLM` does that needs no chat or asyncio layer;
``rkllm.LLM`` (rkllm/llm.py) adds those on top, so the layers only point down.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rkllm import _lowlevel as ll
from rkllm import params as P
from rkllm.errors import ClosedError, GenerationError, ModelLoadError, ParamError, ParamTypeError
from rkllm.request import RunRequest, check_bool, check_int, check_path, check_text
from rkllm.request import build as build_request
from rkllm.runtime_finder import load_runtime
from rkllm.stream import Result, Stream, Tensor

if TYPE_CHECKING:
    from rkllm.modelfile import ModelInfo


# The context a model gets when max_context_len is not given: what its file allows, at most
# this many tokens. The runtime reserves the kv cache for the whole context when it loads the
# model (for a 7B model without grouped-query attention, about 0.5 MB per token: 2 GB at
# 4096, 8 GB at 16384), so a larger default would not fit a 4-8 GB board; the vendor's own
# examples pass 4096 too.
DEFAULT_CONTEXT_CAP = 4096


class CoreLLM:
    """A model loaded on a runtime. Parameters go as keyword arguments or ``params=`` (a dict;
    a nested ``extend_param`` dict is accepted too) and are checked against the loaded
    release before anything is called; unset ones keep the runtime's own defaults.

    One generation at a time per model (a second one raises BusyError); several models may
    be loaded side by side. Every method raises ClosedError after :meth:`close`.
    """

    def __init__(self, model: str | os.PathLike[str], *,
                 runtime: str | os.PathLike[str] | None = None, abi: str | None = None,
                 params: Mapping[str, Any] | None = None, check_model: bool = True,
                 **kwparams: Any) -> None:
        self._model: ll.Model | None = None
        self._loras: list[str] = []
        self._embedding_size: int | None = None
        if runtime is not None and not isinstance(runtime, (str, os.PathLike)):
            raise ParamTypeError(f"runtime must be a path, a release or \"sim\", got "
                                 f"{type(runtime).__name__}")
        if abi is not None:
            check_text(abi, "abi")
        check_bool(check_model, "check_model")
        given = dict(params or {})
        for name, value in kwparams.items():
            if name in given:
                raise ParamError(f"{name} given both in params= and as a keyword")
            given[name] = value
        self.model_path = check_path(model, "model")
        if runtime is not None:
            ll.c_text(os.fspath(runtime), "runtime")
        self.runtime = load_runtime(runtime, abi=abi)
        if not os.path.isfile(self.model_path):
            raise ModelLoadError(f"no such model file: {self.model_path}")
        from rkllm.modelfile import inspect_model

        info = inspect_model(self.model_path)
        self._model_facts = {name: value for name in ("max_context_len", "vocab_size")
                             if isinstance(value := info.value(name), int) and value > 0}
        defaults = self.runtime.default_params()
        if "max_context_len" in self._model_facts:
            defaults["max_context_len"] = min(self._model_facts["max_context_len"],
                                              DEFAULT_CONTEXT_CAP)
        self.params = P.validate(self.family, given, defaults)
        if check_model:
            self._check_model(info)
        # the runtime adds nothing around a prompt before 1.2.0 (no chat template)
        self._bare_template = P.family_key(self.family) < P.family_key("1.2.0")
        self._cross_attn_set = False  # a use_cross_attn model runs only after they are set
        self._model = ll.Model(self.runtime, self.model_path, self.params)

    def _check_model(self, info: ModelInfo) -> None:
        """What the file says about itself against this board and runtime, before
        rkllm_init (the rule: rkllm.modelfile.check_compatibility, docs/models.md)."""
        import warnings

        from rkllm.machine import board_soc
        from rkllm.modelfile import check_compatibility

        # On the simulator the board does not matter, and the simulator itself names a file
        # that is not a simulated model precisely; a real runtime is spared simulated models.
        limit = self._model_facts.get("max_context_len")
        if limit is not None and self.params["max_context_len"] > limit:
            raise ParamError(f"max_context_len must be between 1 and {limit} (the model file's "
                             f"limit), got {self.params['max_context_len']} (check_model=False "
                             "skips this check)")
        board = None if self.is_simulator else board_soc()
        findings = check_compatibility(info, self.release or self.family, board,
                                       simulator=None if self.is_simulator else False)
        refusals = [f.message for f in findings if f.refuse]
        if refusals:
            raise ModelLoadError(f"{self.model_path} cannot be loaded here: "
                                 + "; ".join(refusals)
                                 + " (check_model=False skips this check)")
        for finding in findings:
            warnings.warn(finding.message, RuntimeWarning, stacklevel=3)

    # ---- what is loaded ---------------------------------------------------------------------
    @property
    def family(self) -> str:
        """The ABI family ("1.1.0", "1.2.0", "1.2.1" or "1.3.0")."""
        return self.runtime.family

    @property
    def release(self) -> str | None:
        """The runtime's release, when the library says it (e.g. "1.2.3")."""
        return self.runtime.release

    @property
    def is_simulator(self) -> bool:
        return self.runtime.is_simulator

    @property
    def context_length(self) -> int:
        """Tokens the context holds (``max_context_len``): as given, else what the model file
        says, at most DEFAULT_CONTEXT_CAP, else the runtime's default."""
        return int(self.params["max_context_len"])

    @property
    def closed(self) -> bool:
        return self._model is None or self._model.closed

    def _live(self) -> ll.Model:
        if self._model is None:
            raise ClosedError("the model is closed")
        if self._model.closed:
            raise ClosedError(self._model.why_closed())
        return self._model

    # ---- generation -------------------------------------------------------------------------
    def make_request(self, prompt: str | None = None, *, mode: int = ll.MODE_GENERATE,
                     **options: Any) -> RunRequest:
        """Checks a run's input and options (see :meth:`generate`) against the loaded release
        and model; returns the :class:`~rkllm.request.RunRequest` for :meth:`start`."""
        self._live()
        if self.params.get("use_cross_attn") and not self._cross_attn_set:
            raise ParamError("the model was loaded with use_cross_attn=True: call "
                             "set_cross_attn_params(...) before a run")
        return build_request(self.family, self.params, prompt, mode=mode, loras=self._loras,
                             embedding_size=lambda: self.embedding_size,
                             vocab_size=self._model_facts.get("vocab_size"), options=options,
                             bare_template=self._bare_template)

    def start(self, request: RunRequest, *, chunked: bool = False,
              collect: bool = False) -> Stream:
        """Starts ``request`` and returns its :class:`Stream` (``collect=True`` keeps the
        text and token ids for :meth:`Stream.result`)."""
        check_bool(chunked, "chunked")
        model = self._live()
        limit = request.max_new_tokens
        if limit <= 0:
            limit = int(self.params["max_new_tokens"])
        return Stream(model, request, limit=limit, context_length=self.context_length,
                      chunked=chunked, collect=collect)

    def generate(self, prompt: str | None = None, *, chunked: bool = False,
                 **options: Any) -> Stream:
        """Starts a run and returns its :class:`Stream` of ``str`` pieces (one per token;
        ``chunked=True``: one per batch the runtime produced since the last one, cheaper).

        Input: ``prompt``, or ``tokens=[ids]``, or ``embeddings=floats`` with
        ``n_embed_tokens``; a multimodal prompt takes ``image_embeddings``,
        ``n_image_tokens``, ``n_images``, ``image_size=(w, h)`` (1.3.0 also
        ``image_markers=(start, end, content)``). Options: ``max_new_tokens``,
        ``keep_history`` (1.2.0+), ``role`` and ``enable_thinking`` (1.2.1+), ``lora`` (an
        adapter name given to :meth:`load_lora`), ``save_prompt_cache`` (a file path), and on
        1.3.0 per-run sampling (``top_k``, ``top_p``, ``temperature``, penalties, mirostat).
        """
        return self.start(self.make_request(prompt, **options), chunked=chunked)

    def complete(self, prompt: str | None = None, **options: Any) -> Result:
        """Runs to the end and returns the text, finish reason, token ids and perf."""
        return self._run_through(self.make_request(prompt, **options), collect=True).result()

    def _run_through(self, request: RunRequest, collect: bool = False) -> Stream:
        """Starts ``request`` and reads it to the end; an interrupt at any point after the
        start (even while the caller keeps it, and the frames, alive) ends the run."""
        stream: Stream | None = None
        try:
            stream = self.start(request, chunked=True, collect=collect)
            for _ in stream:
                pass
            return stream
        except BaseException:
            if stream is not None:
                stream.close()
            raise

    def _array(self, mode: int, prompt: str | None, options: dict[str, Any]) -> Tensor:
        tensor = self._run_through(self.make_request(prompt, mode=mode, **options)).tensor
        if tensor is None:
            raise GenerationError("the runtime returned no data for this request")
        if mode == ll.MODE_HIDDEN:
            self._embedding_size = tensor.cols
        return tensor

    def logits(self, prompt: str | None = None, **options: Any) -> Tensor:
        """The logits of the input's last position(s): a rows x vocab_size Tensor (1.2.0+)."""
        P.require(self.family, "logits", "the logits infer mode")
        return self._array(ll.MODE_LOGITS, prompt, options)

    def hidden_states(self, prompt: str | None = None, **options: Any) -> Tensor:
        """The last hidden layer for the input: a rows x embedding_size Tensor."""
        return self._array(ll.MODE_HIDDEN, prompt, options)

    @property
    def embedding_size(self) -> int:
        """Floats per row of ``embeddings=`` / ``image_embeddings=`` input. The runtime does
        not say before a run, so the first use asks it with a one-token hidden-states run
        (token 0) and keeps the answer; any hidden_states() call also sets it."""
        if self._embedding_size is None:
            self.hidden_states(tokens=[0])
        assert self._embedding_size is not None
        return self._embedding_size

    def abort(self) -> None:
        """Asks a run in progress to stop (from any thread); its stream then ends with
        finish_reason "abort"."""
        self._live().abort()

    @property
    def is_running(self) -> bool:
        return self._model is not None and self._model.is_running()

    # ---- the runtime's other functions ------------------------------------------------------
    def clear_kv_cache(self, keep_system_prompt: bool = False, *,
                       start_pos: Sequence[int] | int | None = None,
                       end_pos: Sequence[int] | int | None = None) -> None:
        """Forgets the conversation kept with ``keep_history`` (1.2.0+); 1.2.1+ can clear a
        position range (one start/end per batch slot)."""
        P.require(self.family, "clear_kv_cache", "clear_kv_cache")
        if start_pos is not None or end_pos is not None:
            P.require(self.family, "kv_cache_range", "clearing a kv-cache range")
        check_bool(keep_system_prompt, "keep_system_prompt")
        n = max(1, int(self.params.get("n_batch") or 1))

        def slots(v: Sequence[int] | int | None, what: str) -> list[int] | None:
            if v is None:
                return None
            if isinstance(v, int) and not isinstance(v, bool):
                v = [v] * n
            if not isinstance(v, Sequence):
                raise ParamTypeError(f"{what} must be an int or a list of ints")
            if len(v) != n:
                raise ParamError(f"{what}: need {n} positions (one per batch slot), "
                                 f"got {len(v)}")
            return [check_int(x, f"{what}[{i}]", 0) for i, x in enumerate(v)]
        starts, ends = slots(start_pos, "start_pos"), slots(end_pos, "end_pos")
        if (starts is None) != (ends is None):
            raise ParamError("give both start_pos and end_pos, or neither")
        if starts is not None and ends is not None:
            if any(map(int.__gt__, starts, ends)):
                raise ParamError(f"start_pos {starts} must not be after end_pos {ends}")
            held = self.kv_cache_size()  # the runtime refuses a range past what it holds
            for i, (end, size) in enumerate(zip(ends, held)):
                if end > size:
                    raise ParamError(f"end_pos[{i}] must be between 0 and {size} (the tokens "
                                     f"the kv cache holds in batch slot {i}), got {end}")
        self._live().clear_kv_cache(keep_system_prompt, starts, ends)

    def kv_cache_size(self) -> list[int]:
        """Tokens held in the kv cache, one number per batch slot (1.2.1+)."""
        P.require(self.family, "kv_cache_size", "kv_cache_size")
        return self._live().kv_cache_size(int(self.params.get("n_batch") or 1))

    def set_chat_template(self, system_prompt: str, prompt_prefix: str,
                          prompt_postfix: str) -> None:
        """Replaces the model's chat template (1.2.0+)."""
        P.require(self.family, "set_chat_template", "set_chat_template")
        self._live().set_chat_template(check_text(system_prompt, "system_prompt"),
                                       check_text(prompt_prefix, "prompt_prefix"),
                                       check_text(prompt_postfix, "prompt_postfix"))
        self._bare_template = not (system_prompt or prompt_prefix or prompt_postfix)

    def set_function_tools(self, system_prompt: str, tools: str | Sequence[Any],
                           tool_response_str: str = "tool_response") -> None:
        """Declares function tools (a JSON string or a list serialised to JSON) (1.2.1+)."""
        P.require(self.family, "set_function_tools", "set_function_tools")
        if not isinstance(tools, (str, Sequence)):
            raise ParamTypeError(f"tools must be a JSON string or a list, got "
                                 f"{type(tools).__name__}")
        text = check_text(tools if isinstance(tools, str) else json.dumps(list(tools)), "tools")
        try:  # the runtime takes a JSON list (or object) of function definitions
            parsed = json.loads(text)
        except ValueError as exc:
            raise ParamError(f"tools is not valid JSON: {exc}") from None
        if not isinstance(parsed, (list, dict)):
            raise ParamError(f"tools must be a JSON list (or object) of function definitions, "
                             f"got {type(parsed).__name__}")
        self._live().set_function_tools(check_text(system_prompt, "system_prompt"),
                                        text,
                                        check_text(tool_response_str, "tool_response_str"))

    def load_lora(self, path: str | os.PathLike[str], name: str | None = None,
                  scale: float = 1.0) -> str:
        """Loads a LoRA adapter; returns the name to pass as ``generate(lora=...)``."""
        path = check_path(path, "path")
        if not os.path.isfile(path):
            raise ModelLoadError(f"no such LoRA adapter file: {path}")
        name = check_text(name or os.path.splitext(os.path.basename(path))[0], "name")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ParamTypeError(f"scale must be a number, got {type(scale).__name__}")
        if not math.isfinite(scale):
            raise ParamError(f"scale must be a finite number, got {scale!r}")
        if name in self._loras:
            raise ParamError(f"a LoRA adapter named {name!r} is already loaded; give another "
                             "name")
        self._live().load_lora(path, name, float(scale))
        self._loras.append(name)
        return name

    def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Loads a prompt cache saved by ``generate(save_prompt_cache=path)``."""
        path = check_path(path, "path")
        if not os.path.isfile(path):
            raise ModelLoadError(f"no such prompt cache file: {path}")
        self._live().load_prompt_cache(path)

    def release_prompt_cache(self) -> None:
        self._live().release_prompt_cache()

    def set_cross_attn_params(self, encoder_k_cache: Any, encoder_v_cache: Any,
                              encoder_mask: Any, encoder_pos: Sequence[int]) -> None:
        """The encoder outputs for cross attention (1.2.1+; load with use_cross_attn=True):
        float32 caches of equal length, and one mask value and position per encoder token."""
        if "use_cross_attn" in P.schema(self.family) and not self.params["use_cross_attn"]:
            raise ParamError("set_cross_attn_params needs the model loaded with "
                             "use_cross_attn=True")
        if isinstance(encoder_pos, (str, bytes)) or not isinstance(encoder_pos, Sequence):
            raise ParamTypeError("encoder_pos must be a sequence of ints")
        pos = [check_int(p, f"encoder_pos[{i}]", -P.INT32_MAX - 1)
               for i, p in enumerate(encoder_pos)]
        if len(pos) > self.context_length:
            raise ParamError(f"encoder_pos has {len(pos)} tokens; at most max_context_len "
                             f"({self.context_length}) fit")
        self._live().set_cross_attn_params(encoder_k_cache, encoder_v_cache, encoder_mask, pos)
        self._cross_attn_set = True

    # ---- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Aborts a run in progress (any thread may call this), waits for the runtime, and
        frees the model. Idempotent."""
        if self._model is not None:
            self._model.close()

    def __enter__(self) -> CoreLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<rkllm.LLM {self.model_path!r} on {self.runtime.release or self.family}"
                f"{' (simulated)' if self.is_simulator else ''}, {state}>")
