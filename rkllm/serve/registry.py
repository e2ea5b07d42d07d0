"""Which model a name in a request means, and which names a request may use at all.

A request may name: a model given on the command line (by its reference, or a file's name
without ``.rkllm``), an alias from the config file, ``demo``, a model in the Hugging Face cache
(``REPO`` or ``REPO:FILE``, never downloaded by a request other than ``/api/pull``), or a file
inside a folder the config allows. Nothing else: a request's reference never reaches an
arbitrary path (``../../etc/passwd`` and absolute paths outside the allowed folders are
refused). ``NAME:latest`` means ``NAME`` (what Ollama's clients send).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rkllm.serve.errors import APIError
from rkllm.serve.settings import Alias, Settings


@dataclass(frozen=True)
class ModelSpec:
    """A servable model: its name for clients, its file, and its settings."""

    name: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)   # load-time
    options: dict[str, Any] = field(default_factory=dict)  # request defaults
    system: str | None = None
    template: str | None = None
    keep_alive: float | None = None


def _display_name(ref: str) -> str:
    if os.sep in ref or ref.endswith(".rkllm"):
        return os.path.basename(ref).removesuffix(".rkllm")
    return ref


def _not_found(name: str) -> APIError:
    return APIError(404, f"model {name!r} not found: not served here and not in the model "
                         f"cache (see GET /v1/models or /api/tags; pull it first with "
                         f"/api/pull or `rkllm pull`)", param="model", code="model_not_found")


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._served: dict[str, ModelSpec] = {}  # command line + aliases, resolved at start

    def resolve_startup(self) -> list[ModelSpec]:
        """Resolves the command line's models and the aliases (may download: they come from
        the operator, not from a request)."""
        from rkllm.hub import resolve_model

        params = self.settings.default_params
        for ref in self.settings.models:
            spec = ModelSpec(_display_name(ref), resolve_model(ref), dict(params))
            self._served[spec.name] = spec
        for alias in self.settings.aliases.values():
            self._served[alias.name] = self._from_alias(alias, resolve_model(alias.model))
        return list(self._served.values())

    def _from_alias(self, alias: Alias, path: str) -> ModelSpec:
        return ModelSpec(alias.name, path, {**self.settings.default_params, **alias.params},
                         dict(alias.options), alias.system, alias.template, alias.keep_alive)

    @property
    def served(self) -> list[ModelSpec]:
        return list(self._served.values())

    def resolve(self, name: Any) -> ModelSpec:
        """The model a request names (APIError 400/404 otherwise; never a network call)."""
        if not isinstance(name, str) or not name.strip():
            raise APIError(400, "'model' must be a non-empty string naming a model",
                           param="model", code="invalid_value")
        name = name.strip()
        key = name.removesuffix(":latest")
        spec = self._served.get(key)
        if spec is not None:
            return spec
        if key == "demo":
            from rkllm.hub import demo_model_path

            return ModelSpec("demo", demo_model_path(), dict(self.settings.default_params))
        path = self._request_path(key) or self._cached(key)
        if path is None:
            raise _not_found(name)
        return ModelSpec(key, path, dict(self.settings.default_params))

    def _request_path(self, ref: str) -> str | None:
        """A file path in a request: only inside an allowed folder."""
        looks_like_path = ref.startswith(("/", ".", "~")) or ".." in ref.split("/") or \
            ref.endswith(".rkllm") and "/" not in ref
        if not looks_like_path:
            return None
        real = os.path.realpath(os.path.expanduser(ref))
        for folder in self.settings.allowed_dirs:
            if os.path.commonpath([real, folder]) == folder and os.path.isfile(real) \
                    and ".." not in ref.split("/"):
                return real
        raise APIError(403, f"model {ref!r} refused: a request may name served models, "
                            f"aliases and cached models, not file paths (outside the folders "
                            f"the server's config allows)", param="model",
                       code="model_path_refused")

    def _cached(self, ref: str) -> str | None:
        from rkllm.hub import cache_dir, cached_model_files, parse_ref

        parsed = parse_ref(ref)
        if parsed is None:
            return None
        if parsed.file is None:
            files = cached_model_files(parsed.repo)
            if len(files) > 1:
                names = ", ".join(os.path.basename(f) for f in files)
                raise APIError(400, f"{ref} has several cached model files ({names}); name one "
                                    f"as {ref}:FILE", param="model", code="ambiguous_model")
            return files[0] if files else None
        if ".." in parsed.file.split("/"):
            raise APIError(403, f"model {ref!r} refused: '..' in a file name", param="model",
                           code="model_path_refused")
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(parsed.repo, parsed.file, cache_dir=str(cache_dir()))
        return hit if isinstance(hit, str) else None

    def available(self) -> list[ModelSpec]:
        """Every name a client may use: served models, aliases, then cached hub models."""
        out = {s.name: s for s in self._served.values()}
        try:
            from rkllm.model_cache import list_cached

            for m in list_cached():
                out.setdefault(m.ref, ModelSpec(m.ref, m.path, dict(self.settings.default_params)))
        except Exception:  # noqa: BLE001 - an unreadable cache hides its models, not the served ones
            pass
        return list(out.values())
