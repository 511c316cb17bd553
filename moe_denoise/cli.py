"""``moe-denoise``: one command, one subcommand per job, each a thin layer over the library.

Subcommands live in ``moe_denoise/commands/<name>.py``; each module defines ``register(subparsers)`` which adds
its parser and sets ``func`` (args -> exit code). Heavy imports happen inside the handlers, so ``--help`` is fast
and works without optional backends.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from . import __version__

COMMANDS = ("train", "evaluate", "visualize", "export", "build", "parity", "denoise", "doctor", "bench", "serve",
            "triton_repo")


def print_json(obj: Any) -> None:
    """``obj`` as strict JSON: an infinite or NaN number is written as null (``Infinity``, which denoise --reference
    printed for an input identical to its reference, is refused by strict parsers such as JavaScript's)."""
    print(json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False))


def error_document(message: str, command: str, code: int, **more: Any) -> dict[str, Any]:
    """The JSON error document of --json, the same keys whatever refused (the option parser, a command, a stop, a
    parity gate): ``more`` adds what that one says besides."""
    return {"error": message, "command": command, "exit_code": code, **more}


def json_safe(obj: Any) -> Any:
    """``obj`` with inf / nan (a clean input's PSNR) as None and keys as strings: what strict JSON can hold."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class Refused(SystemExit):
    """argparse's refusal (exit 2), with the parser that refused and its message: under --json, a JSON error document
    is printed for it too, as for every other refusal (a bad value caught by an option's type gave an empty stdout,
    the same value caught by the command a document)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(2)
        self.parser, self.message = parser, message


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)
"""What a parser takes for a negative number, a value rather than an option: any form float() reads (-1e-3, -inf),
where argparse's own takes -5 and -0.5 only ('--lr -1e-3' was refused as 'expected one argument', not with what
the option takes)."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, refusing with :class:`Refused` (the same usage and message on standard error, exit 2).
    A negative number in any form float() reads (-1e-3, -inf) is a value (:data:`NEGATIVE_NUMBER`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: ANN201 - argparse's signature (NoReturn)
        message += dash_hint(self, _GIVEN)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise Refused(self, message)


_GIVEN: list[str] = []  # the words being parsed, for a refusal's hints


def dash_hint(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """A file named like an option ('-photo.png', as 'denoise * -o out/' gives) was refused as an unknown option, or
    left the photos missing ('the following arguments are required: input'), with no word of why."""
    files = [a for a in argv if a.startswith("-") and a != "-" and a not in parser._option_string_actions
             and os.path.lexists(a)]
    if not files:
        return ""
    return (f" ('{files[0]}' is a file here, read as an option: write ./{files[0]}, or put -- after the options "
            f"and before the file names)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="moe-denoise",
        description="Adaptive sparse-attention MoE denoiser: train, evaluate, export, run and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"moe-denoise {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (the exit code stays the same)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"moe_denoise.commands.{name}").register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an argument the command does not take is refused with the command's usage
    ('add-noise ... --json' showed the usage of moe-denoise itself, listing no option of add-noise), and --debug is
    taken after the command too ('denoise ... --debug' was an unrecognised argument)."""
    _GIVEN[:] = argv
    args, extras = parser.parse_known_args(argv)
    if "--debug" in extras:
        args.debug = True
        extras = [a for a in extras if a != "--debug"]
    if extras:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        sub = commands.get(getattr(args, "command", None)) or parser
        sub.error(f"unrecognized arguments: {' '.join(extras)}{repeat_hint(sub, argv, extras[0])}")
    return args


