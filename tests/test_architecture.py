"""The layout's rules, read from the code's own imports with `ast`: no import cycle, layers that only import
downwards (as coordinator/__init__.py draws them), no hand-written module over 400 lines, a short top level.

Every import counts, wherever it stands: at module level, inside a function, or under TYPE_CHECKING, since a
reader of either side still has to read the other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "coordinator" / "rpc"
MAX_LINES = 400
MAX_TOP_LEVEL_MODULES = 12

# Lowest first. A module may import its own group and any group of a lower rank; groups of equal rank are
# siblings that may not import each other.
RANKS = {
    "vocabulary": 0, "rpc": 0,
    "worker": 1,
    "store": 2, "access": 2, "client": 2,
    "fleet": 3, "files": 3, "team": 3,
    "supervision": 4,
    "scheduler": 5, "jobs": 5,
    "sweeps": 6,     # drives trials through jobs' operations (as their owner: team); core wires it
    "core": 7, "telemetry": 7,
    "dashboard": 8,
    "api": 9,
    "cli": 10,
}
VOCABULARY = {"errors", "states", "events", "wire", "reports", "hosts"}
# Narrower than rank alone: the SDK and the worker must run without the server's packages installed.
ONLY = {
    "client": {"client", "vocabulary", "rpc"},
    "worker": {"worker", "rpc", "coordinator.wire", "coordinator.errors"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def hand_written(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if GENERATED not in p.parents)


MODULES = {module_name(p): p for top in ("coordinator", "worker") for p in hand_written(top)}
MODULES.update({module_name(p): p for p in sorted(GENERATED.glob("*.py"))})


def imports_of(name: str, path: Path) -> set[str]:
    """The project modules that `name` imports, anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)  # a submodule, or a name from the module itself
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def group(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "worker":
        return "worker"
    if len(parts) == 1:
        return "root"
    if len(parts) == 2 and (ROOT / "coordinator" / f"{parts[1]}.py").exists():
        return "vocabulary" if parts[1] in VOCABULARY else parts[1]
    return parts[1]


def test_every_group_has_a_rank():
    groups = {group(m) for m in MODULES} - {"root"}
    assert groups <= set(RANKS), f"modules outside every layer: {sorted(groups - set(RANKS))}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(GRAPH):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_import_only_downwards():
    wrong = []
    for importer, imported in sorted((a, b) for a, bs in GRAPH.items() for b in bs):
        ga, gb = group(importer), group(imported)
        if "root" in (ga, gb) or ga == gb:
            continue
        allowed = ONLY.get(ga)
        if allowed is not None and gb not in allowed and imported not in allowed:
            wrong.append(f"{importer} -> {imported} ({ga} may import only {sorted(allowed)})")
        elif RANKS[gb] >= RANKS[ga]:
            wrong.append(f"{importer} ({ga}, rank {RANKS[ga]}) -> {imported} ({gb}, rank {RANKS[gb]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import_and_a_cycle():
    # the rules above must be able to fail: an upward edge and a loop, checked with the same functions
    assert group("coordinator.store.records") == "store" and group("coordinator.api.server") == "api"
    assert RANKS[group("coordinator.api.server")] > RANKS[group("coordinator.store.store")]
    assert "coordinator.store.records" in GRAPH["coordinator.store.store"]
    assert imports_of("coordinator.cli.main", MODULES["coordinator.cli.main"]) >= {"coordinator.cli.commands"}


@pytest.mark.parametrize("top", ["coordinator", "worker", "bench"])
def test_no_hand_written_module_over_400_lines(top):
    long = {str(p.relative_to(ROOT)): n for p in hand_written(top) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_coordinator_top_level_stays_short():
    top = sorted(p.name for p in (ROOT / "coordinator").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_package_says_what_it_owns_and_may_import():
    for init in sorted((ROOT / "coordinator").glob("*/__init__.py")):
        if init.parent.name in {"rpc", "client", "cli", "dashboard"}:
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc, f"{init.relative_to(ROOT)} has no docstring"
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)} does not say what it may import"
