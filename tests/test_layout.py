"""The package's import rules (README, "Layout"), checked on the source so they stay true.

Read with ``ast``: every ``import``/``from ... import`` of a ``fbnet_fast`` module, at any
depth (lazy imports inside functions count too).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fbnet_fast"


def _modname(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """``[(imported module, [names], line)]`` of ``fbnet_fast`` modules in ``path``."""
    mod = _modname(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "fbnet_fast":
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "fbnet_fast"]
    return out


MODULES = {_modname(p): p for p in sorted(PKG.rglob("*.py"))}


def _targets(path: Path) -> set[str]:
    """Imported modules, with ``from pkg import submodule`` resolved to the submodule."""
    out = set()
    for target, names, _ in _imports(path):
        out.add(target)
        out.update(f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES)
    return out


def _group(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("cli", "research", "measure", "ops", "data") else "core"


def test_every_module_is_read():
    assert {"fbnet_fast.cli", "fbnet_fast.research.study", "fbnet_fast.measure.core", "fbnet_fast.ops.testing",
            "fbnet_fast.data.batching", "fbnet_fast.runs"} <= set(MODULES)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_import_rules(mod):
    me = _group(mod)
    for target in _targets(MODULES[mod]):
        them = _group(target)
        if them == me or target == "fbnet_fast.errors":
            continue
        # cli/ is the top: only the console entry point imports it.
        assert them != "cli" or mod == "fbnet_fast.__main__", f"{mod} imports {target}: only cli/ may"
        # research/ is used by the command line alone.
        assert them != "research" or me == "cli", f"{mod} imports {target}: research/ is imported by cli/ only"
        # data/ and the kernels depend on nothing above them.
        assert me != "data", f"{mod} imports {target}: data/ needs only fbnet_fast.errors"
        if me == "ops":
            allowed = {"fbnet_fast.blocks", "fbnet_fast.space"} | ({"fbnet_fast.supernet"} if mod.endswith(".testing")
                                                                   else set())
            assert target in allowed, f"{mod} imports {target}: ops/ needs only blocks and space"
        # measuring back ends time networks; they never drive a search, a training or a study.
        if me == "measure":
            assert target not in ("fbnet_fast.search", "fbnet_fast.train", "fbnet_fast.distributed"), \
                f"{mod} imports {target}"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_private_names_across_modules(mod):
    for target, names, line in _imports(MODULES[mod]):
        for n in names:
            if not n.startswith("_") or n == "__version__":
                continue
            sub = f"{target}.{n}"
            same_package = sub in MODULES and sub.rsplit(".", 1)[0] == mod.rsplit(".", 1)[0] or sub.startswith(mod)
            assert sub in MODULES and (same_package or target == mod.rsplit(".", 1)[0]), \
                f"{mod}:{line} imports the private name {n!r} from {target}"


def test_no_import_cycles_at_module_level():
    graph = {m: {t for t, _, _ in _imports(p, top_level_only=True) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is the normal re-export, not a cycle
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                if not all(c == t or c.startswith(t + ".") or t.startswith(c + ".") for c in cycle):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_gpu_check_runs_without_a_gpu_and_says_so():
    """bench/gpu_check.sh on a machine without CUDA: checks its own syntax, measures nothing, exits 0."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), "/nonexistent-out"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert "no CUDA device" in r.stdout and "nothing measured" in r.stdout
