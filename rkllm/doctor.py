"""``rkllm doctor``: check this machine for everything the RKLLM runtime needs, and say how to
fix what is missing.

The checks read machine facts through :mod:`rkllm.machine` (files under a ``root``: ``/``
normally, fake system trees in tests/data/) and find the runtime with the package's one resolver
(:func:`rkllm.runtime_finder.find_runtime`, the same answer ``rkllm.LLM`` gets). Nothing here
loads the runtime: the library is read as a file (its ELF header and its release string), so
doctor still works when the library cannot be loaded.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rkllm import machine, releases
from rkllm.errors import RKLLMError
from rkllm.machine import RUNTIME_NAME, RuntimeFile, System, human_size
from rkllm.runtime_finder import find_runtime
from rkllm.sim import SIM_DIR

MIN_DRIVER = (0, 9, 8)
MIN_OPEN_FILES = 10240

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass
class Check:
    name: str
    status: str                 # ok, warn, fail, info
    summary: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check]

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def get(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not self.failed, "checks": [asdict(c) for c in self.checks]}


# -- checks -------------------------------------------------------------------------------------
def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def check_os(sysview: System) -> Check:
    arch = sysview.machine()
    kernel = (sysview.read("/proc/sys/kernel/osrelease") or "").strip() or (
        platform.release() if sysview.is_live else "unknown")
    system = "Linux" if sysview.exists("/proc") else platform.system()
    data = {"system": system, "machine": arch, "kernel": kernel,
            "python": platform.python_version()}
    if system != "Linux":
        return Check("os", FAIL, f"{system} {arch}: the RKLLM runtime is Linux-only",
                     "use a Linux board image (or the simulator on any Linux host)", data)
    if arch in ("aarch64", "arm64"):
        return Check("os", OK, f"Linux {kernel} on aarch64", data=data)
    if arch.startswith("armv7") or arch == "armhf":
        return Check("os", OK, f"Linux {kernel} on 32-bit ARM (armhf runtime)", data=data)
    return Check("os", INFO, f"Linux {kernel} on {arch}: not an ARM board, the NPU runtime "
                             f"cannot run here", data=data)


def check_board(sysview: System) -> Check:
    compat = machine.device_tree_strings(sysview, "compatible")
    model = " ".join(machine.device_tree_strings(sysview, "model")).strip()
    data: dict[str, Any] = {"model": model or None, "compatible": compat,
                            "platform": machine.board_soc(sysview)}
    if not compat:
        return Check("board", INFO, "no device tree: this is not a Rockchip board (no NPU)",
                     data=data)
    soc = data["platform"]
    if soc:
        return Check("board", OK, f"{model or 'board'} ({soc.upper()})", data=data)
    other = machine.rockchip_soc(sysview)
    if other:
        return Check("board", FAIL, f"{model or 'board'} ({other.upper()}): the RKLLM runtime "
                                    f"supports {', '.join(s.upper() for s in releases.SOCS)}",
                     "use one of the supported SoCs, or the simulator", data)
    return Check("board", INFO, f"{model or compat[0]}: not a Rockchip SoC (no RKNPU)",
                 data=data)


def check_driver(sysview: System, board: Check) -> Check:
    soc = board.data.get("platform")
    mainline = machine.mainline_npu_driver(sysview)
    if mainline:
        return Check("npu_driver", FAIL,
                     "the mainline 'rocket' NPU driver is loaded; librkllmrt.so only works with "
                     "Rockchip's rknpu driver",
                     "boot a vendor (Rockchip BSP) kernel that ships rknpu 0.9.8 or newer",
                     {"driver": "rocket", "source": mainline})
    version = None
    source = None
    unreadable = []
    for f in machine.DRIVER_FILES:
        p = sysview.path(f)
        try:
            text = p.read_text()
        except PermissionError:
            unreadable.append(f)
            continue
        except OSError:
            continue
        if _version_tuple(text):
            version, source = _version_tuple(text), f
            break
    if version is None and sysview.is_live and soc:
        drm = machine.drm_driver_version()
        if drm:
            version, source = _version_tuple(drm[1]), f"DRM_IOCTL_VERSION ({drm[0]})"
    devfreq = [p.name for p in sysview.glob("/sys/class/devfreq/*npu*")]
    data: dict[str, Any] = {"version": ".".join(map(str, version)) if version else None,
                            "source": source, "devfreq": devfreq, "minimum": "0.9.8"}
    if version is None:
        if not soc and not devfreq:
            return Check("npu_driver", INFO, "no NPU driver (no NPU on this machine)",
                         data=data)
        if unreadable:
            return Check("npu_driver", WARN,
                         f"the rknpu driver version is readable by root only ({unreadable[0]})",
                         "run `sudo rkllm doctor` to read it", data)
        return Check("npu_driver", FAIL if soc else WARN,
                     "no rknpu driver found (no version file, no NPU device)",
                     "boot a vendor (Rockchip BSP) kernel with the rknpu driver 0.9.8 or newer",
                     data)
    shown = data["version"]
    if version < MIN_DRIVER:
        return Check("npu_driver", FAIL,
                     f"rknpu driver {shown} is too old: the runtime needs 0.9.8 or newer",
                     "update the board's kernel (vendor BSP kernel 5.10/6.1 with rknpu >= 0.9.8; "
                     "e.g. your distribution's latest vendor kernel package)", data)
    return Check("npu_driver", OK, f"rknpu driver {shown} (from {source})", data=data)


def locate_runtime(sysview: System, runtime: str | os.PathLike[str] | None = None
                   ) -> tuple[RuntimeFile | None, str | None]:
    """The runtime ``rkllm.LLM(runtime=runtime)`` would load here, read as a file; else None
    and why none."""
    try:
        choice = find_runtime(runtime, root=sysview.root)
        return machine.read_runtime_file(choice.path, choice.why), None
    except (RKLLMError, ValueError, OSError) as exc:  # not found, unreadable, bad spec
        return None, str(exc)


def check_runtime(sysview: System, board: Check,
                  runtime: str | os.PathLike[str] | None = None
                  ) -> tuple[Check, RuntimeFile | None]:
    found, why_not = locate_runtime(sysview, runtime)
    on_board = bool(board.data.get("platform"))
    if found is None:
        missing = {"path": None, "error": why_not}
        if not on_board and runtime is None and not os.environ.get("RKLLM_LIBRARY"):
            return Check("runtime", INFO, f"no {RUNTIME_NAME} (not needed for the simulator)",
                         data=missing), None
        return Check("runtime", FAIL, f"no usable {RUNTIME_NAME}: {why_not}",
                     "`rkllm runtime pull` installs a verified vendor runtime", missing), None
    data: dict[str, Any] = {
        "path": found.path, "release": found.release, "family": found.family,
        "arch": found.arch, "needed": list(found.needed), "simulator": found.is_simulator,
        "found_by": found.source}
    if found.release is None:
        return Check("runtime", WARN, f"{found.path}: release string not found in the file",
                     "reinstall the runtime with `rkllm runtime pull`", data), found
    here = sysview.machine()
    want = "aarch64" if here in ("aarch64", "arm64") else (
        "armhf" if here.startswith("armv7") else here)
    if found.arch and want in machine.ARCHES and found.arch != want \
            and not found.is_simulator:
        return Check("runtime", FAIL, f"{found.path} is built for {found.arch}, this system "
                                      f"is {want}", f"install the {want} runtime", data), found
    family = f"family {found.family}" if found.family else "unsupported release"
    kind = "simulated runtime" if found.is_simulator else "runtime"
    summary = f"{kind} {found.release} ({family}) at {found.path}, from {found.source}"
    status = OK if found.family else FAIL
    return Check("runtime", status, summary,
                 None if found.family else "use runtime 1.1.0 or newer", data), found


def check_libraries(sysview: System, runtime: RuntimeFile | None) -> Check:
    if runtime is None:
        return Check("libraries", INFO, "no runtime, nothing to check")
    system_libs = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "ld-linux", "librt.so",
                   "libgcc_s.so", "libstdc++.so")
    extra = [Path(runtime.path).parent]
    missing, found = [], {}
    for lib in runtime.needed:
        if lib.startswith(system_libs):
            continue
        hit = machine.find_library(sysview, lib, extra)
        if hit is None:
            missing.append(lib)
        else:
            found[lib] = str(hit)
    data = {"needed": list(runtime.needed), "found": found, "missing": missing}
    if missing:
        fixes = []
        for lib in missing:
            if lib.startswith("libomp"):
                fixes.append("libomp: `sudo apt install libomp5` (or libomp-dev), or put the "
                             "vendor's libomp.so next to librkllmrt.so")
            else:
                fixes.append(f"{lib}: install the package that provides it")
        return Check("libraries", FAIL, f"the runtime needs {', '.join(missing)}, not found",
                     "; ".join(fixes), data)
    omp = [lib for lib in runtime.needed if "omp" in lib]
    extra_note = f" (OpenMP: {', '.join(omp)})" if omp else ""
    return Check("libraries", OK, f"all libraries the runtime needs are present{extra_note}",
                 data=data)


def check_cpu(sysview: System, board: Check) -> Check:
    cpuinfo = sysview.read("/proc/cpuinfo") or ""
    feats: set[str] = set()
    for m in re.finditer(r"(?mi)^(?:features|flags)\s*:\s*(.*)$", cpuinfo):
        feats.update(m.group(1).split())
    parts = sorted({m.group(1) for m in re.finditer(r"(?m)^CPU part\s*:\s*(\S+)", cpuinfo)})
    arch = sysview.machine()
    data = {"features": sorted(feats), "cpu_parts": parts}
    if arch not in ("aarch64", "arm64") and not arch.startswith("armv7"):
        return Check("cpu", INFO, f"{arch} CPU: only the simulated runtime runs here",
                     data=data)
    if arch.startswith("armv7"):
        need = {"neon", "vfpv4"}
    else:
        need = {"fp", "asimd"}
    missing = sorted(need - feats)
    if missing:
        return Check("cpu", FAIL, f"CPU lacks {', '.join(missing)}: the runtime would stop with "
                                  f"'Illegal instruction'",
                     "run on a supported Rockchip SoC", data)
    fast = ["fphp", "asimdhp", "asimddp"]
    have_fast = [f for f in fast if f in feats]
    data["fp16_dotprod"] = have_fast
    if arch.startswith("armv7"):
        return Check("cpu", OK, "NEON/VFPv4 present", data=data)
    soc = board.data.get("platform")
    if soc == "rk3588" and len(have_fast) < len(fast):
        return Check("cpu", WARN, f"RK3588 cores should report {' '.join(fast)}; missing "
                                  f"{' '.join(sorted(set(fast) - set(have_fast)))}",
                     "a kernel/VM hiding CPU features makes the runtime's optimised paths "
                     "fail with 'Illegal instruction'; use the board's vendor kernel", data)
    extra = (f"fp16/dot-product: {' '.join(have_fast)}" if have_fast
             else "no fp16/dot-product extensions (normal for RK3576's Cortex-A72/A53)")
    return Check("cpu", OK, f"fp asimd present; {extra}", data=data)


def check_memory(sysview: System, largest_model: int) -> Check:
    mem = machine.meminfo(sysview)
    total, avail = mem.get("MemTotal"), mem.get("MemAvailable")
    data = {"total": total, "available": avail, "largest_cached_model": largest_model or None}
    if total is None:
        return Check("memory", INFO, "memory size unknown (no /proc/meminfo)", data=data)
    summary = f"{human_size(total)} total, {human_size(avail or 0)} available"
    need = int(largest_model * 1.2) if largest_model else 0
    if need and avail is not None and avail < need:
        return Check("memory", WARN, f"{summary}: the largest cached model "
                                     f"({human_size(largest_model)}) may not fit",
                     "close other programs, or use a smaller (w4a16) model", data)
    return Check("memory", OK, summary, data=data)


def check_open_files(sysview: System) -> Check:
    soft, hard = machine.open_file_limits(sysview)
    data = {"soft": soft, "hard": hard, "recommended": MIN_OPEN_FILES}
    if soft is not None and soft < MIN_OPEN_FILES:
        return Check("open_files", WARN,
                     f"open-file limit {soft}: the runtime opens one file per NPU buffer and "
                     f"fails with 'Too many open files' below about {MIN_OPEN_FILES}",
                     "run `ulimit -n 102400` before starting (or raise `nofile` in "
                     "/etc/security/limits.conf)", data)
    return Check("open_files", OK, f"open-file limit {soft if soft is not None else 'unlimited'}",
                 data=data)


def check_models(board: Check, runtime: RuntimeFile | None,
                 cache: str | os.PathLike[str] | None) -> tuple[Check, int]:
    from rkllm.model_cache import list_cached
    from rkllm.modelfile import check_compatibility, inspect_model
    try:
        models = list_cached(cache)
    except Exception as exc:  # a broken cache must not break doctor
        return Check("models", WARN, f"cannot read the model cache: {exc}"), 0
    if not models:
        return Check("models", INFO, "no cached models",
                     "`rkllm pull REPO` downloads one; `rkllm run demo` needs none"), 0
    soc = board.data.get("platform")
    release = runtime.release if runtime else None
    rows: list[dict[str, Any]] = []
    bad = 0
    for m in models:
        findings = check_compatibility(inspect_model(m.path, repo=m.repo), release, soc)
        refused = any(f.refuse for f in findings)
        bad += refused
        rows.append({"ref": m.ref, "size": m.size, "platform": m.platform,
                     "toolkit_version": m.toolkit_version,
                     "findings": [{"level": f.level, "message": f.message} for f in findings]})
    largest = max(m.size for m in models)
    data: dict[str, Any] = {"models": rows}
    if bad:
        names = ", ".join(r["ref"] for r in rows if any(f["level"] == "refuse"
                                                         for f in r["findings"]))
        return Check("models", WARN, f"{bad} of {len(models)} cached models will not load "
                                     f"here: {names}",
                     "see `rkllm info MODEL`; pull the build for this board/runtime", data), largest
    return Check("models", OK, f"{len(models)} cached model(s), none known to be incompatible",
                 data=data), largest


def check_simulator() -> Check:
    """Off the board: is the simulated runtime (shipped in the package) there to use?"""
    families = [f for f in releases.FAMILIES
                if (SIM_DIR / f"librkllmrt-sim-{f}.so").is_file()]
    demo = SIM_DIR / "demo.rkllm"
    data = {"families": families, "demo_model": str(demo) if demo.is_file() else None}
    if not families:
        return Check("simulator", WARN, "no NPU here, and the simulated runtime is not built",
                     "reinstall rkllm-cffi (pip install --force-reinstall rkllm-cffi)", data)
    return Check("simulator", INFO, f"no NPU here: the simulated runtime (families "
                                    f"{', '.join(families)}) runs everything else",
                 "try: rkllm run demo \"Hello\"", data)


def run(root: str | os.PathLike[str] = "/", *,
        cache: str | os.PathLike[str] | None = None,
        runtime: str | os.PathLike[str] | None = None) -> Report:
    """Run every check against the system under ``root``."""
    sysview = System(root)
    board = check_board(sysview)
    runtime_check, found = check_runtime(sysview, board, runtime)
    models_check, largest = check_models(board, found, cache)
    checks = [
        check_os(sysview),
        board,
        check_driver(sysview, board),
        runtime_check,
        check_libraries(sysview, found),
        check_cpu(sysview, board),
        check_memory(sysview, largest),
        check_open_files(sysview),
        models_check,
    ]
    if not board.data.get("platform"):
        checks.append(check_simulator())
    return Report(checks)
