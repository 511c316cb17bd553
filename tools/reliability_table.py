"""docs/reliability.md, generated from the reliability suite: every test named ``test_reliability_*`` under tests/
is one case, and its docstring reads "<case> => <expected outcome>".

    python -m tools.reliability_table --write     # regenerate docs/reliability.md
    python -m tools.reliability_table --check     # exit 1 when docs/reliability.md is out of date
    python -m tools.reliability_table             # print the table

``--write`` replaces the page atomically, after the table is made: ``> docs/reliability.md`` emptied the page
before the tool ran, and a test without its docstring then left it empty.
"""
import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
HEADER = """# Reliability: hostile and careless input, and what happens

Every row is a test of the reliability suite (tests named `test_reliability_*`; this page is generated from their
docstrings by `python -m tools.reliability_table --write`, and a test fails when it is out of date). "Refused" means: a
typed error, exit code 2, a message that names the file or setting, what was expected and what to do, and no file
created or changed.

| case | outcome | test |
|---|---|---|
"""


def cases(repo: Path = REPO) -> list[tuple[str, str, str]]:
    rows = []
    for path in sorted((repo / "tests").rglob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_reliability_"):
                doc = " ".join((ast.get_docstring(node) or "").split())
                case, sep, outcome = doc.partition("=>")
                if not sep:
                    raise SystemExit(f"{path.relative_to(repo)}:{node.lineno}: {node.name} needs a docstring "
                                     f"'<case> => <outcome>'")
                rows.append((case.strip(), outcome.strip(), f"`{node.name}` in `{path.relative_to(repo)}`"))
    return rows


def render(repo: Path = REPO) -> str:
    return HEADER + "".join(f"| {c} | {o} | {t} |\n" for c, o, t in cases(repo))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--check", action="store_true", help="compare with docs/reliability.md instead of printing")
    how.add_argument("--write", action="store_true", help="regenerate docs/reliability.md (atomically)")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{shown(DOC)} is out of date: python -m tools.reliability_table --write", file=sys.stderr)
            return 1
        return 0
    if args.write:
        from moe_base.fileio import atomic_write

        atomic_write(DOC, text.encode())
        print(f"wrote {shown(DOC)} ({len(cases())} cases)")
        return 0
    sys.stdout.write(text)
    return 0


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    sys.exit(main())
