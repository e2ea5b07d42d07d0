"""Which runtime library to use: the one resolver behind ``rkllm.LLM``, every CLI verb and
``rkllm doctor``.

A runtime *spec* is one of

* a path to a ``librkllmrt.so``;
* a pinned vendor release such as ``"1.3.0"`` (fetched with ``rkllm runtime pull``, or the one
  bundled in the wheel);
* ``"sim"`` or ``"sim:1.2.1"`` (a release or family): the simulated runtime.

Order: ``runtime=`` (a spec), else ``RKLLM_LIBRARY`` (a spec, the same forms), else the runtime
bundled in the package, else the system's (``LD_LIBRARY_PATH``, ld.so.conf, the usual library
directories). :func:`find_runtime` says where and why without loading anything;
:func:`load_runtime` loads what it found (the ABI is detected from the library; ``abi=`` or
``RKLLM_ABI`` force it).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rkllm import machine, releases
from rkllm.errors import ParamError, RuntimeNotFoundError, UnsupportedRuntimeError

if TYPE_CHECKING:
    from rkllm._lowlevel import Runtime

Spec = str | os.PathLike[str]
PACKAGE_DIR = Path(__file__).resolve().parent
ENV = "RKLLM_LIBRARY"
NO_RUNTIME_HINT = ('no RKLLM runtime on this machine: runtime="sim" (or RKLLM_LIBRARY=sim) '
                   "runs the simulated runtime; `rkllm runtime pull` fetches a real one; "
                   "`rkllm doctor` explains what is missing")


@dataclass(frozen=True)
class RuntimeChoice:
    """Where the runtime is and why that one."""

    path: str
    why: str                      # e.g. "RKLLM_LIBRARY=sim:1.2.1 (simulated runtime 1.2.1)"
    simulated: bool = False


def is_sim_spec(spec: object) -> bool:
    return isinstance(spec, str) and (spec == "sim" or spec.startswith("sim:"))


def is_release_spec(spec: object) -> bool:
    return isinstance(spec, str) and re.fullmatch(r"v?\d+\.\d+\.\d+", spec) is not None


def _from_spec(spec: Spec, source: str, abi: str | None) -> RuntimeChoice:
    label = f"{source}={os.fspath(spec)}"
    if is_sim_spec(spec):
        assert isinstance(spec, str)
        wanted = spec[4:] or abi or releases.DEFAULT_FAMILY
        # imported here: `import rkllm` loads this module, and `python -m rkllm.sim` warns when
        # the package imported rkllm.sim before running it
        from rkllm import sim

        try:
            path = sim.library_path(wanted)
        except ValueError as exc:
            raise ParamError(f"{label}: {exc}") from None
        except FileNotFoundError as exc:
            raise RuntimeNotFoundError(str(exc)) from None
        return RuntimeChoice(path, f"{label} (simulated runtime {releases.family_of(wanted)})",
                             simulated=True)
    if is_release_spec(spec):
        assert isinstance(spec, str)
        from rkllm import runtimes  # the pin table and cache (standard library only)

        runtimes.release(spec)  # an unknown release is the first thing to report
        try:
            return RuntimeChoice(str(runtimes.library_path(spec)), f"{label} (pinned release)")
        except UnsupportedRuntimeError:
            if machine.runtime_arch() is not None:
                raise
            raise RuntimeNotFoundError(  # say what works here, not a `--arch` to fetch one
                f"{label}: Rockchip ships no runtime for {platform.machine()}; the simulated "
                f"runtime of that release runs here: sim:{spec}") from None
    return RuntimeChoice(os.fspath(spec), label)


def _search(sysview: machine.System) -> RuntimeChoice:
    tried: list[str] = []
    candidates: list[tuple[Path, str]] = []
    if sysview.is_live:
        arch = machine.runtime_arch()
        if arch:
            candidates.append((PACKAGE_DIR / "libs" / arch / machine.RUNTIME_NAME,
                               "bundled with rkllm-cffi"))
        for entry in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
            if entry:
                candidates.append((Path(entry) / machine.RUNTIME_NAME, "LD_LIBRARY_PATH"))
    candidates += [(d / machine.RUNTIME_NAME, "system library directory")
                   for d in machine.library_dirs(sysview)]
    for path, why in candidates:
        if path.is_file():
            return RuntimeChoice(str(path), why)
        tried.append(f"{path} ({why})")
    raise RuntimeNotFoundError(f"{NO_RUNTIME_HINT}. Looked for {machine.RUNTIME_NAME} in: "
                               + ", ".join(tried))


def find_runtime(runtime: Spec | None = None, *, abi: str | None = None,
                 root: str | os.PathLike[str] = "/") -> RuntimeChoice:
    """Where the runtime for ``runtime`` is and why (see the module docstring); never loads
    it. Raises RuntimeNotFoundError (suggesting ``runtime="sim"``) when there is none, ParamError
    for a malformed spec. ``root`` points the system search at a fake system tree (then
    ``RKLLM_LIBRARY`` and the bundled runtime are not consulted)."""
    abi = abi or os.environ.get("RKLLM_ABI") or None
    sysview = machine.System(root)
    if runtime is not None and os.fspath(runtime) != "":
        return _from_spec(runtime, "runtime", abi)
    env = os.environ.get(ENV, "")
    if env and sysview.is_live:
        return _from_spec(env, ENV, abi)
    return _search(sysview)


def load_runtime(runtime: Spec | None = None, *, abi: str | None = None) -> Runtime:
    """Finds (:func:`find_runtime`) and loads a runtime, once per library and ABI. The
    simulated runtime says so itself on stderr when it loads a model (RKLLM_SIM_QUIET=1
    hushes it)."""
    from rkllm import _lowlevel as ll

    choice = find_runtime(runtime, abi=abi)
    return ll.open_runtime(choice.path, path_source=choice.why,
                           abi=abi or os.environ.get("RKLLM_ABI") or None)
