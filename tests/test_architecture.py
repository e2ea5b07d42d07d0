"""The house rules, checked: one release table that every copy agrees with, imports that only
point down the layers, and one runtime resolver that ``rkllm doctor`` and ``rkllm.LLM`` share.
See docs/architecture.md."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rkllm import params, releases, runtimes

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rkllm"
SOURCE_TREE = (PACKAGE / "releases.py").is_file() and (ROOT / "csrc").is_dir()
needs_tree = pytest.mark.skipif(not SOURCE_TREE, reason="needs the source tree (csrc/, include/)")


# ---------------------------------------------------------------- one release table

def c_source(path: str) -> str:
    text = (ROOT / path).read_text()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # comments may mention anything


def literal(path: Path, name: str) -> object:
    """The literal value assigned to ``name`` at the top of a Python file (not imported)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


def supported_text() -> str:
    """"1.1.0-1.1.4, 1.2.0, ..." as the shim's loader spells the supported releases."""
    return ", ".join(rs[0] if len(rs) == 1 else f"{rs[0]}-{rs[-1]}"
                     for rs in releases.RELEASES.values())


@needs_tree
def test_release_tables_agree() -> None:
    every = {r: f for f, rs in releases.RELEASES.items() for r in rs}
    problems: list[str] = []

    def agree(where: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{where}: {got!r} != releases.py's {want!r}")

    # the ABI headers: one directory per family, declaring exactly the family's functions
    agree("include/*/", sorted(p.name for p in (ROOT / "include").iterdir() if p.is_dir()),
          sorted(releases.FAMILIES))
    for family in releases.FAMILIES:
        header = c_source(f"include/{family}/rkllm.h")
        declared = set(re.findall(r"\b(rkllm_\w+)\s*\(", header))
        agree(f"include/{family}/rkllm.h functions", sorted(declared),
              sorted(f for f in releases.FUNCTIONS if releases.has(family, f)))
        agree(f"include/{family}/rkllm.h RKLLM_CFFI_ABI_FAMILY",
              re.search(r'RKLLM_CFFI_ABI_FAMILY\s+"([\d.]+)"', header).group(1), family)  # type: ignore[union-attr]

    # the shim's loader: release -> family table, the supported list, the functions it looks up
    loader = c_source("csrc/shim/loader.c")
    table = re.search(r"family_of_release\(.*?\{(.*?)\};", loader, re.S).group(1)  # type: ignore[union-attr]
    agree("csrc/shim/loader.c family_of_release",
          {r: f.replace("_", ".") for r, f in
           re.findall(r'\{"([\d.]+)",\s*&rkshim_family_(\w+)\}', table)}, every)
    agree("csrc/shim/loader.c SUPPORTED",
          re.search(r'#define SUPPORTED "([^"]*)"', loader).group(1), supported_text())  # type: ignore[union-attr]
    names = re.search(r"rkshim_symbol_names\[SYM_COUNT\]\s*=\s*\{(.*?)\};", loader, re.S)
    agree("csrc/shim/loader.c rkshim_symbol_names",
          sorted(re.findall(r'"(rkllm_\w+)"', names.group(1))),
          sorted(set(releases.FUNCTIONS) - set(releases.UNBOUND_FUNCTIONS)))  # type: ignore[union-attr]

    # the simulator: release -> family code, and per header the code and the reported release
    model = c_source("csrc/sim/model.c")
    table = re.search(r"sim_family_of\(.*?\{(.*?)\};", model, re.S).group(1)  # type: ignore[union-attr]
    agree("csrc/sim/model.c sim_family_of",
          {r: int(c) for r, c in re.findall(r'\{"([\d.]+)",\s*(\d+)\}', table)},
          {r: releases.family_code(f) for r, f in every.items()})
    guard = {re.search(r"#define (RKLLM_CFFI_RKLLM_H_\w+)", c_source(f"include/{f}/rkllm.h"))
             .group(1): f for f in releases.FAMILIES}  # type: ignore[union-attr]
    sim_h = c_source("csrc/sim/sim.h")
    blocks = re.findall(r"defined\((RKLLM_CFFI_RKLLM_H_\w+)\)\s*#define SIM_FAMILY (\d+)\s*"
                        r'#define SIM_RELEASE "([\d.]+)"', sim_h)
    agree("csrc/sim/sim.h", {guard.get(g, g): (int(code), rel) for g, code, rel in blocks},
          {f: (releases.family_code(f), releases.newest_release(f)) for f in releases.FAMILIES})

    # Python: setup.py and the tests derive from releases.py; the sim's C test keeps a copy
    agree("setup.py", re.findall(r'"\d+\.\d+\.\d+"', (ROOT / "setup.py").read_text()), [])
    agree("tests/conftest.py",
          re.findall(r'"\d+\.\d+\.\d+"', (ROOT / "tests" / "conftest.py").read_text()), [])
    sim_c = ROOT / "tests" / "test_sim_c.py"
    agree("tests/test_sim_c.py FAMILIES", literal(sim_c, "FAMILIES"), releases.FAMILIES)
    agree("tests/test_sim_c.py NEWEST", literal(sim_c, "NEWEST"),
          {f: releases.newest_release(f) for f in releases.FAMILIES})
    agree("rkllm.params.FAMILIES", params.FAMILIES, releases.FAMILIES)
    agree("rkllm.params.RUN_FEATURES", params.RUN_FEATURES, releases.FEATURES)
    agree("rkllm.runtimes pins in no family",
          [v for v in runtimes.RELEASES if releases.known_family(v) is None], [])
    assert not problems, "copies of the release table disagree:\n" + "\n".join(problems)


def test_no_module_keeps_its_own_release_or_soc_list() -> None:
    """Only releases.py spells families and SoCs as data (two or more in one literal)."""
    fact = re.compile(rf"\d+\.\d+\.\d+|{releases.SOC_PATTERN}")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "releases.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or items is None:
                continue
            facts = [i.value for i in items if isinstance(i, ast.Constant)
                     and isinstance(i.value, str) and fact.fullmatch(i.value)]
            if len(facts) >= 2:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {facts}")
    assert not offenders, "\n".join(offenders)


def test_family_of_has_one_contract() -> None:
    assert releases.family_of("v1.2.3") == "1.2.1" and releases.family_of("1.2.1") == "1.2.1"
    with pytest.raises(ValueError, match="supported releases: 1.1.0, "):
        releases.family_of("1.4.0")
    assert releases.known_family("1.4.0") is None
    # no other module defines a function of that name
    defined = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if re.search(r"(?m)^\s*def family_of\(", p.read_text())]
    assert defined == ["rkllm/releases.py"]


