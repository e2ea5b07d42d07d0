"""Which runtime library to load: the one resolver used by the Python API and the CLI.

Order: ``runtime=`` (a path to ``librkllmrt.so``; a pinned vendor release such as ``"1.3.0"``
fetched with ``rkllm runtime pull``; ``"sim"`` or ``"sim:1.3.0"`` for the simulated runtime),
else ``RKLLM_LIBRARY`` (any of those), else the runtime bundled in the package, else the
system's. The ABI is detected from the library (``abi=`` or ``RKLLM_ABI`` force it).
"""

from __future__ import annotations

import os
import re

from rkllm import _lowlevel as ll
from rkllm.errors import ParamError, RuntimeNotFoundError


def _is_sim(spec: object) -> bool:
    return isinstance(spec, str) and (spec == "sim" or spec.startswith("sim:"))


def _sim_library(release: str, what: str) -> str:
    """The simulated runtime's path for a release or family (rkllm.sim knows where)."""
    from rkllm import sim

    try:
        return sim.library_path(release)
    except ValueError as exc:
        raise ParamError(f"{what}: {exc}") from None
    except FileNotFoundError as exc:
        raise RuntimeNotFoundError(str(exc)) from None


def _is_release(spec: object) -> bool:
    return isinstance(spec, str) and re.fullmatch(r"\d+\.\d+\.\d+", spec) is not None


def load_runtime(runtime: str | os.PathLike[str] | None = None, *,
                 abi: str | None = None) -> ll.Runtime:
    """Finds and loads a runtime (see the module docstring for the order). The simulated
    runtime says so itself on stderr when it loads a model (RKLLM_SIM_QUIET=1 hushes it)."""
    abi = abi or os.environ.get("RKLLM_ABI") or None
    spec: str | os.PathLike[str] | None = runtime
    source = "runtime="
    env = os.environ.get("RKLLM_LIBRARY", "")
    if spec is None and (_is_sim(env) or _is_release(env)):
        spec, source = env, "RKLLM_LIBRARY"
    if _is_release(spec):
        # a pinned vendor release fetched by `rkllm runtime pull` (or the one bundled)
        from rkllm import runtimes

        assert isinstance(spec, str)
        path = runtimes.library_path(spec)
        return ll.open_runtime(str(path), path_source=f"{source}{spec} (pinned release)",
                               abi=abi)
    if _is_sim(spec):
        assert isinstance(spec, str)
        from rkllm.sim import DEFAULT_FAMILY

        wanted = spec[4:] or abi or DEFAULT_FAMILY
        rt = ll.open_runtime(_sim_library(wanted, source + spec),
                             path_source=f"simulated runtime {wanted}", abi=abi)
    elif spec is None:
        rt = ll.open_runtime(None, abi=abi)
    else:
        rt = ll.open_runtime(os.fspath(spec), path_source=source, abi=abi)
    return rt


