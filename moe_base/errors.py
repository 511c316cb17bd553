"""The toolkit's errors: one root, a type per kind of problem. Each message says what was given, what was
expected and what to do.

The command line shows a ``ToolkitError`` as one message (exit code 2, 1 for a failed parity check); any other
exception is a bug and keeps its traceback. Errors about input also derive from ``ValueError`` and a missing
backend from ``ImportError``, so callers that catch those keep working.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path


class ToolkitError(Exception):
    """Root of every error the toolkit raises on purpose."""


class InputError(ToolkitError, ValueError):
    """An input (array, image, file, setting, option) is not what the function or command accepts."""


class DatasetError(InputError):
    """The data folder is missing or malformed."""


class CheckpointError(InputError):
    """A weights file, a training state or a weights sidecar is missing, unreadable or does not fit the model."""


class MissingBackendError(ToolkitError, ImportError):
    """A backend was asked for but its package (or hardware) is not available here."""


class NoGPUError(MissingBackendError):
    """A GPU backend was asked for on a machine where no CUDA GPU is visible."""


class ArtifactError(ToolkitError, ValueError):
    """An artifact file (ONNX model, engine, AOT kernel) is missing, truncated or corrupt."""


class ArtifactMismatchError(ArtifactError):
    """An artifact's manifest does not match this environment (versions, GPU, plugin, model)."""


class PluginMissingError(ArtifactError):
    """An engine needs a TensorRT plugin that is not registered in this process."""


class AOTError(ToolkitError):
    """The sparse-attention kernel cannot be turned into a launchable ahead-of-time artifact as asked."""


class TrainingError(ToolkitError):
    """Training cannot go on (e.g. the loss became NaN or infinite); what was written so far is kept."""


class BuildError(ToolkitError):
    """TensorRT could not build an engine from a graph it parsed."""


class NotActiveError(ToolkitError, RuntimeError):
    """A runner was called before it was activated (``with runner:`` or ``runner.activate()``), or after its release."""


class ParityError(ToolkitError):
    """A backend's outputs differ from the PyTorch reference by more than the tolerance."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a command as Ctrl-C does: Ctrl-C, SIGTERM (kill, a scheduler, a container stopping) and SIGHUP (its
terminal or ssh session closed), each unless it is ignored (nohup ignores SIGHUP)."""


def stop_reason(interrupt: BaseException) -> str:
    """How a command was stopped, in words: by Ctrl-C (a plain KeyboardInterrupt), SIGTERM or SIGHUP."""
    signum = getattr(interrupt, "signum", signal.SIGINT)
    if signum == signal.SIGTERM:
        return "stopped by SIGTERM"
    if signum == signal.SIGHUP:
        return "stopped by SIGHUP (its terminal was closed)"
    return "interrupted (Ctrl-C)"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (``signum`` 2), SIGTERM (15) or SIGHUP (1) stopped a command: the command line exits 128 + ``signum``.
    The message is what the command left and how to go on; empty until a command says it (:meth:`said`)."""

    def __init__(self, message: str = "", signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum

    @staticmethod
    def said(interrupt: BaseException, message: str) -> Interrupted:
        """``interrupt`` (a KeyboardInterrupt, or an Interrupted of either signal) as a plain Interrupted with the
        command's own message (a subclass's extra state, such as a benchmark's document, stays behind)."""
        return Interrupted(message, getattr(interrupt, "signum", 2))


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done, then act as they would have: for files that are only
    right together (weights and their JSON, a training state beside them), a stop between them left weights whose
    JSON named another file's hash. Outside the main thread nothing is held (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: object) -> None:
        got.append(signum)

    previous = {s: signal.signal(s, hold) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
    if got:  # only after a block that finished: an error in it (a full disk) is not hidden behind the stop
        signal.raise_signal(next((s for s in (signal.SIGTERM, signal.SIGHUP) if s in got), got[0]))


def path_error_message(e: BaseException, named: bool = True) -> str | None:
    """The one-line message for an OSError about a path that is the user's to fix wherever it is met (a folder that
    cannot be searched, a name over the file system's limit, a loop of symbolic links), or None for any other error,
    which keeps its traceback. Checks of paths meet these everywhere (pathlib's exists() and is_dir() raise them),
    and each read as a crash, a traceback ending in 'File name too long'. ``named``: the message starts with the
    path (False: for a caller whose own words name it)."""
    if not isinstance(e, OSError) or not e.filename or not isinstance(e.filename, (str, bytes, os.PathLike)):
        return None  # a file descriptor's number (os.stat(3)) names no path
    name = os.fsdecode(e.filename)
    shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"{f'{shown!r}: ' if named else ''}{(e.strerror or 'permission denied').lower()}; this user may not read, "
                f"write or enter it (a folder needs its x permission to be entered). Fix its permissions or those of "
                f"the folder it is in, or choose another path")
    if e.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(part)) for part in Path(name).parts), default=0)
        return (f"the path '{shown}' is too long: a file or folder name can have at most 255 bytes here and a whole "
                f"path 4,096 (its longest name has {longest:,} bytes, the path {len(os.fsencode(name)):,}); choose a "
                f"shorter name")
    if e.errno == errno.ELOOP:
        return (f"{f'{shown!r} is' if named else 'it is'} a loop of symbolic links (one that leads back to itself); fix "
                f"or remove the link, or choose another path")
    return None


def json_problem(e: ValueError | RecursionError) -> str:
    """Why a JSON text could not be read, in words: a RecursionError (nested thousands deep) and the ValueError of a
    number of thousands of digits (whose advice to call sys.set_int_max_str_digits is no user's) said plainly."""
    if isinstance(e, RecursionError):
        return "it is nested too deeply to be read"
    if "integer string conversion" in str(e):
        return "it holds a number of thousands of digits"
    return str(e)


def repeated(items: Iterable[Hashable]) -> list:
    """The items given more than once, sorted: for a refusal that names them (a batch size, a label, a photo)."""
    return sorted(item for item, n in Counter(items).items() if n > 1)
