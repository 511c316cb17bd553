"""docs/reliability.md, generated from the reliability suite: every test named ``test_reliability_*`` under tests/
is one case, and its docstring reads "<case> => <expected outcome>".

    python -m tools.reliability_table > docs/reliability.md     # regenerate
    python -m tools.reliability_table --check                   # exit 1 when docs/reliability.md is out of date
"""
import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
HEADER = """# Reliability: hostile and careless input, and what happens

Every row is a test of the reliability suite (tests named `test_reliability_*`; this page is generated from their
docstrings by `python -m tools.reliability_table`, and a test fails when it is out of date). "Refused" means: a
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
    p.add_argument("--check", action="store_true", help="compare with docs/reliability.md instead of printing")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.relative_to(REPO)} is out of date: python -m tools.reliability_table > "
                  f"{DOC.relative_to(REPO)}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
