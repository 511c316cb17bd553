"""Check the one-way layers of the toolkit by reading every import (top-level and inside functions).

    python -m tools.check_layers          # exit 0 and a summary when the house is in order, 1 with the offences

Layers, lowest first: each package may import only the packages listed for it (all of them below it), so no
import runs upward and no two packages import each other. Within the packages, no two modules may import each
other, directly or through others (a cycle). ``tools/`` and ``tests/`` are not installed and may import anything.
"""
import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# package -> the packages it may import (DESIGN.md section 2)
ALLOWED: dict[str, set[str]] = {
    "moe_base": set(),
    "weights": set(),
    "moe_model": {"moe_base"},
    "topk_attention": {"moe_base", "moe_model"},
    "runtime": {"moe_base", "moe_model", "topk_attention", "weights"},
    "export": {"moe_base", "moe_model", "topk_attention", "runtime", "weights"},
    "benchmarks": {"moe_base", "moe_model", "runtime", "weights"},
    "serving": {"moe_base", "moe_model", "topk_attention", "runtime", "weights"},
    "moe_denoise": {"moe_base", "moe_model", "topk_attention", "runtime", "export", "benchmarks", "serving",
                    "weights"},
}
ORDER = list(ALLOWED)


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): they never run."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            ids.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return ids


def imports_of(path: Path, repo: Path = REPO) -> list[tuple[int, str, tuple[str, ...], bool]]:
    """(line, absolute module name, names imported from it, runs) for every import in the file, relative imports
    resolved; ``import a.b`` gives ("a.b", (), True). ``runs`` is False under ``if TYPE_CHECKING:``: such an
    import still counts for the layers (a type is a dependency too) but cannot close an import cycle."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, repo).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    typing_only = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        runs = id(node) not in typing_only
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, (), runs) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target, tuple(alias.name for alias in node.names), runs))
    return found


def check(repo: Path = REPO) -> tuple[list[str], dict[str, int]]:
    files = [p for pkg in ALLOWED for p in sorted((repo / pkg).rglob("*.py"))]
    modules = {module_name(p, repo): p for p in files}
    offences, graph = [], defaultdict(set)
    counts = dict.fromkeys(ALLOWED, 0)
    for name, path in modules.items():
        pkg = name.split(".")[0]
        for line, target, names, runs in imports_of(path, repo):
            top = target.split(".")[0]
            if top not in ALLOWED or top == pkg:
                if not runs:
                    continue
                # "from pkg import module" depends on the module; "from pkg import name" on pkg's __init__
                deps = [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names] or [target]
                graph[name].update(d for d in deps if d in modules and d != name)
                continue
            counts[pkg] += 1
            if top not in ALLOWED[pkg]:
                direction = "up" if ORDER.index(top) > ORDER.index(pkg) else "across"
                offences.append(f"{path.relative_to(repo)}:{line}: {pkg} imports {target} ({direction}: {pkg} may "
                                f"import only {sorted(ALLOWED[pkg]) or 'nothing of the toolkit'})")
    offences += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return offences, counts


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    offences, counts = check()
    if offences:
        print("\n".join(offences))
        print(f"{len(offences)} offence(s) against the layers", file=sys.stderr)
        return 1
    print("layers in order, lowest first: " + " < ".join(ORDER))
    print("imports of other packages, per package: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