# ---------------------------------------------------------------- imports point down

# Each module's layer (docs/architecture.md); a module may import its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("_native", "errors", "releases"),                          # leaves: no rkllm imports
    ("_lowlevel", "machine"),
    ("runtimes", "sim", "modelfile", "runtime_finder", "hub", "model_cache", "doctor"),
    ("params", "request", "stream"),
    ("core",),
    ("aio", "chat", "types"),
    ("llm",),
    ("__init__",),                                              # the facade: `import rkllm`
    ("serve",),                                                 # the HTTP server (a library)
    ("cli",),                       # the entry points: `rkllm serve` (cli/serve.py) starts serve
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}

# Upward imports in files other branches are changing at the time of writing; each entry must
# still be present (so the list cannot go stale) and the list empties as those land.
PENDING: set[tuple[str, str]] = set()


def layer_of(module: str) -> str:
    """``rkllm.chat.session`` -> ``chat``; ``rkllm`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def is_main_guard(test: ast.expr) -> bool:
    """``if __name__ == "__main__":`` runs only as a script, the top of every stack."""
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__")


def run_time_imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported rkllm module, line) for every import that runs, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and (is_type_checking(node.test) or is_main_guard(node.test)):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:  # `from rkllm import sim` imports the module rkllm.sim
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / (sub.replace(".", "/") + ".py")).is_file() or (
                    ROOT / sub.replace(".", "/")).is_dir()
                found.append((sub if is_module else base, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return [(m, line) for m, line in found if m == "rkllm" or m.startswith("rkllm.")]


def package_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        out[".".join(parts)] = path
    return out


def upward_imports() -> set[tuple[str, str]]:
    bad = set()
    for module, path in package_modules().items():
        here = layer_of(module)
        if here == "_sim":
            continue
        for target, _ in run_time_imports(path, module):
            there = layer_of(target)
            if there not in RANK or here not in RANK:
                bad.add((module, f"{target} (layer unknown: add it to LAYERS)"))
            elif RANK[there] > RANK[here]:
                bad.add((module, target))
    return bad


def test_imports_point_down() -> None:
    bad = upward_imports()
    new = sorted(bad - PENDING)
    assert not new, "upward imports at run time (move the code down, or import under " \
                    "TYPE_CHECKING):\n" + "\n".join(f"{m} imports {t}" for m, t in new)
    gone = sorted(PENDING - bad)
    assert not gone, "fixed: remove from PENDING:\n" + "\n".join(map(str, gone))


def test_every_module_has_a_layer() -> None:
    unknown = {layer_of(m) for m in package_modules()} - set(RANK) - {"_sim"}
    assert not unknown, f"modules without a layer in LAYERS: {sorted(unknown)}"


def test_the_import_walker_sees_what_it_must(tmp_path: Path) -> None:
    """The checker itself: function-level imports count, TYPE_CHECKING ones do not."""
    src = tmp_path / "example.py"
    src.write_text("from typing import TYPE_CHECKING\nfrom rkllm import sim\n"
                   "if TYPE_CHECKING:\n    from rkllm.llm import LLM\n"
                   "def f():\n    from rkllm.cli.output import paint\n    import rkllm.hub\n")
    found = [m for m, _ in run_time_imports(src, "rkllm.machine")]
    assert found == ["rkllm.sim", "rkllm.cli.output", "rkllm.hub"]


# Private names used across modules in files other branches are changing at the time of writing
# (like PENDING: each entry must still be present; the set empties as those branches land).
PENDING_PRIVATE: set[str] = set()


def test_no_private_name_crosses_a_module() -> None:
    """``from rkllm.x import _name`` or ``x._name`` of another rkllm module."""
    offenders = []
    modules = package_modules()
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rkllm"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") \
                            and f"{node.module}.{a.name}" not in modules:
                        offenders.append(f"{module}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("rkllm.") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and aliases[node.value.id] != module:
                offenders.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    new = sorted(set(offenders) - PENDING_PRIVATE)
    assert not new, "\n".join(new)
    gone = sorted(PENDING_PRIVATE - set(offenders))
    assert not gone, "fixed: remove from PENDING_PRIVATE:\n" + "\n".join(gone)


# ---------------------------------------------------------------- one runtime resolver

def doctor_runtime(runtime: str | None, env: dict[str, str]) -> dict[str, object]:
    """What `rkllm doctor --json` reports as the runtime (a fresh process)."""
    args = [sys.executable, "-m", "rkllm.cli", "doctor", "--json"]
    if runtime is not None:
        args += ["--runtime", runtime]
    # from a neutral directory: `-m` puts the cwd first on sys.path, and a source tree there
    # must not shadow the installed package
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=tempfile.gettempdir())
    assert proc.returncode in (0, 1), proc.stderr
    check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "runtime")
    return dict(check["data"])


def llm_runtime(runtime: str | None, demo_model: str) -> tuple[str | None, str | None]:
    """(runtime path, None) that rkllm.LLM loads, or (None, the error it raises)."""
    import rkllm

    try:
        with rkllm.LLM(demo_model, runtime=runtime, max_context_len=256) as llm:
            return llm.runtime.path, None
    except rkllm.RKLLMError as exc:
        return None, str(exc)


def forms() -> list[str]:
    from rkllm import sim

    return ["sim", "sim:1.2.1", "1.2.3", sim.library_path("1.1.0")]


@pytest.mark.parametrize("how", ["RKLLM_LIBRARY", "runtime="])
def test_doctor_and_llm_agree_on_the_runtime(how: str, demo_model: str, quiet_sim: None,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "RKLLM_SIM_QUIET": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for spec in forms():
        if how == "RKLLM_LIBRARY":
            monkeypatch.setenv("RKLLM_LIBRARY", spec)
            reported = doctor_runtime(None, {**env, "RKLLM_LIBRARY": spec})
            loaded, error = llm_runtime(None, demo_model)
        else:
            monkeypatch.delenv("RKLLM_LIBRARY", raising=False)
            reported = doctor_runtime(spec, env)
            loaded, error = llm_runtime(spec, demo_model)
        if loaded is None:  # a pinned release not cached here: both say why, the same way
            assert reported["path"] is None and reported["error"] == error, spec
        else:
            assert reported["path"] is not None, (spec, reported)
            assert os.path.realpath(str(reported["path"])) == os.path.realpath(loaded), spec


def test_no_runtime_suggests_the_simulator(demo_model: str, quiet_sim: None) -> None:
    from rkllm.errors import RuntimeNotFoundError
    from rkllm.runtime_finder import find_runtime

    try:
        found = find_runtime()
    except RuntimeNotFoundError:
        found = None
    if found is not None:
        pytest.skip(f"this machine has a runtime: {found.path}")
    import rkllm

    with pytest.raises(RuntimeNotFoundError, match='runtime="sim"'):
        rkllm.LLM(demo_model)
