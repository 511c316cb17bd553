"""Progress of long work in steps of seconds to minutes (noise levels, photos): a bar on a terminal, a line per
step in a log (``nohup ... > log``), where a bar's carriage returns would be noise and silence looks like a hang."""
from __future__ import annotations

import sys
import time
from typing import Literal, TextIO

from .errors import InputError

Mode = Literal["bar", "lines"]


def progress_mode(enabled: bool = True, stream: TextIO | None = None) -> Mode | None:
    """'bar' when ``stream`` (stderr) is a terminal, 'lines' when it is a file or pipe, None when not ``enabled`` or
    when there is no stream (stderr closed: ``2>&-``, where every command failed in silence on ``None.isatty``)."""
    stream = stream or sys.stderr
    if not enabled or stream is None:
        return None
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # a logger's stand-in with write() alone, or a closed stream:
        terminal = False  # denoise_file raised AttributeError before reading anything
    return "bar" if terminal else "lines"


def as_mode(progress: bool | str | None, stream: TextIO | None = None) -> Mode | None:
    """A ``progress`` argument as a mode: True (the library's older bool) = what :func:`progress_mode` chooses for
    ``stream`` (default stderr: 'bar' on a terminal, 'lines' in a log file or pipe: a library call wrote tqdm's bar,
    carriage returns and all, into a service's log), and 'bar' in a Jupyter kernel (tqdm's widget); False / None =
    none."""
    if progress is True:
        return "bar" if "ipykernel" in sys.modules else progress_mode(True, stream)  # a notebook: tqdm's widget
    if not progress:
        return None
    if progress not in ("bar", "lines"):
        raise InputError(f"progress must be True, False, 'bar' or 'lines'; got {progress!r}")
    return progress  # type: ignore[return-value]


class Progress:
    """``total`` steps of work named ``desc``; ``step(what)`` after each (``what``: the bar's postfix). In 'lines'
    mode a step prints '<desc>: <what> (i of N <unit>s, P%, s s, about T left)' to stderr at once (flushed), so a log
    shows where a long run is and how long it has to go; with ``every_s``, at most one line per ``every_s`` seconds
    (for many short steps). ``delay_s``: a bar appears only once the work has taken that long (none flashes by).
    ``total`` 0: not known ahead (a bar and lines count the steps without a share or an estimate)."""

    def __init__(self, total: int, desc: str, unit: str, mode: bool | str | None, stream: TextIO | None = None,
                 every_s: float = 0.0, delay_s: float = 0.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.mode = as_mode(mode, stream)  # True: chosen for the stream it writes to
        self.stream = stream or sys.stderr
        if self.stream is None:  # stderr closed: nowhere to show progress
            self.mode = None
        self.done = 0
        self.start = self.printed = time.perf_counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm  # a notebook's widget in Jupyter

            unknown = {"bar_format": "{desc}: {n_fmt} done [{elapsed}]"} if total <= 0 else {}  # not '1sample'
            self.bar = tqdm(total=total if total > 0 else None, desc=desc, unit=unit, leave=False, file=self.stream,
                            delay=delay_s, **unknown)  # total 0: not known ahead

    def step(self, what: str = "", n: int = 1) -> None:
        """``n`` more units of work done (``what``: the step's name or figures)."""
        self.done += n
        if self.bar is not None:
            if what:
                self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(n)
        elif self.mode == "lines" and (now := time.perf_counter()) - self.printed >= self.every_s:
            self.printed = now
            elapsed = now - self.start
            share = f", {100 * self.done / self.total:.0f}%" if self.total > 0 else ""
            left = elapsed / self.done * (self.total - self.done) if 0 < self.done < self.total else None
            ahead = "" if left is None else f", about {left:.0f} s left" if left < 120 else f", about {left / 60:.0f} min left"
            units = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s")  # batches, not batchs
            of = f" of {self.total}" if self.total > 0 else ""  # total 0: not known ahead
            print(f"{self.desc}: {what + ' ' if what else ''}({self.done}{of} {units}{share}, "
                  f"{elapsed:.0f} s{ahead})", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
