"""Progress of long work: a bar on a terminal, a line per step in a log, nothing when turned off."""
import io

import pytest

from moe_base.progress import Progress, as_mode, progress_mode


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_mode_follows_the_stream():
    assert progress_mode(stream=Terminal()) == "bar"
    assert progress_mode(stream=io.StringIO()) == "lines"
    assert progress_mode(False, stream=Terminal()) is None
    assert [as_mode(x) for x in (True, False, None, "lines", "bar")] == [progress_mode(True), None, None, "lines", "bar"]


def test_true_is_a_bar_on_a_terminal_and_lines_in_a_log():
    """progress=True (denoise_file's default) wrote tqdm's bar, carriage returns and all, into a log file."""
    log = io.StringIO()
    with Progress(3, "denoising", "tile", True, stream=log) as p:
        for _ in range(3):
            p.step()
    assert p.mode == "lines" and "\r" not in log.getvalue() and "denoising" in log.getvalue()
    with Progress(3, "denoising", "tile", True, stream=Terminal()) as shown:
        assert shown.mode == "bar"
    with pytest.raises(ValueError, match="'bar' or 'lines'; got 'dots'"):
        as_mode("dots")


def test_lines_name_each_step_and_count_them():
    log = io.StringIO()
    with Progress(2, "photos", "level", "lines", stream=log) as p:
        p.step("camera sigma 25")
        p.step()
    first, second = log.getvalue().splitlines()
    assert first.startswith("photos: camera sigma 25 (1 of 2 levels, 50%, ") and first.endswith(" s left)")
    assert second.startswith("photos: (2 of 2 levels, 100%, ") and second.endswith(" s)")  # done: no time left


def test_lines_say_the_share_done_and_the_time_left(monkeypatch):
    """A log's line said '(1216 of 10584 tiles, 31 s)': no share, no time left, on a photo of minutes."""
    import moe_base.progress as progress

    clock = iter([100.0, 131.0, 131.0 + 240.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    log = io.StringIO()
    p = Progress(10584, "denoising", "tile", "lines", stream=log)
    p.step(n=1216)
    p.step(n=10584 - 1216 - 100)
    first, second = log.getvalue().splitlines()
    assert first == "denoising: (1216 of 10584 tiles, 11%, 31 s, about 4 min left)"  # 31 / 1216 * 9368 = 239 s
    assert second == "denoising: (10484 of 10584 tiles, 99%, 271 s, about 3 s left)"


def test_a_bar_draws_on_its_stream_and_nothing_is_printed_when_off():
    term = Terminal()
    with Progress(3, "levels", "level", "bar", stream=term) as p:
        p.step("x")
    assert "levels" in term.getvalue() and "x (" not in term.getvalue()
    quiet = io.StringIO()
    with Progress(3, "levels", "level", None, stream=quiet) as p:
        p.step("x")
    assert quiet.getvalue() == "" and p.done == 1


def test_with_stderr_closed_there_is_no_progress_and_no_failure(monkeypatch):
    """`moe-denoise denoise ... 2>&-` (sys.stderr is None) exited 1 with no message and no output: None.isatty."""
    import sys

    monkeypatch.setattr(sys, "stderr", None)
    assert progress_mode() is None
    for mode in ("bar", "lines"):
        with Progress(3, "work", "step", mode) as p:
            p.step("one")
            assert p.mode is None and p.bar is None


def test_a_stream_without_isatty_or_closed_gets_lines():
    """A service's stand-in for stderr with write() alone (a logger's): denoise_file's default progress raised
    AttributeError before reading anything."""
    class Logger:
        def write(self, text):
            return len(text)

        def flush(self):
            pass

    closed = io.StringIO()
    closed.close()
    assert progress_mode(stream=Logger()) == "lines" and progress_mode(stream=closed) == "lines"
