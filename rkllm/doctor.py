"""``rkllm doctor``: check this machine for everything the RKLLM runtime needs, and say how to
fix what is missing.

Every check reads files under a configurable ``root`` (``/`` normally; tests point it at fake
system trees in tests/data/), so the same code runs on a board, on a PC, and in tests. Nothing
here loads the runtime: the runtime library is found and read as a file (its ELF header and
its embedded release string), so doctor still works when the library cannot be loaded.
"""

from __future__ import annotations

import glob
import os
import platform as _platform
import re
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

MIN_DRIVER = (0, 9, 8)
MIN_OPEN_FILES = 10240
SUPPORTED_SOCS = ("rk3588", "rk3576", "rk3562", "rv1126b")
RUNTIME_NAME = "librkllmrt.so"

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
_ELF_MACHINES = {183: "aarch64", 40: "armhf", 62: "x86_64", 3: "i386", 243: "riscv64"}


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


# -- reading the system -------------------------------------------------------------------------
class System:
    """Files of a (possibly fake) system, relative to ``root``."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)
        self.is_live = self.root.resolve() == Path("/")

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def read(self, p: str) -> str | None:
        try:
            return self.path(p).read_bytes().decode("utf-8", "replace")
        except OSError:
            return None

    def exists(self, p: str) -> bool:
        return self.path(p).exists()

    def glob(self, pattern: str) -> list[Path]:
        return sorted(Path(x) for x in glob.glob(str(self.path(pattern))))

    def machine(self) -> str:
        if self.is_live:
            return _platform.machine()
        cpuinfo = self.read("/proc/cpuinfo") or ""
        if re.search(r"(?m)^CPU architecture\s*:\s*8", cpuinfo):
            return "aarch64"
        if re.search(r"(?m)^CPU architecture\s*:\s*7", cpuinfo):
            return "armv7l"
        return "x86_64" if re.search(r"(?m)^flags\s*:", cpuinfo) else "unknown"


def _dt_strings(text: str | None) -> list[str]:
    return [s for s in (text or "").split("\0") if s.strip()]


def detect_platform(root: str | os.PathLike[str] = "/") -> str | None:
    """The supported SoC named in the device tree (``rk3588``...), else None."""
    compat = _dt_strings(System(root).read("/proc/device-tree/compatible"))
    for entry in compat:
        m = re.fullmatch(r"rockchip,(rk3588s?|rk3576|rk3562|rv1126b)", entry.strip())
        if m:
            return "rk3588" if m.group(1) == "rk3588s" else m.group(1)
    return None


def _rockchip_soc(compat: list[str]) -> str | None:
    for entry in compat:
        m = re.fullmatch(r"rockchip,(r[kv]\d{4}[a-z]?)", entry.strip())
        if m:
            return m.group(1)
    return None


# -- the runtime library as a file --------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeFile:
    path: str
    release: str | None
    family: str | None
    arch: str | None
    needed: tuple[str, ...]
    is_simulator: bool
    source: str                 # how it was found
    loader_error: str | None = None  # why rkllm's own loader could not load it, if it tried


def _elf_info(data: bytes) -> tuple[str | None, tuple[str, ...]]:
    """(architecture, DT_NEEDED names) from an ELF image; (None, ()) if not ELF."""
    if data[:4] != b"\x7fELF":
        return None, ()
    bits64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(end + "H", data, 18)
    arch = _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    try:
        if bits64:
            shoff, = struct.unpack_from(end + "Q", data, 0x28)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        sections = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if bits64:
                _, stype, _, _, soff, ssize, link = struct.unpack_from(end + "IIQQQQI", data, off)
            else:
                _, stype, _, _, soff, ssize, link = struct.unpack_from(end + "IIIIIII", data, off)
            sections.append((stype, soff, ssize, link))
        needed: list[str] = []
        for stype, soff, ssize, link in sections:
            if stype != 6:  # SHT_DYNAMIC
                continue
            _, stroff, strsize, _ = sections[link]
            strtab = data[stroff:stroff + strsize]
            fmt, step = (end + "qQ", 16) if bits64 else (end + "iI", 8)
            for pos in range(soff, soff + ssize, step):
                tag, val = struct.unpack_from(fmt, data, pos)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    needed.append(strtab[val:strtab.index(b"\0", val)].decode())
        return arch, tuple(needed)
    except (struct.error, IndexError, ValueError):
        return arch, ()


_RELEASE_PATTERNS = (
    re.compile(rb"RKLLM SDK \(version: ?v?(\d+\.\d+\.\d+)"),
    re.compile(rb"rkllm[-_ ]runtime[^\n\0]{0,24}?v?(\d+\.\d+\.\d+)"),
)


def read_runtime_file(path: str | os.PathLike[str], source: str = "") -> RuntimeFile:
    """Release, family and architecture of a runtime library, read as a file."""
    from rkllm.inspect import family_of
    data = Path(path).read_bytes()
    arch, needed = _elf_info(data)
    release = None
    for pattern in _RELEASE_PATTERNS:
        m = pattern.search(data)
        if m:
            release = m.group(1).decode()
            break
    sim_name = re.search(r"librkllmrt-sim-(\d+\.\d+\.\d+)\.so", str(path))
    is_sim = bool(sim_name) or b"RKLLM-SIM" in data or b"RKLLM_SIM" in data
    if release is None and sim_name:  # the simulator's file name carries its family
        release = sim_name.group(1)
    family = None
    if release:
        try:
            family = family_of(release)
        except ValueError:
            family = None
    return RuntimeFile(str(path), release, family, arch, needed, is_sim, source)


def _candidate_runtimes(sysview: System) -> Iterable[tuple[Path, str]]:
    """Where a runtime may be, most specific first."""
    env = os.environ.get("RKLLM_LIBRARY")
    if env and sysview.is_live:
        yield Path(env), "RKLLM_LIBRARY"
    if sysview.is_live:
        try:
            from rkllm import runtimes
            for arch in runtimes.ARCHES:
                yield runtimes.bundled_dir(arch) / RUNTIME_NAME, "bundled with rkllm-cffi"
            for p in sorted(runtimes.cache_root().glob(f"*/*/{RUNTIME_NAME}"), reverse=True):
                yield p, "rkllm runtime pull"
        except Exception:  # the runtime helper's module is optional here
            pass
        for entry in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
            if entry:
                yield Path(entry) / RUNTIME_NAME, "LD_LIBRARY_PATH"
    for d in _library_dirs(sysview):
        yield d / RUNTIME_NAME, "system library path"


def _library_dirs(sysview: System) -> list[Path]:
    dirs = ["/usr/local/lib", "/usr/lib", "/lib", "/usr/lib/aarch64-linux-gnu",
            "/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf", "/usr/lib64"]
    for conf in [sysview.path("/etc/ld.so.conf"), *sysview.glob("/etc/ld.so.conf.d/*.conf")]:
        try:
            for line in conf.read_text().splitlines():
                line = line.strip()
                if line.startswith("/"):
                    dirs.append(line)
        except OSError:
            pass
    seen: list[Path] = []
    for d in dirs:
        p = sysview.path(d)
        if p not in seen:
            seen.append(p)
    return seen


def _from_lowlevel() -> tuple[RuntimeFile | None, str | None]:
    """The runtime the package itself would load (the shim's own search and checks), or the
    loader's error. This loads the library (not a model); any failure is reported, not raised."""
    import importlib
    try:
        lowlevel: Any = importlib.import_module("rkllm._lowlevel")
        found = lowlevel.open_runtime()
    except ImportError as exc:
        return None, f"the compiled extension rkllm._native does not load: {exc}"
    except Exception as exc:  # RuntimeNotFoundError and friends: keep the reason for the report
        return None, str(exc)
    info = read_runtime_file(str(found.path), f"rkllm loader ({found.detected_by})")
    return RuntimeFile(info.path, found.release or info.release, found.family or info.family,
                       info.arch, info.needed, bool(found.is_simulator), info.source), None


def find_runtime(root: str | os.PathLike[str] = "/") -> RuntimeFile | None:
    """The runtime library that would be used here, read as a file (never loaded)."""
    sysview = System(root)
    loader_error = None
    if sysview.is_live:
        found, loader_error = _from_lowlevel()
        if found is not None:
            return found
    for path, source in _candidate_runtimes(sysview):
        if path.is_file():
            try:
                return replace(read_runtime_file(path, source), loader_error=loader_error)
            except OSError:
                continue
    return None


# -- checks -------------------------------------------------------------------------------------
def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def check_os(sysview: System) -> Check:
    machine = sysview.machine()
    kernel = (sysview.read("/proc/sys/kernel/osrelease") or "").strip() or (
        _platform.release() if sysview.is_live else "unknown")
    system = "Linux" if sysview.exists("/proc") else _platform.system()
    data = {"system": system, "machine": machine, "kernel": kernel,
            "python": _platform.python_version()}
    if system != "Linux":
        return Check("os", FAIL, f"{system} {machine}: the RKLLM runtime is Linux-only",
                     "use a Linux board image (or the simulator on any Linux host)", data)
    if machine in ("aarch64", "arm64"):
        return Check("os", OK, f"Linux {kernel} on aarch64", data=data)
    if machine.startswith("armv7") or machine == "armhf":
        return Check("os", OK, f"Linux {kernel} on 32-bit ARM (armhf runtime)", data=data)
    return Check("os", INFO, f"Linux {kernel} on {machine}: not an ARM board, the NPU runtime "
                             f"cannot run here", data=data)


def check_board(sysview: System) -> Check:
    compat = _dt_strings(sysview.read("/proc/device-tree/compatible"))
    model = " ".join(_dt_strings(sysview.read("/proc/device-tree/model"))).strip()
    data: dict[str, Any] = {"model": model or None, "compatible": compat,
                            "platform": detect_platform(sysview.root)}
    if not compat:
        return Check("board", INFO, "no device tree: this is not a Rockchip board (no NPU)",
                     data=data)
    soc = data["platform"]
    if soc:
        return Check("board", OK, f"{model or 'board'} ({soc.upper()})", data=data)
    other = _rockchip_soc(compat)
    if other:
        return Check("board", FAIL, f"{model or 'board'} ({other.upper()}): the RKLLM runtime "
                                    f"supports {', '.join(s.upper() for s in SUPPORTED_SOCS)}",
                     "use one of the supported SoCs, or the simulator", data)
    return Check("board", INFO, f"{model or compat[0]}: not a Rockchip SoC (no RKNPU)",
                 data=data)


_DRIVER_FILES = ("/sys/kernel/debug/rknpu/version", "/proc/rknpu/version",
                 "/sys/module/rknpu/version")


def _drm_driver_version() -> tuple[str, str] | None:
    """(name, x.y.z) of the DRM driver of the NPU via DRM_IOCTL_VERSION (live system only)."""
    import ctypes
    import fcntl

    class DrmVersion(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                    ("name_len", ctypes.c_size_t), ("name", ctypes.c_char_p),
                    ("date_len", ctypes.c_size_t), ("date", ctypes.c_char_p),
                    ("desc_len", ctypes.c_size_t), ("desc", ctypes.c_char_p)]

    size = ctypes.sizeof(DrmVersion)
    request = (3 << 30) | (size << 16) | (ord("d") << 8) | 0x00  # _IOWR('d', 0, drm_version)
    for node in sorted(glob.glob("/dev/dri/renderD*") + glob.glob("/dev/dri/card*")):
        try:
            fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            name = ctypes.create_string_buffer(64)
            v = DrmVersion(0, 0, 0, 64, ctypes.cast(name, ctypes.c_char_p), 0, None, 0, None)
            buf = bytearray(bytes(v))
            fcntl.ioctl(fd, request, buf, True)
            got = DrmVersion.from_buffer_copy(bytes(buf))
            if name.value.startswith(b"rknpu"):
                return name.value.decode(), f"{got.major}.{got.minor}.{got.patch}"
        except OSError:
            pass
        finally:
            os.close(fd)
    return None


def _mainline_driver(sysview: System) -> str | None:
    if sysview.exists("/sys/module/rocket"):
        return "/sys/module/rocket"
    for drv in sysview.glob("/sys/class/accel/accel*/device/driver"):
        if os.path.basename(os.path.realpath(drv)) == "rocket":
            return str(drv)
    return None


def check_driver(sysview: System, board: Check) -> Check:
    soc = board.data.get("platform")
    mainline = _mainline_driver(sysview)
    if mainline:
        return Check("npu_driver", FAIL,
                     "the mainline 'rocket' NPU driver is loaded; librkllmrt.so only works with "
                     "Rockchip's rknpu driver",
                     "boot a vendor (Rockchip BSP) kernel that ships rknpu 0.9.8 or newer",
                     {"driver": "rocket", "source": mainline})
    version = None
    source = None
    unreadable = []
    for f in _DRIVER_FILES:
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
        drm = _drm_driver_version()
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


def check_runtime(sysview: System, board: Check) -> tuple[Check, RuntimeFile | None]:
    found = find_runtime(sysview.root)
    on_board = bool(board.data.get("platform"))
    if found is None:
        if not on_board:
            return Check("runtime", INFO, f"no {RUNTIME_NAME} (not needed for the simulator)",
                         data={"path": None}), None
        return Check("runtime", FAIL, f"no {RUNTIME_NAME} found",
                     "`rkllm runtime pull` installs a verified vendor runtime",
                     {"path": None}), None
    data = {"path": found.path, "release": found.release, "family": found.family,
            "arch": found.arch, "needed": list(found.needed), "simulator": found.is_simulator,
            "found_by": found.source}
    if found.release is None:
        return Check("runtime", WARN, f"{found.path}: release string not found in the file",
                     "reinstall the runtime with `rkllm runtime pull`", data), found
    machine = sysview.machine()
    want = "aarch64" if machine in ("aarch64", "arm64") else (
        "armhf" if machine.startswith("armv7") else machine)
    if found.arch and want in ("aarch64", "armhf") and found.arch != want \
            and not found.is_simulator:
        return Check("runtime", FAIL, f"{found.path} is built for {found.arch}, this system "
                                      f"is {want}", f"install the {want} runtime", data), found
    family = f"family {found.family}" if found.family else "unsupported release"
    kind = "simulated runtime" if found.is_simulator else "runtime"
    summary = f"{kind} {found.release} ({family}) at {found.path}"
    if found.loader_error:
        data["loader_error"] = found.loader_error
        reason = found.loader_error.splitlines()[-1].strip(" -")
        return Check("runtime", WARN, f"{summary}, but rkllm cannot load it: {reason}",
                     "see the libraries check; RKLLM_LIBRARY=/path/to/librkllmrt.so selects "
                     "a runtime", data), found
    status = OK if found.family else FAIL
    return Check("runtime", status, summary,
                 None if found.family else "use runtime 1.1.0 or newer", data), found


def _find_library(sysview: System, name: str, extra: list[Path]) -> Path | None:
    for d in extra + _library_dirs(sysview):
        if (d / name).exists():
            return d / name
        hits = sorted(d.glob(name + ".*")) if d.is_dir() else []
        if hits:
            return hits[0]
    return None


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
        hit = _find_library(sysview, lib, extra)
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
    machine = sysview.machine()
    data = {"features": sorted(feats), "cpu_parts": parts}
    if machine not in ("aarch64", "arm64") and not machine.startswith("armv7"):
        return Check("cpu", INFO, f"{machine} CPU: only the simulated runtime runs here",
                     data=data)
    if machine.startswith("armv7"):
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
    if machine.startswith("armv7"):
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


def _meminfo(sysview: System) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (sysview.read("/proc/meminfo") or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def check_memory(sysview: System, largest_model: int) -> Check:
    from rkllm.cli.output import human_size
    mem = _meminfo(sysview)
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


def _open_file_limits(sysview: System) -> tuple[int | None, int | None]:
    text = sysview.read("/proc/self/limits")
    if text and not sysview.is_live:
        m = re.search(r"(?m)^Max open files\s+(\S+)\s+(\S+)", text)
        if m:
            def num(s: str) -> int | None:
                return None if s == "unlimited" else int(s)
            return num(m.group(1)), num(m.group(2))
        return None, None
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    return (None if soft == inf else soft), (None if hard == inf else hard)


def check_open_files(sysview: System) -> Check:
    soft, hard = _open_file_limits(sysview)
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
    from rkllm.inspect import check_compatibility, inspect_model
    from rkllm.models import list_cached
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
    sim_dir = Path(__file__).resolve().parent / "_sim"
    families = sorted(m.group(1) for p in sim_dir.glob("librkllmrt-sim-*.so")
                      if (m := re.search(r"sim-(\d+\.\d+\.\d+)\.so$", p.name)))
    demo = sim_dir / "demo.rkllm"
    data = {"families": families, "demo_model": str(demo) if demo.is_file() else None}
    if not families:
        return Check("simulator", WARN, "no NPU here, and the simulated runtime is not built",
                     "reinstall rkllm-cffi (pip install --force-reinstall rkllm-cffi)", data)
    return Check("simulator", INFO, f"no NPU here: the simulated runtime (families "
                                    f"{', '.join(families)}) runs everything else",
                 "try: rkllm run demo \"Hello\"", data)


def run(root: str | os.PathLike[str] = "/", *,
        cache: str | os.PathLike[str] | None = None) -> Report:
    """Run every check against the system under ``root``."""
    sysview = System(root)
    board = check_board(sysview)
    runtime_check, runtime = check_runtime(sysview, board)
    models_check, largest = check_models(board, runtime, cache)
    checks = [
        check_os(sysview),
        board,
        check_driver(sysview, board),
        runtime_check,
        check_libraries(sysview, runtime),
        check_cpu(sysview, board),
        check_memory(sysview, largest),
        check_open_files(sysview),
        models_check,
    ]
    if not board.data.get("platform"):
        checks.append(check_simulator())
    return Report(checks)
