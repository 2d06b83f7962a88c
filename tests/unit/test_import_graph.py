"""No import circles among the project's modules (services, training, bench), run by `make test` and `make lint`.

Every `import` counts, also those inside functions (a lazy import hides a circle, it does not remove it). A
module importing its own parent package is not an edge (Python imports the parent first anyway).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "training", "bench")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _resolve(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node, module: str, is_package: bool, modules) -> set[str]:
    if isinstance(node, ast.Import):
        return {r for alias in node.names if (r := _resolve(alias.name, modules))}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = set()
    for alias in node.names:
        target = f"{source}.{alias.name}"
        resolved = target if target in modules else _resolve(source, modules)
        if resolved:
            found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(node, name, path.name == "__init__.py", modules)
        graph[name] = {e for e in edges if e != name and not name.startswith(e + ".")}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_the_checker_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    assert "services.core.identification.ranking" in graph and graph["services.chain.worker.agent"]
    circles = import_circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def _third_party(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_identification_core_needs_numpy_and_faiss_only():
    """services/core/identification serves offline evaluation and the live matcher alike: numpy, faiss, the standard
    library and the project's own errors; anything needing TensorFlow reaches it through training."""
    import sys

    allowed = {"numpy", "faiss", "services", "__future__"} | set(sys.stdlib_module_names)
    graph = import_graph()
    for name, path in project_modules().items():
        if name.startswith("services.core.identification"):
            assert _third_party(path) <= allowed, (name, _third_party(path) - allowed)
            outside = {m for m in graph[name] if not m.startswith("services.core.identification")}
            assert outside <= {"services.core.errors", "services.core.checksums"}, (name, outside)


STAGES = ("bridge", "worker", "matcher", "reconciler", "webhooks", "gateway")


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["services", "chain"] and parts[2] in STAGES else None


def test_stage_packages_do_not_import_each_other():
    """What stages share is services/chain's plumbing (and services/core): a change for one stage reaches no other,
    and the plumbing imports no stage."""
    graph = import_graph()
    assert _stage("services.chain.worker.agent") == "worker" and _stage("services.chain.sighting_records") is None
    for name, edges in graph.items():
        if not name.startswith("services.chain."):
            continue
        stage = _stage(name)
        others = {_stage(e) for e in edges} - {None, stage}
        if stage is None and name != "services.chain.serve_cli":
            assert not others, f"the plumbing module {name} imports the stage(s) {sorted(others)}"
        elif stage is not None:
            assert not others, f"{name} imports the stage(s) {sorted(others)}"


def _folder(module: str) -> str | None:
    """The folder of the architecture table a module belongs to (None: the services package itself)."""
    parts = module.split(".")
    if parts[0] != "services":
        return parts[0]
    return f"services.{parts[1]}" if len(parts) >= 2 else None


def allowed_imports() -> dict[str, set[str]]:
    """docs/architecture.md's rules: folder -> the folders it may import."""
    import re

    table = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) == 3:
            folder = cells[0].strip("`")
            table[folder] = {"*"} if cells[2] == "any" else set(re.findall(r"`([a-z_.]+)`", cells[2]))
    return table


def test_every_services_folder_is_in_the_rules():
    table = allowed_imports()
    folders = {f"services.{p.name}" for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file()}
    assert folders <= set(table), f"folders missing from docs/architecture.md: {sorted(folders - set(table))}"
    assert table["services.core"] == set() and len(table) <= 10


def test_imports_follow_the_architecture_page():
    table = allowed_imports()
    graph = import_graph()
    problems = []
    for module, edges in graph.items():
        folder = _folder(module)
        if folder is None:
            continue
        assert folder in table, f"{folder} is not in docs/architecture.md's table"
        for edge in edges:
            target = _folder(edge)
            if target in (None, folder) or "*" in table[folder]:
                continue
            command_module = module.rsplit(".", 1)[-1] in ("__main__", "cli") or module.endswith("_cli")
            if target == "services.cli" and command_module:
                continue
            if target not in table[folder]:
                problems.append(f"{module} imports {edge} ({folder} may not import {target})")
    assert not problems, "\n".join(problems)
