"""The wheel holds the whole toolkit: every package folder is listed in pyproject.toml, and the shipped weights
travel as package data (a non-editable 'pip install .' was checked by hand to denoise the demo byte-identically)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_in_the_wheel():
    listed = set(_setuptools_config()["packages"])
    tops = {p.split(".")[0] for p in listed}
    found = {".".join(init.parent.relative_to(REPO).parts) for top in tops for init in (REPO / top).rglob("__init__.py")}
    assert found - listed == set(), "package folders missing from [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"


def test_the_version_is_one():
    """pyproject.toml's version is the one --version prints (two places, nothing tied them)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")
    import moe_denoise

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == moe_denoise.__version__


def test_the_shipped_weights_are_package_data():
    from fnmatch import fnmatch

    from weights import SHIPPED

    patterns = _setuptools_config()["package-data"]["weights"]
    for path in SHIPPED.values():
        for f in (path, path.with_suffix(".json")):
            assert f.is_file() and any(fnmatch(f.name, p) for p in patterns), f"{f.name} would not be in the wheel"


def _source_files() -> list[str]:
    """The files of this checkout that a release is made from: tracked, or new and not ignored."""
    import shutil
    import subprocess

    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (to know its files); this is not one")
    out = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in set(out.split("\0")) if f and (REPO / f).is_file())


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(sdist names, wheel names, the build's stderr): both built by setuptools from a copy of the checkout."""
    import shutil
    import subprocess
    import sys
    import tarfile
    import zipfile

    pytest.importorskip("setuptools", minversion="77", reason="building the release needs setuptools >= 77")
    src = tmp_path_factory.mktemp("release") / "src"
    for f in _source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    run = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c",
                          "from setuptools import build_meta as b; s = b.build_sdist('dist'); w = b.build_wheel('dist'); "
                          "print('BUILT', s, w)"], cwd=src, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    sdist_name, wheel_name = run.stdout.rsplit("BUILT ", 1)[1].split()  # setuptools logs to stdout too
    with tarfile.open(src / "dist" / sdist_name) as t:
        sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    with zipfile.ZipFile(src / "dist" / wheel_name) as z:
        wheel = set(z.namelist())
    return sdist, wheel, run.stderr


@pytest.mark.slow
def test_the_sdist_holds_the_tests_and_what_they_read(release):
    """A source release whose tests run: it held 2 of the test files (the top level's only) and none of the docs,
    tools and committed results they read, so collecting test_published_numbers.py failed in it."""
    sdist, _, _ = release
    wanted = [f for f in _source_files()
              if f.startswith(("tests/", "docs/", "tools/", "benchmarks/results/")) or f in ("README.md", "pyproject.toml")]
    missing = [f for f in wanted if f not in sdist and "__pycache__" not in f]
    assert not missing, f"{len(missing)} file(s) missing from the sdist (MANIFEST.in), e.g. {missing[:5]}"


@pytest.mark.slow
def test_the_wheel_holds_the_packages_and_weights_only(release):
    _, wheel, _ = release
    from weights import SHIPPED

    for path in SHIPPED.values():
        assert f"weights/{path.name}" in wheel and f"weights/{path.with_suffix('.json').name}" in wheel
    extra = sorted(n for n in wheel if n.startswith(("tests/", "docs/", "tools/", "benchmarks/results/")))
    assert not extra, f"the wheel would install files that are not the toolkit's: {extra[:5]}"


@pytest.mark.slow
def test_both_releases_carry_the_licence_text(release):
    """pyproject.toml says MIT, but no licence text was in the repository, so neither release carried one (the MIT
    licence asks that its notice travel with every copy). setuptools picks LICENSE up as a licence file."""
    sdist, wheel, _ = release
    assert "LICENSE" in sdist
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel), sorted(n for n in wheel if "dist-info" in n)


@pytest.mark.slow
def test_the_build_uses_no_deprecated_setuptools_configuration(release):
    """`license = { text = "MIT" }` (a TOML table) is deprecated: setuptools warned on every build that from
    2027-02-18 such projects no longer build. An SPDX string (setuptools >= 77) is the current form."""
    _, _, stderr = release
    assert "SetuptoolsDeprecationWarning" not in stderr, stderr[-2000:]


def _message_strings(path: Path) -> list[tuple[int, str]]:
    """The string literals of a module that can reach a user (help texts, messages): every one but docstrings and
    other bare string statements; an f-string as the text of its literal parts."""
    import ast

    tree = ast.parse(path.read_text())
    skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            found.append((n.lineno, "".join(v.value for v in n.values if isinstance(v, ast.Constant))))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip | parts:
            found.append((n.lineno, n.value))
    return found


def test_messages_that_name_a_source_file_say_where_it_is():
    """The wheel holds the packages only: someone who installed it has no docs/, tools/ or benchmarks/results. A help
    text or message naming one said 'read ... in docs/serving.md' (the warning for a server reachable by others
    among them), a file that is nowhere on their machine; it now says it is in the moe-denoise source."""
    import re

    source_path = re.compile(r"(?<![\w/])(docs/\w+\.md|tools/\w+|benchmarks/results)")
    bad = []
    for top in {p.split(".")[0] for p in _setuptools_config()["packages"]}:
        for f in sorted((REPO / top).rglob("*.py")):
            for line, text in _message_strings(f):
                if source_path.search(text) and "moe-denoise source" not in text:
                    bad.append(f"{f.relative_to(REPO)}:{line}: {text[:100]!r}")
    assert not bad, "messages naming a file of the source only, without saying so:\n" + "\n".join(bad)