def repeat_hint(parser: argparse.ArgumentParser, argv: list[str], extra: str) -> str:
    """'--weights a b': b was refused alone; --sigmas and the photos take several values after one flag, so this is
    what a user tries. When the refused word follows the value of an option given once per value, say to repeat it."""
    at = argv.index(extra) if extra in argv else -1
    flag = argv[at - 2] if at >= 2 else ""
    action = parser._option_string_actions.get(flag)
    if isinstance(action, argparse._AppendAction):
        return f" ({flag} takes one value; repeat it for each: {flag} {argv[at - 1]} {flag} {extra})"
    return ""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a job scheduler, a container stopping) and SIGHUP (a closed terminal) stop a command as Ctrl-C
    does: files are left whole (writes are atomic), the command says what it left and how to go on, and the exit code
    is 128 + the signal (143, 129). It ended them in silence, leaving temporaries and empty output folders behind.
    'serve' sets its own handlers inside this one."""
    from moe_base.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted("", signum)

    # SIGHUP too (a closed terminal or ssh session): it ended commands in silence, an empty output folder or a
    # staging folder left; not where it is ignored (nohup)
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:  # None: a handler not set from Python (main() called by another program): the default then
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def file_name_bytes(error: UnicodeError) -> tuple[str | bytes, int]:
    """The encoding error handler of standard output (``moe-denoise-names``): a file name's bytes that are not
    UTF-8 (Python holds them as lone surrogates) are written as they are, as ``ls`` and ``find`` write them; a
    letter the output cannot hold (an 'é' to an ASCII stdout) as its escape, ``\\xe9``. Standard output was strict
    on a desktop's UTF-8 locale, and a photo named 'caf\\xe9.png' (an old archive, a Samba share) ended a folder's
    denoising half-way, and an export before it wrote the model, with a UnicodeEncodeError traceback."""
    import codecs

    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(error)


OWN_PACKAGES = ("moe_base", "moe_model", "topk_attention", "runtime", "export", "benchmarks", "serving", "moe_denoise",
                "weights")  # pyproject.toml's packages (a test keeps them in step)
DISTRIBUTIONS = {"PIL": "pillow", "numpy": "numpy", "torch": "torch==2.13.0 (or the build you use)",
                 "safetensors": "safetensors", "tqdm": "tqdm"}  # the base install's imports, by the name pip knows


def broken_install_message(e: ImportError) -> str:
    """What cannot be imported, and what to do when a module every command imports cannot be: a file of the user's
    that hides one of the toolkit's packages is named (an export.py in the current folder was answered 'pip install
    export.onnx_export'), a dependency is named as pip knows it (PIL is 'pillow')."""
    return f"{e.name or 'a package it needs'} cannot be imported ({e}): {_broken_install_advice(e.name)}"


def _broken_install_advice(name: str | None) -> str:
    top = (name or "").split(".")[0]
    if top in OWN_PACKAGES:
        import importlib.util
        from pathlib import Path

        spec = None
        with contextlib.suppress(Exception):  # a module that fails as it is found is no file of the user's to name
            spec = importlib.util.find_spec(top)
        where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
        if where and Path(__file__).resolve().parents[1] not in Path(where).resolve().parents:
            return (f"'{top}' is {where}, which hides moe-denoise's own '{top}' package: rename that file or folder, "
                    f"or run moe-denoise from another folder")
        return "moe-denoise's install is incomplete: install it again (pip install --force-reinstall moe-denoise)"
    return (f"the install is incomplete; install it again (pip install {DISTRIBUTIONS.get(top, top or 'moe-denoise')}) "
            f"or check the Python environment this runs in")


def main(argv: list[str] | None = None) -> int:
    """The command line: ``argv`` (``sys.argv[1:]`` when None) run, and its exit code returned. Run as the program
    (``argv`` None), a stop that comes after the command ended, while Python tears torch down (about a second),
    ends the process with the command's exit code: it ended it as killed by that signal (130, 143), with no word,
    after 'wrote ...'."""
    code = _main(argv)
    if argv is None:
        exit_on_stop(code)
    return code


def forget_handled_interrupt() -> None:
    """Run as ``python -m moe_denoise``, a Ctrl-C that main() handled (said, exit 130) sometimes still ended the
    process killed by SIGINT: CPython 3.10 and 3.11 note a KeyboardInterrupt that leaves a nested evaluation (one in a
    library's import, here), and after a module run with -m they end the process with SIGINT when the note is set.
    main() handles every KeyboardInterrupt, so once it has returned the note is cleared (where the interpreter has
    one by that name; a script, as the moe-denoise command, never read it)."""
    import ctypes

    with contextlib.suppress(Exception):  # another interpreter, or a Python without it
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0


