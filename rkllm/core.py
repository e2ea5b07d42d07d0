"""The loaded model: generation, the runtime's other calls, lifetime.

:class:`CoreLLM` is everything :class:`rkllm.LLM` does that needs no chat or asyncio layer;
``rkllm.LLM`` (rkllm/llm.py) adds those on top, so the layers only point down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from rkllm import _lowlevel as ll
from rkllm import params as P
from rkllm.errors import ClosedError, ModelLoadError, ParamError
from rkllm.runtime_finder import load_runtime
from rkllm.stream import Result, Stream, Tensor, _Run


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
        given = dict(params or {})
        for name, value in kwparams.items():
            if name in given:
                raise ParamError(f"{name} given both in params= and as a keyword")
            given[name] = value
        self.runtime = load_runtime(runtime, abi=abi)
        self.model_path = os.fspath(model)
        self.params = P.validate(self.family, given, self.runtime.default_params())
        if not os.path.isfile(self.model_path):
            raise ModelLoadError(f"no such model file: {self.model_path}")
        if check_model:
            self._check_model()
        self._model = ll.Model(self.runtime, self.model_path, self.params)

    def _check_model(self) -> None:
        """What the file says about itself against this board and runtime, before
        rkllm_init (the rule: rkllm.modelfile.check_compatibility, docs/models.md)."""
        import warnings

        from rkllm.machine import board_soc
        from rkllm.modelfile import check_compatibility, inspect_model

        # On the simulator the board does not matter, and the simulator itself names a file
        # that is not a simulated model precisely; a real runtime is spared simulated models.
        board = None if self.is_simulator else board_soc()
        findings = check_compatibility(inspect_model(self.model_path),
                                       self.release or self.family, board,
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
    def closed(self) -> bool:
        return self._model is None or self._model.closed

    def _live(self) -> ll.Model:
        if self._model is None or self._model.closed:
            raise ClosedError("the model is closed")
        return self._model

    def _has(self, feature: str) -> bool:
        return P.family_key(self.family) >= P.family_key(P.RUN_FEATURES[feature])

    # ---- generation -------------------------------------------------------------------------
    def _start(self, prompt: str | None, *, mode: int, chunked: bool, collect: bool,
               tokens: Sequence[int] | None = None, embeddings: Any = None,
               n_embed_tokens: int | None = None, image_embeddings: Any = None,
               n_image_tokens: int | None = None, n_images: int = 1,
               image_size: tuple[int, int] = (0, 0), image_markers: tuple[str, str, str] | None
               = None, max_new_tokens: int | None = None, keep_history: bool = False,
               role: str | None = None, enable_thinking: bool | None = None,
               lora: str | None = None, save_prompt_cache: str | os.PathLike[str] | None = None,
               **sampling: Any) -> Stream:
        model = self._live()
        fam = self.family
        kw: dict[str, Any] = {"mode": mode}
        inputs = [x is not None for x in (tokens, embeddings)]
        if image_embeddings is not None:
            if prompt is None:
                raise ParamError("image_embeddings need a prompt (with the image placeholder)")
            if n_image_tokens is None:
                raise ParamError("image_embeddings need n_image_tokens")
            kw.update(input_type=ll.INPUT_MULTIMODAL, prompt=prompt,
                      image_embed=image_embeddings, n_image_tokens=n_image_tokens,
                      n_image=n_images, image_width=image_size[0], image_height=image_size[1])
            if image_markers is not None:
                P.require(fam, "image_markers", "image_markers per run")
                kw.update(zip(("image_start", "image_end", "image_content"), image_markers))
        elif sum(inputs) + (prompt is not None) != 1:
            raise ParamError("give exactly one input: a prompt, tokens= or embeddings=")
        elif prompt is not None:
            if not isinstance(prompt, str):
                raise ParamError(f"prompt must be a str, got {type(prompt).__name__}")
            kw.update(input_type=ll.INPUT_PROMPT, prompt=prompt)
        elif tokens is not None:
            ids = list(tokens)
            if not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ParamError("tokens must be a non-empty sequence of ints")
            kw.update(input_type=ll.INPUT_TOKEN, token_ids=ids)
        else:
            if not n_embed_tokens or n_embed_tokens < 1:
                raise ParamError("embeddings need n_embed_tokens (the number of rows)")
            kw.update(input_type=ll.INPUT_EMBED, embed=embeddings, n_embed_tokens=n_embed_tokens)
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
                    max_new_tokens < 1:
                raise ParamError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        limit = max_new_tokens if max_new_tokens is not None else self.params["max_new_tokens"]
        kw["max_new_tokens"] = max_new_tokens if max_new_tokens is not None else -1
        if keep_history:
            P.require(fam, "keep_history")
            kw["keep_history"] = True
        if role is not None:
            P.require(fam, "role")
            if not isinstance(role, str):
                raise ParamError(f"role must be a str, got {type(role).__name__}")
            kw["role"] = role
        if enable_thinking is not None:
            P.require(fam, "enable_thinking")
            if not isinstance(enable_thinking, bool):
                raise ParamError("enable_thinking must be a bool")
            kw["enable_thinking"] = enable_thinking
        if lora is not None:
            if lora not in self._loras:
                raise ParamError(f"no LoRA adapter named {lora!r} is loaded (loaded: "
                                 f"{', '.join(self._loras) or 'none'}); use load_lora first")
            kw["lora_adapter_name"] = lora
        if save_prompt_cache is not None:
            kw["save_prompt_cache_path"] = os.fspath(save_prompt_cache)
        unknown = set(sampling) - {s.name for s in P.SAMPLING_PARAMS}
        if unknown:
            name = sorted(unknown)[0]
            raise P._unknown(name, fam, [s.name for s in P.SAMPLING_PARAMS] + [
                "max_new_tokens", "keep_history", "role", "enable_thinking", "lora",
                "save_prompt_cache", "chunked", "tokens", "embeddings"])
        kw["sampling"] = P.validate_sampling(fam, sampling, self.params)
        run = _Run(model, limit=limit, collect=collect, array_kind=mode)
        model.start(**kw)
        return Stream(run, chunked)

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
        return self._start(prompt, mode=ll.MODE_GENERATE, chunked=chunked, collect=False,
                           **options)

    def complete(self, prompt: str | None = None, **options: Any) -> Result:
        """Runs to the end and returns the text, finish reason, token ids and perf."""
        stream = self._start(prompt, mode=ll.MODE_GENERATE, chunked=True, collect=True,
                             **options)
        run = stream._run
        for _ in stream:
            pass
        perf = stream.perf
        assert perf is not None and stream.finish_reason is not None
        return Result("".join(run.parts), stream.finish_reason,
                      [i for i in run.ids if i >= 0], perf)

    def _array(self, mode: int, prompt: str | None, options: dict[str, Any]) -> Tensor:
        stream = self._start(prompt, mode=mode, chunked=True, collect=False, **options)
        for _ in stream:
            pass
        tensor = stream._run.array
        if tensor is None:
            raise ParamError("the runtime returned no data for this request")
        return tensor

    def logits(self, prompt: str | None = None, **options: Any) -> Tensor:
        """The logits of the input's last position(s): a rows x vocab_size Tensor (1.2.0+)."""
        P.require(self.family, "logits", "the logits infer mode")
        return self._array(ll.MODE_LOGITS, prompt, options)

    def hidden_states(self, prompt: str | None = None, **options: Any) -> Tensor:
        """The last hidden layer for the input: a rows x embedding_size Tensor."""
        return self._array(ll.MODE_HIDDEN, prompt, options)

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
        n = max(1, int(self.params.get("n_batch") or 1))

        def slots(v: Sequence[int] | int | None) -> list[int] | None:
            if v is None:
                return None
            values = [v] * n if isinstance(v, int) else list(v)
            if len(values) != n:
                raise ParamError(f"need {n} positions (one per batch slot), got {len(values)}")
            return values
        self._live().clear_kv_cache(keep_system_prompt, slots(start_pos), slots(end_pos))

    def kv_cache_size(self) -> list[int]:
        """Tokens held in the kv cache, one number per batch slot (1.2.1+)."""
        P.require(self.family, "kv_cache_size", "kv_cache_size")
        return self._live().kv_cache_size(int(self.params.get("n_batch") or 1))

    def set_chat_template(self, system_prompt: str, prompt_prefix: str,
                          prompt_postfix: str) -> None:
        """Replaces the model's chat template (1.2.0+)."""
        P.require(self.family, "set_chat_template", "set_chat_template")
        self._live().set_chat_template(system_prompt, prompt_prefix, prompt_postfix)

    def set_function_tools(self, system_prompt: str, tools: str | Sequence[Any],
                           tool_response_str: str = "tool_response") -> None:
        """Declares function tools (a JSON string or a list serialised to JSON) (1.2.1+)."""
        P.require(self.family, "set_function_tools", "set_function_tools")
        text = tools if isinstance(tools, str) else json.dumps(list(tools))
        self._live().set_function_tools(system_prompt, text, tool_response_str)

    def load_lora(self, path: str | os.PathLike[str], name: str | None = None,
                  scale: float = 1.0) -> str:
        """Loads a LoRA adapter; returns the name to pass as ``generate(lora=...)``."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelLoadError(f"no such LoRA adapter file: {path}")
        name = name or os.path.splitext(os.path.basename(path))[0]
        self._live().load_lora(path, name, float(scale))
        self._loras.append(name)
        return name

    def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Loads a prompt cache saved by ``generate(save_prompt_cache=path)``."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelLoadError(f"no such prompt cache file: {path}")
        self._live().load_prompt_cache(path)

    def release_prompt_cache(self) -> None:
        self._live().release_prompt_cache()

    def set_cross_attn_params(self, encoder_k_cache: Any, encoder_v_cache: Any,
                              encoder_mask: Any, encoder_pos: Sequence[int]) -> None:
        """The encoder outputs for cross attention (1.2.1+; load with use_cross_attn=True):
        float32 caches of equal length, and one mask value and position per encoder token."""
        self._live().set_cross_attn_params(encoder_k_cache, encoder_v_cache, encoder_mask,
                                           encoder_pos)

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
