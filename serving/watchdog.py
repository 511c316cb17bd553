"""A watchdog that ends tritonserver when the ``serve`` that started it is gone without stopping it.

Run by :class:`serving.server.DenoiseServer` as its own small process (standard library only, ``python -I -S``)::

    python -I -S watchdog.py PARENT_PID TRITON_PID GRACE_S [--ready=FILE] [FOLDER ...]

It waits while both its parent (the serving process) and tritonserver run, and exits as soon as tritonserver ends
(a normal stop). When its parent is gone first (SIGKILL, the kernel's out-of-memory killer), tritonserver gets
GRACE_S seconds to end on its own (PyTriton has the kernel send it SIGTERM then), after which the watchdog kills it;
then it removes those FOLDERs (Triton's Python backend's ``python_env_*``) that are empty, unless another
tritonserver runs here (:func:`remove_empty`), and serve's ready FILE when it is still that serve's (its ``pid``): a
poller found the URLs of the killed server there until the next start (:func:`remove_ready`).

Why: with a gRPC request in flight, an orphaned tritonserver's exit hangs after its exit timeout until that client
gives up (seen for as long as the client's --timeout, an hour by default), holding the ports a supervisor's
restart needs. Processes are told apart by their start time, so a process id used again is never killed.
"""
import json
import os
import signal
import sys
import time

POLL_S = 0.5
SETTLE_S = 3.0  # how long a parent seen alive as tritonserver ends gets to be gone too (killed with it)
READY = "--ready="


def started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X", "x") else fields[19]


def tritonservers() -> set[int]:
    """The process ids of the tritonservers running here (this PID namespace's; a zombie's command line is empty)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                program = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if program.rsplit(b"/", 1)[-1] == b"tritonserver":
            found.add(int(entry))
    return found


def remove_empty(folders: list[str]) -> tuple[list[str], set[int]]:
    """Remove those of ``folders`` that are empty, unless a tritonserver runs here: Triton's Python backend keeps
    its ``python_env_*`` folder empty while it runs, so one that appeared as this server's models loaded may be
    another server's (starting in the same seconds), which aborted at its stop when the folder was gone. Returns
    what was removed, and the tritonservers that kept them (none when they were looked at)."""
    others = tritonservers()
    if others:
        return [], others
    removed = []
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # gone, or not empty
            continue
        removed.append(folder)
    return removed, set()


def remove_ready(path: str | None, parent: int) -> bool:
    """Remove serve's ready file ``path`` if it is still the one the serve ``parent`` wrote (its ``pid``; a file a
    later serve wrote, or anything else, stays); whether it was removed."""
    if not path:
        return False
    try:
        with open(path) as f:
            written = json.load(f)
        if isinstance(written, dict) and written.get("pid") == parent and "urls" in written:
            os.unlink(path)
            return True
    except (OSError, ValueError, RecursionError):  # not there (serve was killed before it was ready), or not a ready file
        pass
    return False


def watch(parent: int, pid: int, grace_s: float, folders: list[str], ready: str | None = None) -> str:
    """Watch as the module says; returns what happened: 'stopped' (tritonserver ended while its parent ran),
    'ended' (it ended on its own after its parent was gone) or 'killed'."""
    mark = started(pid)
    alive = lambda: mark is not None and started(pid) == mark  # noqa: E731 - read twice below
    while alive() and os.getppid() == parent:
        time.sleep(POLL_S)
    settle = time.monotonic() + SETTLE_S  # a SIGKILL to serve's whole group ends tritonserver and serve together,
    while os.getppid() == parent and time.monotonic() < settle:  # and serve takes a moment to be gone: its end was
        time.sleep(POLL_S / 5)  # taken for a normal stop, and its ready file was left (a normal stop kills this)
    if os.getppid() == parent:
        return "stopped"
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    what = "ended"
    if alive():
        try:
            os.kill(pid, signal.SIGKILL)
            what = "killed"
        except ProcessLookupError:  # it ended between the look and the kill
            pass
    time.sleep(2 * POLL_S)  # its Python backend's stubs end with it and leave their folders
    remove_empty(folders)
    remove_ready(ready, parent)
    return what


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's Ctrl-C or hang-up reaches the whole group: serve
        signal.signal(sig, signal.SIG_IGN)  # stops itself (SIGHUP, as SIGTERM), and a SIGKILLed serve is watched for
    parent, pid, grace_s = int(argv[0]), int(argv[1]), float(argv[2])
    ready = next((a[len(READY):] for a in argv[3:] if a.startswith(READY)), None)
    watch(parent, pid, grace_s, [a for a in argv[3:] if not a.startswith(READY)], ready)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
