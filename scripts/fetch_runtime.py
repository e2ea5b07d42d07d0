#!/usr/bin/env python3
"""Wheel-build step: put the pinned vendor runtime for the wheel's architecture into
``rkllm/libs/<arch>/`` (``librkllmrt.so``, the vendor's ``LICENSE.txt`` and a ``RUNTIME.json``
naming release, commit, checksums and licence), verified against the pins in
``rkllm/runtimes.py``.

cibuildwheel runs it as ``before-build`` (see ``[tool.cibuildwheel]`` in pyproject.toml). Nothing
else needs it: sdists, editable installs and the tests build and run without a vendor runtime.
On machines Rockchip ships no runtime for (x86_64) it bundles nothing and exits 0.

    python scripts/fetch_runtime.py                 # this machine's arch, the bundled release
    python scripts/fetch_runtime.py --arch armhf --release 1.3.0

The download base URL is https://raw.githubusercontent.com/airockchip/rknn-llm unless
RKLLM_RUNTIME_BASE_URL says otherwise (a mirror, or a test server).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import types
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


def main(argv: list[str] | None = None) -> int:
    rt = load_runtimes()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="aarch64 or armhf (aliases arm64, armv7l); "
                        "default: $AUDITWHEEL_ARCH or this machine")
    parser.add_argument("--release", default=rt.BUNDLED_RELEASE,
                        help=f"vendor release to bundle (default {rt.BUNDLED_RELEASE})")
    parser.add_argument("--libs", type=Path, default=ROOT / "rkllm" / "libs",
                        help="the package's libs directory (default rkllm/libs)")
    args = parser.parse_args(argv)

    machine = args.arch or os.environ.get("AUDITWHEEL_ARCH") or None
    arch = rt.resolve_arch(machine) if args.arch else rt.arch_of(machine)
    if arch is None:
        print(f"fetch_runtime: Rockchip ships no runtime for {machine or 'this machine'}; "
              "the wheel bundles none (the simulated runtime still works)")
        return 0

    # one architecture per wheel: drop anything a previous build left for another one
    for other in rt.ARCHES:
        if other != arch and (args.libs / other).exists():
            shutil.rmtree(args.libs / other)

    dest = args.libs / arch
    rel = rt.release(args.release)
    record = rt.read_record(dest)
    if record is not None and record.get("release") == rel.version:
        try:
            rt.verify(dest / rt.LIBRARY_NAME, rel.library(arch))
            rt.verify(dest / rt.LICENSE_NAME, rel.license())
            print(f"fetch_runtime: {dest / rt.LIBRARY_NAME} already holds {rel.version} (verified)")
            return 0
        except rt.IntegrityError:
            pass
    if dest.exists():
        shutil.rmtree(dest)
    print(f"fetch_runtime: {rel.library(arch).url()}")
    lib = rt.install(rel.version, arch, dest)
    record = rt.read_record(dest) or {}
    print(f"fetch_runtime: {lib} = release {rel.version} for {arch}, {record.get('size')} bytes, "
          f"git blob {record.get('git_blob')}, sha256 {record.get('sha256')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one line for the build log, non-zero exit
        if type(exc).__module__ == "builtins":
            raise
        print(f"fetch_runtime: error: {exc}", file=sys.stderr)
        sys.exit(1)
