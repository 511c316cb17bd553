"""Check the shell commands shown in README.md and docs/*.md.

    python -m tools.check_readme                          # fast: parse every moe-denoise line, check the paths
    python -m tools.check_readme --run-quickstart DIR     # slow (minutes): clone into DIR, run the quick start twice

Default mode, per file, for every command line of its ```bash blocks (continuation lines joined, comments
dropped, ``&&`` / ``;`` / ``|`` chains split into commands):

- every ``moe-denoise ...`` command is parsed by the real parser (``moe_denoise.cli.build_parser()``); parsing
  only, nothing is run;
- every argument that names a file of this repository (its first part is a top-level entry the repository
  tracks: ``docs/...``, ``weights/...``, ``tools/...``, ``.ci/run``; ``python -m tools.x`` names
  ``tools/x.py``) exists, unless it is an output (``-o``, ``--out-dir``, ``tee``, ``>`` and the like);
- an input under ``artifacts/`` (the old default folder of exported models, now
  ``$MOE_DENOISE_CACHE/artifacts``) is written by an earlier command of the same file;
- outside the code blocks, every relative link and every path in inline code that names a repository file
  exists.

``--run-quickstart DIR`` clones this repository (its committed state) into DIR and runs the two commands of the
README's "Quick start" block there, in the order ``--plan`` gives (default 1,2,1,2: both, twice in a row), each
with ``bash -c`` in a shell without this session's virtual environment, and reports each exit code. Exit code
0 when every check (or run) passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools import run_tool

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(\s*)```+\s*(\S*)")
SHELL_LANGS = {"bash", "sh", "shell"}
OPERATORS = {"&&", "||", ";", "|", "&", "|&"}
REDIRECTS = {">", ">>", "<", ">&", "&>", "2>", "2>>"}
# options whose value is something the command writes (moe-denoise, tools/*; --json takes a path in tools/*)
OUTPUT_OPTIONS = {"-o", "--output", "--out-dir", "--out", "--save-json", "--plot", "--log-file", "--ready-file",
                  "--cache-dir", "--json"}
WRITERS = {"tee", "mkdir", "touch"}  # every argument is an output
QUICKSTART_HEADING = re.compile(r"^#+\s*quick start\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Command:
    """One command line of a code block: its text (continuations joined, comment dropped) and first line."""
    line: int
    text: str
    simple: list[list[str]] = field(default_factory=list)  # the simple commands of the line, as argv lists
    outputs: list[str] = field(default_factory=list)  # redirection targets


def default_files(repo: Path = REPO) -> list[Path]:
    """README.md and every docs/*.md of the repository."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Fenced code blocks as (language, line number of the first content line, lines)."""
    blocks, current, lang, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if current is None and match:
            current, lang, start = [], match.group(2).lower(), number + 1
        elif current is not None and match and not match.group(2):
            blocks.append((lang, start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def split_command(text: str) -> tuple[list[list[str]], list[str]]:
    """A shell line -> its simple commands (argv lists, leading VAR=value assignments dropped) and the targets of
    its redirections. Raises ValueError on unbalanced quotes."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands, outputs, argv, i = [], [], [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in OPERATORS:
            commands.append(argv)
            argv = []
        elif tok in REDIRECTS:
            if i + 1 < len(tokens):
                outputs.append(tokens[i + 1])
            i += 1
        elif re.fullmatch(r"\d", tok) and i + 1 < len(tokens) and tokens[i + 1] in REDIRECTS:
            pass  # the file descriptor of "2>" / "2>&1"
        else:
            argv.append(tok)
        i += 1
    commands.append(argv)
    commands = [c[next((k for k, a in enumerate(c) if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", a)), len(c)):]
                for c in commands]
    return [c for c in commands if c], outputs


def commands_of(lines: list[str], first_line: int) -> list[Command]:
    """The command lines of a shell block: a line ending in a backslash continues on the next; comments and empty
    lines are dropped. A line shlex cannot split keeps ``simple`` empty (reported by the checks)."""
    found, pending, start = [], "", first_line
    for number, line in enumerate(lines, first_line):
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        try:
            simple, outputs = split_command(text)
        except ValueError:
            simple, outputs = [], []
        if simple or outputs:
            found.append(Command(start, text, simple, outputs))
        elif text and not text.startswith("#"):
            found.append(Command(start, text))
    if pending.strip():
        found.append(Command(start, pending.strip()))
    return found


def is_moe_denoise(argv: list[str]) -> bool:
    if Path(argv[0]).name == "moe-denoise":
        return True
    return len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m" and argv[2] == "moe_denoise"


def parse_error(argv: list[str], parser: argparse.ArgumentParser) -> str | None:
    """None if the real parser accepts the arguments, else its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):  # --help, --version
            return None
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit code {e.code}"
    if not getattr(args, "func", None):
        return "no subcommand"
    return None


def tracked_top_level(repo: Path) -> set[str]:
    """The top-level names the repository tracks (git), or those present on disk outside git."""
    if (repo / ".git").exists():
        out = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True, text=True, check=True).stdout
        return {line.split("/")[0] for line in out.splitlines() if line}
    return {p.name for p in repo.iterdir() if p.name not in {".venv", "__pycache__"}}


def repo_path(token: str, top: set[str]) -> str | None:
    """The repository path a token names, or None when it names none (options, URLs, absolute paths, paths
    outside the repository, placeholders)."""
    token = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
    if not token or token.startswith(("-", "/", "~", "$", "../", "http:", "https:")) or re.search(r"[<>*?{}\[\]$]", token):
        return None
    token = token.removeprefix("./").rstrip(".,:;)")
    return token if token.split("/")[0] in top else None


def check_text(text: str, name: str, repo: Path, top: set[str], parser: argparse.ArgumentParser) -> list[Problem]:
    problems: list[Problem] = []
    written: list[str] = []  # outputs of earlier commands in this file

    def is_written(path: str) -> bool:
        return any(path == w.rstrip("/") or path.startswith(w.rstrip("/") + "/") for w in written)

    def check_path(path: str, line: int) -> None:
        if not (repo / path).exists() and not is_written(path):
            problems.append(Problem(name, line, f"{path}: no such file in the repository"))

    for lang, first, lines in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for cmd in commands_of(lines, first):
            if not cmd.simple:
                problems.append(Problem(name, cmd.line, f"cannot split this shell line: {cmd.text}"))
                continue
            written += cmd.outputs
            for argv in cmd.simple:
                if is_moe_denoise(argv):
                    args = argv[1:] if Path(argv[0]).name == "moe-denoise" else argv[3:]
                    error = parse_error(args, parser)
                    if error:
                        problems.append(Problem(name, cmd.line, f"moe-denoise {' '.join(args)}: {error}"))
                prog = Path(argv[0]).name
                outputs = OUTPUT_OPTIONS - {"--json"} if is_moe_denoise(argv) else OUTPUT_OPTIONS  # a flag there
                for k, tok in enumerate(argv):
                    value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else None
                    is_output = (prog in WRITERS and k > 0) or (k > 0 and argv[k - 1] in outputs) or (
                        value is not None and tok.split("=", 1)[0] in outputs)
                    if prog in {"cp", "mv"} and k == len(argv) - 1:
                        is_output = True
                    if prog == "venv" or (k >= 2 and argv[k - 2:k] == ["-m", "venv"]):
                        is_output = True
                    if is_output:
                        written.append((value or tok).removeprefix("./"))
                        continue
                    if k > 0 and argv[k - 1] == "-m" and Path(argv[0]).name.startswith("python"):
                        module = tok.replace(".", "/")
                        if module.split("/")[0] in top and not ((repo / f"{module}.py").exists()
                                                                or (repo / module / "__init__.py").exists()):
                            problems.append(Problem(name, cmd.line, f"python -m {tok}: no such module in the "
                                                                    f"repository"))
                        continue
                    path = repo_path(tok, top)
                    if path:
                        check_path(path, cmd.line)
                    elif (value or tok).startswith("artifacts/") and not is_written(value or tok):
                        problems.append(Problem(name, cmd.line, f"{value or tok}: no earlier command in this file "
                                                                f"writes it; exported models go to "
                                                                f"$MOE_DENOISE_CACHE/artifacts (default "
                                                                f"~/.cache/moe-denoise/artifacts)"))
    # prose: relative links and inline-code paths (outside code blocks)
    in_block = False
    doc_dir = Path(name).parent
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            rel = os.path.normpath(doc_dir / target.split("#")[0])
            if not rel.startswith("..") and not (repo / rel).exists():
                problems.append(Problem(name, number, f"link {target}: no such file in the repository"))
        for span in re.findall(r"`([^`\s]+)`", line):
            path = repo_path(span, top)
            if path and "/" in path and not (repo / path).exists():
                problems.append(Problem(name, number, f"`{span}`: no such file in the repository"))
    return problems


def check(files: list[Path] | None = None, repo: Path = REPO) -> list[Problem]:
    """Every problem found in the files (default: README.md and docs/*.md); [] when all is well."""
    from moe_denoise.cli import build_parser

    parser, top = build_parser(), tracked_top_level(repo)
    problems = []
    for path in files or default_files(repo):
        path = Path(path)
        try:
            name = str(path.resolve().relative_to(repo.resolve()))
        except ValueError:
            name = str(path)
        problems += check_text(path.read_text(), name, repo, top, parser)
    return problems


def quickstart_commands(readme: Path) -> list[str]:
    """The command lines of the first shell block under the README's "Quick start" heading."""
    text = readme.read_text()
    lines = text.splitlines()
    heading = next((i for i, line in enumerate(lines) if QUICKSTART_HEADING.match(line)), None)
    if heading is None:
        raise SystemExit(f"{readme}: no 'Quick start' heading")
    for lang, first, block in code_blocks("\n".join(lines[heading:])):
        if lang in SHELL_LANGS:
            return [c.text for c in commands_of(block, first + heading)]
    raise SystemExit(f"{readme}: no shell block under 'Quick start'")


def clean_env() -> dict[str, str]:
    """This environment without the virtual environment this checker may run in: a fresh shell's."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None) or (sys.prefix if sys.prefix != sys.base_prefix else None)
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(str(Path(venv))))
    env.pop("PYTHONHOME", None)
    return env


def run_quickstart(dest: Path, plan: list[int], repo: Path = REPO, timeout: float | None = None,
                   log=print) -> list[dict]:
    """Clone the repository into ``dest`` and run its README's quick-start commands in the order of ``plan``
    (1-based). Returns one record per run: command number, exit code, seconds, log file."""
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty: give a new folder")
    subprocess.run(["git", "clone", "--quiet", str(repo), str(dest)], check=True)
    head = subprocess.run(["git", "-C", str(dest), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    commands = quickstart_commands(dest / "README.md")
    log(f"cloned {repo} at {head} into {dest}; quick start: {len(commands)} command(s)")
    for i, c in enumerate(commands, 1):
        log(f"  [{i}] {c}")
    if len(commands) != 2:
        raise SystemExit(f"the README's quick start has {len(commands)} commands; expected 2")
    logs = dest.parent / f"{dest.name}.logs"
    logs.mkdir(exist_ok=True)
    records = []
    for run, number in enumerate(plan, 1):
        if not 1 <= number <= len(commands):
            raise SystemExit(f"--plan names command {number}; the quick start has {len(commands)}")
        log_file = logs / f"run{run}-command{number}.log"
        t0 = time.monotonic()
        with open(log_file, "w") as out:
            try:
                rc = subprocess.run(["bash", "-c", commands[number - 1]], cwd=dest, env=clean_env(), stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        seconds = time.monotonic() - t0
        tail = log_file.read_text().strip().splitlines()[-1:] or [""]
        log(f"run {run}: command {number}: exit code {rc} in {seconds:.0f} s ({log_file}); last line: {tail[0]}")
        records.append({"run": run, "command": number, "exit_code": rc, "seconds": round(seconds, 1),
                        "log": str(log_file)})
    return records


def plan_arg(text: str) -> list[int]:
    """argparse type: --plan, the quick start's commands to run in order (1 or 2, comma-separated, at least one):
    checked before the clone ('1,x' was a traceback, '3' refused after cloning, '' passed as '0 of 0 runs')."""
    try:
        plan = [int(x) for x in text.split(",")]
    except ValueError:
        plan = []
    if not plan or any(n not in (1, 2) for n in plan):
        raise argparse.ArgumentTypeError(f"expected the quick start's command numbers, 1 or 2, comma-separated "
                                         f"(e.g. 1,2,1,2); got {text!r}")
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    p.add_argument("--run-quickstart", metavar="DIR", type=Path,
                   help="clone the repository into DIR (new or empty) and run the README's quick start there")
    p.add_argument("--plan", type=plan_arg, default=[1, 2, 1, 2],
                   help="with --run-quickstart: which quick-start commands to run, in order (default: 1,2,1,2)")
    p.add_argument("--timeout", type=float, default=None, help="with --run-quickstart: seconds per command")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        p.error(f"no such Markdown file: {', '.join(missing)}; give existing files (or none: README.md and "
                f"docs/*.md)")
    if not args.run_quickstart and (argv_given(argv, "--plan") or args.timeout is not None):
        p.error("--plan and --timeout are for --run-quickstart DIR; add it, or leave them out")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        p.error(f"--timeout is seconds per command, a number > 0; got {args.timeout:g}")
    if args.run_quickstart:
        records = run_quickstart(args.run_quickstart, args.plan, timeout=args.timeout)
        failed = [r for r in records if r["exit_code"] != 0]
        print(f"{len(records) - len(failed)} of {len(records)} runs exited 0")
        return 1 if failed else 0
    problems = check(args.files or None)
    for problem in problems:
        print(problem)
    files = args.files or default_files()
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"{len(files)} file(s): every moe-denoise command parses, every repository path exists")
    return 0


def argv_given(argv: list[str] | None, option: str) -> bool:
    """Whether ``option`` was on the command line (as OPTION VALUE or OPTION=VALUE)."""
    return any(a == option or a.startswith(option + "=") for a in (sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run_tool(main)
