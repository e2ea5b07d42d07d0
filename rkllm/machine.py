"""Facts about this machine, read from files: the board and its SoC, the CPU architecture, the
NPU driver, memory, limits, and a runtime library read as a file (ELF header, needed libraries,
the release string inside it). Nothing here loads a library.

Every reader takes a :class:`System` (files under a ``root``, ``/`` normally; tests point it
at fake system trees in tests/data/), so the same code runs on a board, on a PC and in tests.
Standard library only.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from rkllm import releases

RUNTIME_NAME = "librkllmrt.so"
#: the vendor's architecture names (its directory names; also rkllm/libs/<arch>/)
ARCHES = ("aarch64", "armhf")
_ELF_MACHINES = {183: "aarch64", 40: "armhf", 62: "x86_64", 3: "i386", 243: "riscv64"}


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
        """``platform.machine()`` of the system (read from /proc/cpuinfo for a fake one)."""
        if self.is_live:
            return platform.machine()
        cpuinfo = self.read("/proc/cpuinfo") or ""
        if re.search(r"(?m)^CPU architecture\s*:\s*8", cpuinfo):
            return "aarch64"
        if re.search(r"(?m)^CPU architecture\s*:\s*7", cpuinfo):
            return "armv7l"
        return "x86_64" if re.search(r"(?m)^flags\s*:", cpuinfo) else "unknown"


# -- the board ----------------------------------------------------------------------------------
def device_tree_strings(sysview: System, name: str) -> list[str]:
    """A NUL-separated device-tree property (``compatible``, ``model``) as a list."""
    text = sysview.read(f"/proc/device-tree/{name}")
    return [s for s in (text or "").split("\0") if s.strip()]


def board_soc(root: str | os.PathLike[str] | System = "/") -> str | None:
    """The supported SoC named in the device tree (``rk3588``...), else None."""
    sysview = root if isinstance(root, System) else System(root)
    for entry in device_tree_strings(sysview, "compatible"):
        m = re.fullmatch(rf"rockchip,({releases.SOC_PATTERN})", entry.strip())
        if m:
            return releases.normalise_soc(m.group(1))
    return None


def rockchip_soc(sysview: System) -> str | None:
    """Any Rockchip SoC named in the device tree, supported or not."""
    for entry in device_tree_strings(sysview, "compatible"):
        m = re.fullmatch(r"rockchip,(r[kv]\d{4}[a-z]?)", entry.strip())
        if m:
            return m.group(1)
    return None


# -- architecture -------------------------------------------------------------------------------
def runtime_arch(machine: str | None = None, pointer_bits: int | None = None) -> str | None:
    """The vendor arch name for a machine (``platform.machine()``), or None when Rockchip
    ships no runtime for it. A 32-bit Python on a 64-bit ARM kernel reports ``aarch64`` or
    ``armv8l`` but needs the armhf library, hence the pointer size."""
    m = (machine if machine is not None else platform.machine()).lower()
    if not m.startswith(("arm", "aarch")):
        return None
    bits = pointer_bits if pointer_bits is not None else (64 if sys.maxsize > 2**32 else 32)
    return "aarch64" if bits == 64 else "armhf"


# -- a runtime library as a file ----------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeFile:
    path: str
    release: str | None
    family: str | None
    arch: str | None
    needed: tuple[str, ...]
    is_simulator: bool
    source: str                 # how it was found


@dataclass(frozen=True)
class ElfFacts:
    arch: str | None                 # None: not an ELF file
    needed: tuple[str, ...] = ()     # DT_NEEDED
    soname: str | None = None        # DT_SONAME
    runpath: tuple[str, ...] = ()    # DT_RUNPATH and DT_RPATH entries


_DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 14, 15, 29


def elf_info(data: bytes) -> ElfFacts:
    """Architecture and dynamic-section names of an ELF image (read from its section table)."""
    if data[:4] != b"\x7fELF":
        return ElfFacts(None)
    bits64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(end + "H", data, 18)
    arch = _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    names: dict[int, list[str]] = {_DT_NEEDED: [], _DT_SONAME: [], _DT_RPATH: [], _DT_RUNPATH: []}
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
                if tag in names:
                    names[tag].append(strtab[val:strtab.index(b"\0", val)].decode())
    except (struct.error, IndexError, ValueError):
        pass
    runpath = tuple(p for entry in names[_DT_RUNPATH] + names[_DT_RPATH] for p in entry.split(":"))
    return ElfFacts(arch, tuple(names[_DT_NEEDED]),
                    names[_DT_SONAME][0] if names[_DT_SONAME] else None, runpath)


# The vendor library carries "RKLLM SDK (version: 1.2.3 ...)"; the shim's loader reads the
# same mark (csrc/shim/loader.c VERSION_MARK).
_RELEASE_PATTERNS = (
    re.compile(rb"RKLLM SDK \(version: ?v?(\d+\.\d+\.\d+)"),
    re.compile(rb"rkllm[-_ ]runtime[^\n\0]{0,24}?v?(\d+\.\d+\.\d+)"),
)
_SIM_NAME = re.compile(r"librkllmrt-sim-(\d+\.\d+\.\d+)\.so$")


def release_string(data: bytes) -> str | None:
    """The release named inside a runtime library's bytes, else None."""
    for pattern in _RELEASE_PATTERNS:
        m = pattern.search(data)
        if m:
            return m.group(1).decode()
    return None


def read_runtime_file(path: str | os.PathLike[str], source: str = "") -> RuntimeFile:
    """Release, family and architecture of a runtime library, read as a file."""
    data = Path(path).read_bytes()
    elf = elf_info(data)
    release = release_string(data)
    sim_name = _SIM_NAME.search(str(path))
    is_sim = bool(sim_name) or b"RKLLM-SIM" in data or b"RKLLM_SIM" in data
    if release is None and sim_name:  # the simulator's file name carries its family
        release = releases.newest_release(sim_name.group(1))
    family = releases.known_family(release) if release else None
    return RuntimeFile(str(path), release, family, elf.arch, elf.needed, is_sim, source)


def library_dirs(sysview: System) -> list[Path]:
    """Where the system keeps shared libraries: the usual directories and ld.so.conf's."""
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


def find_library(sysview: System, name: str, first: list[Path]) -> Path | None:
    """``name`` (or ``name.*``) in ``first`` then the system's library directories."""
    for d in first + library_dirs(sysview):
        if (d / name).exists():
            return d / name
        hits = sorted(d.glob(name + ".*")) if d.is_dir() else []
        if hits:
            return hits[0]
    return None


# -- the NPU driver, memory, limits -------------------------------------------------------------
DRIVER_FILES = ("/sys/kernel/debug/rknpu/version", "/proc/rknpu/version",
                "/sys/module/rknpu/version")


def drm_driver_version() -> tuple[str, str] | None:
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


def mainline_npu_driver(sysview: System) -> str | None:
    """Where the mainline ``rocket`` NPU driver shows, if it is loaded."""
    if sysview.exists("/sys/module/rocket"):
        return "/sys/module/rocket"
    for drv in sysview.glob("/sys/class/accel/accel*/device/driver"):
        if os.path.basename(os.path.realpath(drv)) == "rocket":
            return str(drv)
    return None


def meminfo(sysview: System) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    for line in (sysview.read("/proc/meminfo") or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def open_file_limits(sysview: System) -> tuple[int | None, int | None]:
    """(soft, hard) limit on open files; None is unlimited or unknown."""
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


def human_size(n: int | float) -> str:
    """A byte count as people read it (decimal units: ``1.2 GB``)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