def exit_on_stop(code: int) -> None:
    """From now on Ctrl-C, SIGTERM and SIGHUP end the process at once with ``code`` (what is printed is flushed
    first); not where one is ignored."""
    from moe_base.errors import STOP_SIGNALS

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if threading.current_thread() is not threading.main_thread():
        return
    stops = [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
    for s in stops:
        signal.signal(s, lambda signum, frame: os._exit(code))

    def ignore_stops() -> None:  # Python's finalization puts SIG_DFL back for handlers set from Python, not SIG_IGN:
        for s in stops:  # torch's teardown after it (a second or so) was killed by a stop, with 130 or 143
            signal.signal(s, signal.SIG_IGN)

    import atexit

    atexit.register(ignore_stops)  # run first of the exit handlers (after the wait for threads, which a stop ends)


def _main(argv: list[str] | None) -> int:
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # a line is in a log (nohup ... > log) when printed, not when 8 KB have gathered
        import codecs

        codecs.register_error("moe-denoise-names", file_name_bytes)
        reconfigure(line_buffering=True, errors="moe-denoise-names")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:  # before torch loads OpenMP:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # its threads spin while they wait, and on a shared CPU held a core
        # the other thread needed (1.7 to 4x slower; about 8% faster on an idle one): docs/benchmarks.md
    try:
        parser = build_parser()  # imports every command's module: a second or more, where a Ctrl-C printed a traceback
        args = parse_args(parser, argv)
    except Refused as e:
        if "--json" in argv and "--json" in e.parser._option_string_actions:  # the command's --json, given
            with contextlib.suppress(OSError):
                print_json(error_document(e.message, e.parser.prog.split()[-1], 2))
        raise
    except KeyboardInterrupt:
        if "--debug" in argv:
            traceback.print_exc()
        print("interrupted (before the command started: nothing was written)", file=sys.stderr)
        return 128 + int(signal.SIGINT)
    except ImportError as e:  # a package every command needs (numpy) is missing: a broken install, even for --help
        if "--debug" in argv:
            traceback.print_exc()
        print(f"moe-denoise: error: {broken_install_message(e)}", file=sys.stderr)
        return 2
    args.argv = argv  # the exact command, recorded by jobs that write artifacts
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from moe_base.errors import ParityError, ToolkitError, path_error_message, stop_reason

    watched = sys.stdout = WatchedOutput(sys.stdout) if sys.stdout is not None else None
    sys.stderr = BestEffortOutput(sys.stderr) if sys.stderr is not None else None
    try:
        check_current_folder()
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: the command has said what it left, or this says it
        if args.debug:  # the traceback too, and the same exit code (a script's check of it holds with --debug)
            traceback.print_exc()
        signum = getattr(e, "signum", signal.SIGINT)
        stopped = "interrupted" if signum == signal.SIGINT else stop_reason(e)  # a stop just after the last write
        # read as a failure: files are written whole or not at all, so those it said it wrote are done
        message = str(e) or (f"{stopped} (every file is written whole or not at all: those reported as written "
                             f"are complete)")
        print(message, file=sys.stderr)
        _json_error(args, watched, message, 128 + int(signum), interrupted=True)  # as a batch's and bench's own
        return 128 + int(signum)
    except ToolkitError as e:  # the user's to fix: one message; anything else is a bug and keeps its traceback
        return _said(args, watched, str(e), 1 if isinstance(e, ParityError) else 2)
    except ModuleNotFoundError as e:  # a base package gone (an optional one is a MissingBackendError, said above): it
        # was a traceback ('import of PIL halted')
        if not e.name:
            raise
        return _said(args, watched, broken_install_message(e), 2)
    except BrokenPipeError:  # the reader went away (moe-denoise ... | head): quietly, as other commands do
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe closed
    except OSError as e:
        if watched is None or watched.failed is not e:  # not the output's: a bug, with its traceback, unless a
            message = path_error_message(e)  # path's permissions, length or links are the user's to fix
            if message is None:
                raise
            return _said(args, watched, message, 2)
        _stdout_to_devnull()
        print(f"moe-denoise {args.command}: error: cannot write to standard output ({e.strerror or e}); stopped "
              f"there (files written before it are complete)", file=sys.stderr)
        return 1
    finally:
        if watched is not None and sys.stdout is watched:
            sys.stdout = watched.inner
        if isinstance(sys.stderr, BestEffortOutput):
            sys.stderr = sys.stderr.inner


def check_current_folder() -> None:
    """InputError when the current folder is gone (removed, or moved away, while a shell was in it): torch then
    failed to load with 'Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so' (exit 2, whatever paths were
    given), and a relative input was called 'truncated or corrupt'."""
    from moe_base.errors import InputError

    try:
        os.getcwd()
    except FileNotFoundError as e:
        where = os.environ.get("PWD")
        raise InputError(f"the current folder{f' ({where})' if where else ''} no longer exists: it was removed or "
                         f"moved while this shell was in it; cd to a folder that exists and run again") from e


def _said(args: Any, watched: WatchedOutput | None, message: str, code: int) -> int:
    """An error that is the user's to fix, said in one line (with the traceback under --debug), and a JSON error
    document for --json when nothing was printed yet; returns the exit code."""
    if args.debug:
        traceback.print_exc()
    print(f"moe-denoise {args.command}: error: {message}", file=sys.stderr)
    _json_error(args, watched, message, code)
    return code


def _json_error(args: Any, watched: WatchedOutput | None, message: str, code: int, interrupted: bool = False) -> None:
    """Under --json, the JSON error document, when nothing was printed yet: a script reading the JSON gets one, not an
    empty stdout (nor a second document). ``interrupted``: a stop by Ctrl-C or a signal."""
    printed = (watched is None or watched.wrote) or getattr(args, "printed_json", False)  # serve's own copy
    if getattr(args, "json", False) and not printed:
        with contextlib.suppress(OSError):
            print_json(error_document(message, args.command, code, **({"interrupted": True} if interrupted else {})))


CONTROLS = re.compile(r"(?!^\r)(?!\x1b\[A)[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""The control characters a terminal would act on, but a tab, a line's end, a progress bar's leading return and the
cursor-up (ESC [ A) with which tqdm redraws a bar below another (evaluate's BM3D bar under its levels' bar printed
a literal '\x1b[A' and a new line for each image)."""


def for_terminal(stream: Any) -> Callable[[str], str]:
    """What a text written to ``stream`` becomes: on a terminal, its control characters as escapes (``\\x1b``),
    as ls and cp show a file name; elsewhere (a file, a pipe) the text as it is. A photo named with an escape
    sequence coloured or moved the terminal's text from its success line; one with a carriage return wrote over it."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        tty = False
    if not tty:
        return lambda text: text
    return lambda text: CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


class WatchedOutput:
    """Standard output, remembering the error a write or flush of it raised (``failed``): a full disk under
    '> file' or /dev/full is then said in one line, and an error of anything else keeps its traceback. ``wrote``:
    whether anything was written to it. On a terminal, control characters are shown as escapes (:func:`for_terminal`)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failed, self.wrote, self.shown = inner, None, False, for_terminal(inner)

    def write(self, text: str) -> int:
        self.wrote = self.wrote or bool(text)
        try:
            self.inner.write(self.shown(text))
            return len(text)
        except OSError as e:
            self.failed = e
            raise

    def flush(self) -> None:
        try:
            self.inner.flush()
        except OSError as e:
            self.failed = e
            raise

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...: the stream's own
        return getattr(self.inner, name)


class BestEffortOutput:
    """Standard error, where progress and notes go, written as long as it takes them: once a write fails (a full
    disk under '2> log', /dev/full, a descriptor a wrapper script left read-only), nothing more is tried and the work
    goes on. The first progress line's OSError stopped a folder's denoising, evaluate and bench before they wrote
    anything (exit 1), and its traceback went to the same dead stream: no file and no word. ``lost``: that error. On
    a terminal, control characters are shown as escapes (:func:`for_terminal`)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.lost, self.shown = inner, None, for_terminal(inner)

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                self.inner.write(self.shown(text))
            except OSError as e:
                self.lost = e
        return len(text)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self.inner.flush()
            except OSError as e:
                self.lost = e

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...: the stream's own
        return getattr(self.inner, name)


def _stdout_to_devnull() -> None:
    if sys.stdout is None:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's flush at exit would raise again


if __name__ == "__main__":
    raise SystemExit(main())
