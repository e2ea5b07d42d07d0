"""``rkllm pull | list | info | rm | clean``: models in the Hugging Face cache."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rkllm.cli.output import human_size, paint, table
from rkllm.errors import ModelNotFoundError


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="download a model from the Hugging Face Hub",
                       description="Download a .rkllm model into the Hugging Face cache. "
                                   "Without FILE, the file for this board and runtime is chosen "
                                   "(or you are asked when several fit).")
    p.add_argument("repo", metavar="REPO", help="repository id, e.g. owner/Model-rk3588 "
                                                "(REPO:FILE also works)")
    p.add_argument("file", metavar="FILE", nargs="?", help="file in the repository")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--platform", help="choose for this SoC instead of this board's "
                                      "(rk3588, rk3576, rk3562, rv1126b)")
    p.add_argument("--runtime", metavar="RELEASE",
                   help="choose for this runtime release instead of the one found here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="list cached models",
                       description="List the .rkllm models in the Hugging Face cache.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="everything knowable about a model",
                       description="Show what the hub says about a model and what the file "
                                   "itself records, each fact with its source, and whether it "
                                   "fits this board and runtime. Never downloads the model.")
    p.add_argument("model", metavar="MODEL", help="path, `demo`, REPO or REPO:FILE")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("rm", help="remove cached models",
                       description="Remove REPO (every cached file and revision), REPO:FILE, "
                                   "or the path of a cached file from the cache.")
    p.add_argument("model", metavar="MODEL", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("clean", help="remove incomplete downloads and unused revisions",
                       description="Remove partial downloads and cached revisions that no "
                                   "branch or tag points at any more.")
    p.add_argument("-n", "--dry-run", action="store_true", help="only show what would go")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_clean)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- pull ---------------------------------------------------------------------------------------
def _ask(candidates: Sequence[Any]) -> Any:
    """Let the user pick on a terminal; None (-> an error listing them) otherwise."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    print("Several model files fit:", file=sys.stderr)
    for i, c in enumerate(candidates, 1):
        print(f"  {i}) {c.describe()}", file=sys.stderr)
    while True:
        print(f"Which one? [1-{len(candidates)}, q to quit] ", end="", file=sys.stderr,
              flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer in ("", "q", "quit"):
            raise KeyboardInterrupt
        if answer.isdigit() and 1 <= int(answer) <= len(candidates):
            return candidates[int(answer) - 1]


def cmd_pull(args: argparse.Namespace) -> int:
    from rkllm.hub import parse_ref, pull
    ref = parse_ref(args.repo)
    if ref is None:
        raise ModelNotFoundError(f"{args.repo!r} is not a repository id (owner/name)")
    file = args.file or ref.file
    result = pull(ref.repo, file, revision=args.revision, platform=args.platform,
                  runtime=args.runtime, choose=_ask, progress=not args.quiet)
    if args.json:
        _print_json({"repo": result.repo, "file": result.file, "commit": result.commit,
                     "path": result.path, "size": result.size, "chosen_because": result.reason,
                     "verified": True})
    else:
        print(f"{paint('pulled', 'green')} {result.repo}:{result.file} "
              f"({human_size(result.size)}, checksum verified; {result.reason})")
        print(f"  {result.path}")
        print(f"  run it: rkllm run {result.repo}:{result.file}")
    return 0


# -- list ---------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from rkllm.hub import cache_dir
    from rkllm.model_cache import list_cached
    models = list_cached()
    if args.json:
        _print_json([m.to_dict() for m in models])
        return 0
    if not models:
        print(f"no models in {cache_dir()} (rkllm pull REPO downloads one)")
        return 0
    rows = []
    for m in models:
        rev = m.commit[:8] + (f" ({', '.join(m.refs)})" if m.refs else " (unused)")
        rows.append([m.repo, m.file, human_size(m.size), m.platform or "?",
                     m.toolkit_version or "?", rev])
    table(rows, ["REPO", "FILE", "SIZE", "PLATFORM", "TOOLKIT", "REVISION"])
    return 0


# -- info ---------------------------------------------------------------------------------------
def _local_path(model: str, revision: str | None) -> tuple[str | None, str | None, str | None]:
    """(path or None, repo, file) without any network call."""
    from rkllm.hub import cached_model_files, demo_model_path, parse_ref
    if model == "demo" and not os.path.exists(model):
        return demo_model_path(), None, None
    if os.path.isfile(os.path.expanduser(model)):
        return os.path.abspath(os.path.expanduser(model)), None, None
    ref = parse_ref(model)
    if ref is None:
        raise ModelNotFoundError(f"no such model file: {model}")
    cached = cached_model_files(ref.repo, revision)
    if ref.file is not None:
        hits = [p for p in cached if p.replace(os.sep, "/").endswith("/" + ref.file)]
        return (hits[0] if hits else None), ref.repo, ref.file
    if len(cached) == 1:
        snap_rel = os.path.basename(cached[0])
        return cached[0], ref.repo, snap_rel
    return None, ref.repo, None


def gather_info(model: str, revision: str | None = None) -> dict[str, Any]:
    from rkllm.hub import repo_metadata, runtime_release
    from rkllm.machine import board_soc
    from rkllm.modelfile import check_compatibility, facts_from_name, inspect_model
    path, repo, file = _local_path(model, revision)
    out: dict[str, Any] = {"model": model, "repo": repo, "file": file, "path": path}
    if repo:
        try:
            out["hub"] = repo_metadata(repo, revision=revision)
        except ModelNotFoundError as exc:
            out["hub"] = {"error": str(exc)}
    board, release = board_soc(), runtime_release()
    out["board"] = {"platform": board, "runtime_release": release}
    if path:
        info = inspect_model(path, repo=repo)
        out["inspect"] = info.to_dict()
        out["compatibility"] = [{"level": f.level, "message": f.message}
                                for f in check_compatibility(info, release, board)]
        allowed = info.value("max_context_len")
        if isinstance(allowed, int) and allowed > 0:
            from rkllm.core import DEFAULT_CONTEXT_CAP

            out["context_used"] = {"tokens": min(allowed, DEFAULT_CONTEXT_CAP),
                                   "model_file": allowed, "cap": DEFAULT_CONTEXT_CAP}
    elif file:
        facts = {**facts_from_name(repo or "", "repo"), **facts_from_name(file, "filename")}
        out["inspect"] = {"path": None, "size": None, "format": "not downloaded",
                          "facts": {k: {"value": v.value, "source": v.source, "detail": v.detail}
                                    for k, v in facts.items()},
                          "problems": []}
    return out


def _print_info(data: dict[str, Any]) -> None:
    def line(key: str, value: Any, note: str = "") -> None:
        extra = f"  {paint(note, 'dim')}" if note else ""
        print(f"{key:<18} {value}{extra}")

    line("model", data["model"])
    if data.get("path"):
        line("path", data["path"])
    elif data.get("repo"):
        line("path", "not downloaded (rkllm pull " + data["repo"]
             + (" " + data["file"] if data.get("file") else "") + ")")
    ins = data.get("inspect")
    if ins:
        if ins.get("size") is not None:
            line("size", human_size(ins["size"]), "file")
        line("format", ins["format"])
        for name, fact in ins["facts"].items():
            note = fact["source"] + (f": {fact['detail']}" if fact.get("detail") else "")
            value = fact["value"]
            if isinstance(value, dict):
                value = json.dumps(value, ensure_ascii=False)
            line(name.replace("_", " "), value, note)
        for problem in ins.get("problems", []):
            print(paint("problem", "yellow") + f"{'':12}{problem}")
    hub = data.get("hub")
    if hub:
        if "error" in hub:
            line("hub", hub["error"])
        else:
            line("hub commit", hub["commit"], "hub")
            for key in ("author", "last_modified", "license", "base_model", "downloads"):
                if hub.get(key) not in (None, [], ""):
                    line(key.replace("_", " "), hub[key], "hub")
            if hub.get("model_files"):
                print("model files in the repository:")
                for f in hub["model_files"]:
                    size = human_size(f["size"]) if f.get("size") is not None else "?"
                    print(f"  {f['file']}  ({size})")
    ctx = data.get("context_used")
    if ctx:
        line("context used", f"{ctx['tokens']} tokens",
             "the model file's limit" if ctx["tokens"] == ctx["model_file"] else
             f"by default: the model file allows {ctx['model_file']}, rkllm-cffi caps it at "
             f"{ctx['cap']} (--max-context-len / max_context_len= sets it)")
    board = data["board"]
    line("this board", f"{board['platform'] or 'no NPU'}, runtime "
                       f"{board['runtime_release'] or 'not found'}")
    if "compatibility" in data:
        if not data["compatibility"]:
            line("compatibility", paint("no known problem", "green"))
        for f in data["compatibility"]:
            colour = "red" if f["level"] == "refuse" else "yellow"
            line("compatibility", paint(f["level"], colour) + ": " + f["message"])


def cmd_info(args: argparse.Namespace) -> int:
    data = gather_info(args.model, args.revision)
    hub = data.get("hub") or {}
    if data.get("path") is None and "error" in hub:
        raise ModelNotFoundError(hub["error"])
    if args.json:
        _print_json(data)
    else:
        _print_info(data)
    return 0


# -- rm / clean ---------------------------------------------------------------------------------
def cmd_rm(args: argparse.Namespace) -> int:
    from rkllm.model_cache import remove
    removed = []
    for model in args.model:
        removed.extend(remove(model))
    if args.json:
        _print_json([m.to_dict() for m in removed])
    else:
        for m in removed:
            print(f"removed {m.ref} ({human_size(m.size)}, revision {m.commit[:8]})")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from rkllm.model_cache import clean
    report = clean(dry_run=args.dry_run)
    if args.json:
        _print_json({**report.to_dict(), "dry_run": args.dry_run})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for p in report.incomplete:
        print(f"{verb} incomplete download {p}")
    for r in report.unused_revisions:
        print(f"{verb} unused revision {r}")
    if not report.incomplete and not report.unused_revisions:
        print("nothing to clean")
    else:
        print(f"{verb} {human_size(report.freed)} in total")
    return 0
