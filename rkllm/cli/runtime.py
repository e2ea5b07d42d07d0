"""``rkllm runtime list | pull VERSION | path VERSION``: the pinned vendor runtime releases,
the one bundled in the wheel, and the ones fetched into the user cache."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rkllm import machine, runtimes
from rkllm.cli.output import human_size, paint, table
from rkllm.errors import IntegrityError, RuntimeNotFoundError


def register(subparsers: Any) -> None:
    # positionals use dest "release": the top-level parser already owns args.version (--version)
    parser = subparsers.add_parser(
        "runtime", help="list, fetch and locate pinned releases of the vendor runtime",
        description="Pinned releases of Rockchip's librkllmrt.so: which one the wheel bundles, "
                    "which are in the user cache, and fetching others (verified by checksum).")
    verbs = parser.add_subparsers(dest="runtime_command", metavar="ACTION", required=True)
    arch_help = f"target architecture ({' or '.join(runtimes.ARCHES)}; default: this machine)"

    p = verbs.add_parser("list", help="pinned releases per architecture: bundled, cached or not")
    p.add_argument("--arch", help="show only this architecture")
    p.set_defaults(func=cmd_list)

    p = verbs.add_parser("pull", help="download and verify a release into the user cache")
    p.add_argument("release", metavar="VERSION", help="release, e.g. 1.2.3")
    p.add_argument("--arch", help=arch_help)
    p.add_argument("--force", action="store_true", help="download again even when cached")
    p.set_defaults(func=cmd_pull)

    p = verbs.add_parser(
        "path", help="print the library path of a cached (or bundled) release",
        description="Print the verified path of a release's library, for example "
                    "RKLLM_LIBRARY=$(rkllm runtime path 1.3.0).")
    p.add_argument("release", metavar="VERSION", help="release, e.g. 1.2.3")
    p.add_argument("--arch", help=arch_help)
    p.set_defaults(func=cmd_path)


def cmd_list(args: argparse.Namespace) -> int:
    arches = [runtimes.resolve_arch(args.arch)] if args.arch else list(runtimes.ARCHES)
    here = machine.runtime_arch()
    rows = []
    for arch in arches:
        bundled = runtimes.bundled_record(arch)
        for rel in runtimes.RELEASES.values():
            if arch not in rel.library_blobs:
                continue
            status, where = [], ""
            if bundled is not None and bundled.get("release") == rel.version:
                status.append("bundled")
                where = str(runtimes.bundled_dir(arch) / runtimes.LIBRARY_NAME)
            record = runtimes.read_record(runtimes.cache_dir(rel.version, arch))
            if record is not None:
                status.append("cached")
                where = str(runtimes.cache_dir(rel.version, arch) / runtimes.LIBRARY_NAME)
                size = record.get("size")
                if isinstance(size, int):
                    where += f" ({human_size(size)})"
            rows.append([rel.version, rel.family, arch + (" *" if arch == here else ""),
                         ", ".join(status) or "-", where])
    # streams passed explicitly: output.py's defaults are bound to sys.stdout at import time
    table(rows, ["RELEASE", "ABI", "ARCH", "STATUS", "PATH"], sys.stdout)
    if here is None:
        print(paint("(no Rockchip runtime exists for this machine; "
                    "the simulated runtime needs none)", "dim", sys.stdout))
    print(paint(f"cache: {runtimes.cache_root()}   fetch one: rkllm runtime pull VERSION", "dim",
                sys.stdout))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    rel = runtimes.release(args.release)
    arch = runtimes.resolve_arch(args.arch)
    pin = rel.library(arch)
    if not args.force:
        try:
            lib = runtimes.cached_library(args.release, arch)
            print(paint("already cached and verified", "dim", sys.stderr), file=sys.stderr)
            print(lib)
            return 0
        except (RuntimeNotFoundError, IntegrityError):
            pass
    print(f"fetching {pin.url()}", file=sys.stderr, flush=True)
    # a progress bar on a terminal; an interrupted download resumes on the next pull
    lib = runtimes.pull(args.release, arch, force=True, progress=sys.stderr.isatty())
    print(paint(f"verified (git blob {pin.blob[:12]})", "green", sys.stderr), file=sys.stderr)
    print(lib)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    print(runtimes.library_path(args.release, args.arch))
    return 0
