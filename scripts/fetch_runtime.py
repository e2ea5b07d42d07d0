#!/usr/bin/env python3
"""Bundle the pinned vendor runtime: ``librkllmrt.so`` for one architecture, the vendor's
``LICENSE.txt`` and a ``RUNTIME.json`` (release, commit, checksums, licence), verified against
the pins in ``rkllm/runtimes.py``, as ``rkllm/libs/<arch>/`` of the package.

    python scripts/fetch_runtime.py --into-wheel wheelhouse/   # add to built (repaired) wheels
    python scripts/fetch_runtime.py --arch aarch64              # into the source tree's rkllm/libs
    python scripts/fetch_runtime.py --arch armhf --release 1.3.0

cibuildwheel runs the first form right after ``auditwheel repair`` (see ``[tool.cibuildwheel]``
in pyproject.toml): the wheel's manylinux tag then describes the code this project compiles,
and auditwheel does not graft or police a prebuilt vendor binary whose glibc and libstdc++ needs
are Rockchip's. Nothing else needs this script: sdists, editable installs and the tests build
and run without a vendor runtime. Wheels for machines Rockchip ships no runtime for (x86_64)
are left alone.

The download base URL is https://raw.githubusercontent.com/airockchip/rknn-llm unless
RKLLM_RUNTIME_BASE_URL says otherwise (a mirror, or a test server).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_runtimes() -> types.ModuleType:
    # At build time the package is not compiled yet, so rkllm/__init__.py (which loads the
    # compiled module) must not run: register a bare ``rkllm`` package over the source tree and
    # import only rkllm.errors and rkllm.runtimes (both standard-library only).
    if "rkllm" not in sys.modules:
        pkg = types.ModuleType("rkllm")
        pkg.__path__ = [str(ROOT / "rkllm")]
        sys.modules["rkllm"] = pkg
    return importlib.import_module("rkllm.runtimes")


def fetch(rt: types.ModuleType, release: str, arch: str, dest: Path) -> None:
    """``dest`` holds the verified release afterwards (reused when it already does)."""
    rel = rt.release(release)
    record = rt.read_record(dest)
    if record is not None and record.get("release") == rel.version:
        try:
            rt.verify(dest / rt.LIBRARY_NAME, rel.library(arch))
            rt.verify(dest / rt.LICENSE_NAME, rel.license())
            print(f"fetch_runtime: {dest} already holds {rel.version} for {arch} (verified)")
            return
        except rt.IntegrityError:
            pass
    if dest.exists():
        shutil.rmtree(dest)
    print(f"fetch_runtime: {rel.library(arch).url()}")
    rt.install(rel.version, arch, dest)
    record = rt.read_record(dest) or {}
    print(f"fetch_runtime: release {rel.version} for {arch}: {record.get('size')} bytes, "
          f"git blob {record.get('git_blob')}, sha256 {record.get('sha256')}")


def wheel_arch(wheel: Path) -> str | None:
    """The vendor arch for a wheel's platform tag, or None (x86_64, pure Python)."""
    platform_tag = wheel.name[: -len(".whl")].split("-")[-1].split(".")[0]
    for suffix, arch in (("_aarch64", "aarch64"), ("_armv7l", "armhf")):
        if platform_tag.endswith(suffix):
            return arch
    return None


def add_to_wheel(wheel: Path, files: dict[str, Path]) -> None:
    """Adds (or replaces) ``files`` (archive name -> file) in ``wheel`` and its RECORD."""
    with zipfile.ZipFile(wheel) as src:
        entries = [(info, src.read(info)) for info in src.infolist() if info.filename not in files]
    record_name = next(info.filename for info, _ in entries
                       if info.filename.endswith(".dist-info/RECORD"))
    record = next(data for info, data in entries if info.filename == record_name)
    lines = [line for line in record.decode().splitlines()
             if line and line.split(",")[0] not in files and line.split(",")[0] != record_name]
    added = []
    for name, path in files.items():
        data = path.read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        added.append((info, data))
    lines.append(f"{record_name},,")
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as out:
        for info, data in entries:
            if info.filename != record_name:
                out.writestr(info, data)
        for info, data in added:
            out.writestr(info, data)
        out.writestr(zipfile.ZipInfo(record_name, date_time=(2020, 1, 1, 0, 0, 0)),
                     "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, wheel)


def main(argv: list[str] | None = None) -> int:
    rt = load_runtimes()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--into-wheel", nargs="+", type=Path, metavar="WHEEL_OR_DIR",
                        help="add the runtime to these wheels (or every wheel in these dirs)")
    parser.add_argument("--arch", help="aarch64 or armhf (aliases arm64, armv7l) for the "
                        "source tree; default: $AUDITWHEEL_ARCH or this machine")
    parser.add_argument("--release", default=rt.BUNDLED_RELEASE,
                        help=f"vendor release to bundle (default {rt.BUNDLED_RELEASE})")
    parser.add_argument("--libs", type=Path, default=ROOT / "rkllm" / "libs",
                        help="the source tree's libs directory (default rkllm/libs)")
    args = parser.parse_args(argv)

    if args.into_wheel:
        wheels = [w for p in args.into_wheel for w in (sorted(p.glob("*.whl")) if p.is_dir() else [p])]
        if not wheels:
            raise SystemExit(f"fetch_runtime: no wheel in {' '.join(map(str, args.into_wheel))}")
        for wheel in wheels:
            arch = wheel_arch(wheel)
            if arch is None:
                print(f"fetch_runtime: {wheel.name}: Rockchip ships no runtime for it, none added")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                fetch(rt, args.release, arch, Path(tmp))
                add_to_wheel(wheel, {f"rkllm/libs/{arch}/{name}": Path(tmp) / name
                                     for name in (rt.LIBRARY_NAME, rt.LICENSE_NAME, rt.RECORD_NAME)})
            print(f"fetch_runtime: {wheel.name}: added rkllm/libs/{arch}/")
        return 0

    machine = args.arch or os.environ.get("AUDITWHEEL_ARCH") or None
    arch = rt.resolve_arch(machine) if args.arch else rt.runtime_arch(machine)
    if arch is None:
        print(f"fetch_runtime: Rockchip ships no runtime for {machine or 'this machine'}; "
              "the wheel bundles none (the simulated runtime still works)")
        return 0
    # one architecture per wheel: drop anything a previous build left for another one
    for other in rt.ARCHES:
        if other != arch and (args.libs / other).exists():
            shutil.rmtree(args.libs / other)
    fetch(rt, args.release, arch, args.libs / arch)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one line for the build log, non-zero exit
        if type(exc).__module__ == "builtins":
            raise
        print(f"fetch_runtime: error: {exc}", file=sys.stderr)
        sys.exit(1)
