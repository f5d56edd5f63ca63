"""The house's architecture, read from its imports: layers that only point down, no import cycle, libraries that never
end the process, and cvae free of the study's tools."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom to top: a room may import its own layer's modules (no cycle) and every layer below, never one above.
LAYERS = (
    ("cvae",),  # one training run
    ("study.errors",),  # how library code ends a command
    ("study.spec", "study.store"),  # what a study is; where its files live
    ("study.tables",),  # its tables, their copy in the storage, Study
    ("study.analysis", "study.driver"),  # verdicts and figures; running a study (neither imports the other)
    ("commands",),  # study/run.py, best.py, sample.py, report.py, commands.py, object_store.py
)
COMMANDS = {"study.run", "study.best", "study.sample", "study.report", "study.commands", "study.object_store",
            "cvae.train", "cvae.sample", "cvae.fused", "cvae.command_line"}  # modules that may end the process (a command's main)
NOT_IN_CVAE = ("study", "ray", "optuna", "yaml")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("cvae", "study"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict) -> set[str]:
    """The project modules a module imports anywhere in it (at the top or inside a function)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in modules}


def _room(module: str) -> str:
    """cvae; a study sub-package (study.spec, ...); study.errors; or "commands" (study/'s other top-level modules)."""
    parts = module.split(".")
    if parts[0] == "cvae" or module == "study":
        return parts[0]
    if len(parts) > 2 or (REPO / "study" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module if module == "study.errors" else "commands"


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_in_a_circle():
    assert _cycle(_graph()) is None


def test_rooms_only_import_their_own_layer_or_below():
    level = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}
    wrong = []
    for module, targets in _graph().items():
        room = _room(module)
        if room == "study":
            continue
        for target in targets:
            other = _room(target)
            if other == "study":
                continue
            if level[other] > level[room] or (level[other] == level[room] and other != room):
                wrong.append(f"{module} ({room}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_every_study_module_lives_in_a_room():
    loose = [name for name in _modules() if name.startswith("study.") and _room(name) == "commands"
             and name not in COMMANDS]
    assert not loose, f"library modules at study/'s top level: {loose} (a room of their own, or a command)"


def _ends_the_process(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id == "SystemExit":
                found.append(f"raise SystemExit (line {node.lineno})")
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("sys.exit", "os._exit", "fail", "exit", "quit") or name.endswith("parser.exit"):
                found.append(f"{name}() (line {node.lineno})")
    return found


def test_only_commands_end_the_process():
    found = {name: hits for name, path in _modules().items()
             if name not in COMMANDS and (hits := _ends_the_process(path))}
    assert not found, found


def test_cvae_never_imports_the_study_or_its_tools():
    found = []
    for name, path in _modules().items():
        if name.startswith("cvae"):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{name}: {m}" for m in modules if m.split(".")[0] in NOT_IN_CVAE]
    assert not found, found


def test_the_check_finds_a_cycle_and_a_library_exit(tmp_path):
    """The checks above can fail: a made-up circle and a made-up exit are found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    made_up = tmp_path / "library.py"
    made_up.write_text("import sys\ndef stop():\n    sys.exit(2)\n\ndef refuse():\n    raise SystemExit(2)\n")
    assert len(_ends_the_process(made_up)) == 2
