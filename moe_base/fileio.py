"""File helpers shared by every package (standard library only): atomic writes and hashing.

Atomic writes:

A temp file in the destination folder is written, fsynced and renamed over the target, so readers see the old
file or the new one, never half of one, and an interrupted write leaves the old file intact.

Folders (a Triton model repository) are written the same way: everything goes into a hidden staging folder beside
the target, or inside it when it is a mount point (:func:`staging_folder`), and only a complete, checked result is
renamed into place (:func:`publish_folder`: an existing folder is filled, never replaced); a failure or an
interruption before that leaves the target as it was.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import InputError, signals_held

NAME_MAX = 255  # the most bytes a file name has (Linux's file systems; UTF-8, so a non-ASCII letter counts 2-4)
_PID_DIGITS = 7  # the longest process id (Linux's limit, 4194304): a temporary's name is sized for it
FOREIGN_STALE_S = 24 * 3600  # a temporary of another machine or container is taken as left behind after this long
_HERE: list[str] = []


def here_tag() -> str:
    """8 letters for where this process's ids mean something (the machine's name and its PID namespace), put in the
    names of its temporaries before their random letters. A temporary's process id is judged only where it was made:
    a writer in another container, or on another machine sharing the folder, has an id that is nobody here, and its
    temporary was removed while it was writing (its write then failed, 'No such file or directory')."""
    if not _HERE:
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:  # not Linux: the machine's name alone
            namespace = ""
        _HERE.append(hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8])
    return _HERE[0]


def _own_prefix(stem: str) -> str:
    """The start of the name of a temporary of this process: ``.{stem}.{pid}.{here_tag}`` (random letters follow)."""
    return f".{stem}.{os.getpid()}.{here_tag()}"


def name_bytes(name: str) -> int:
    """How many bytes the file name ``name`` takes on disk (what :data:`NAME_MAX` limits), not its letters."""
    return len(os.fsencode(name))


def refuse_long_names(path: str | Path) -> None:
    """InputError when a name in ``path`` is longer than a file system takes (more than :data:`NAME_MAX` bytes):
    said before any work, in words (it failed after the work, as 'File name too long' or as a folder that cannot
    be written to, or as a traceback when the path was looked at). A name that exists is left alone: a file system
    that counts UTF-16 units (NTFS, exFAT) holds longer UTF-8 names."""
    walked = Path()
    for name in Path(path).parts:
        walked = walked / name
        if name_bytes(name) > NAME_MAX and not os.path.lexists(walked):
            raise InputError(f"the file name '{name}' is {name_bytes(name)} bytes; a file name can have at most "
                             f"{NAME_MAX} bytes (a non-ASCII letter takes 2 to 4): choose a shorter name")


def _temporary_stem(name: str, room: int) -> str:
    """The part of a temporary's name that stands for its target's ``name``: the name itself, or when the
    temporary would then be too long (``room``: the bytes the temporary adds to it) its start, cut at a whole
    letter, with ``~`` and a hash of the whole name. A valid name's temporaries then fit in :data:`NAME_MAX` bytes
    (a 240-byte output was refused, or failed after the work, for its temporary's 256-byte name), and two long names
    that start alike still get different temporaries (:func:`remove_stale_temporaries` removes only its own)."""
    raw = os.fsencode(name)
    if len(raw) + room <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"{raw[:NAME_MAX - room - 17].decode('utf-8', 'ignore')}~{digest}"


def _pid_stem(name: str, suffix: str) -> str:
    """What stands for ``name`` in the names of its temporaries ``.{stem}.{pid}.{here}{random}{suffix}`` (see
    :func:`_temporary_stem`; the two dots, the process id, the dot, 8 letters of :func:`here_tag` and 8 random
    letters take 26 bytes)."""
    return _temporary_stem(name, 2 + _PID_DIGITS + 1 + 16 + len(suffix))


def new_temporary(parent: Path, prefix: str, suffix: str, folder: bool = False) -> tuple[Path, int | None]:
    """A new file (with its open descriptor) or folder (descriptor None) in ``parent``, named ``prefix`` + random
    letters + ``suffix``, with the usual permissions: 0666 / 0777 less the umask, which the kernel applies.
    (mkstemp makes 0600, which needed a chmod to the umask, and reading the umask means setting it for a moment:
    a file another thread made then came out writable by everyone.)"""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(candidate, 0o777)
                return candidate, None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            return candidate, os.open(candidate, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {prefix}*{suffix}", str(parent))


def cannot_write(path: Path, e: OSError) -> InputError:
    """The error for an output whose folder cannot be made or written to: a file where a folder of its path must be
    is named (it read "File exists in the folder 'a_file'"), as is a symbolic link there to nothing."""
    for above in path.parents:
        try:
            found = above.exists() or above.is_symlink()
        except OSError:  # a folder above that cannot be searched (Python < 3.12 raises): said by ``e`` below
            break
        if found:
            if above.is_symlink() and not above.exists():
                return InputError(f"cannot write {path}: '{above}' is a symbolic link to '{os.readlink(above)}', "
                                  f"which does not exist; create that folder or choose another place")
            if not above.is_dir():
                return InputError(f"cannot write {path}: '{above}' is a file, not a folder; choose another place")
            break
    return InputError(f"cannot write {path}: {e.strerror or e} in the folder '{path.parent}'; choose a folder you can "
                      f"write to")


def atomic_write(path: str | Path, data: bytes | Callable[[IO[bytes]], None], overwrite: bool = True) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    With ``overwrite=False`` an existing file is never replaced, even one that appears while writing (InputError).
    """
    path = Path(path)
    refuse_long_names(path)
    refuse_dangling_link(path, overwrite)
    refuse_special_file(path)
    path = written_path(path, overwrite)
    if not overwrite and path.exists():  # said before any writing, not as 'appeared while it was being written'
        raise InputError(f"the output '{path}' already exists; refusing to replace it. Choose another output path or "
                         f"pass --overwrite (overwrite=True in Python)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp, fd = new_temporary(path.parent, _own_prefix(_pid_stem(path.name, ".tmp")), ".tmp")
    except OSError as e:
        raise cannot_write(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            if overwrite:  # a file replaced keeps its permissions (a private photo stays private), as cp keeps them;
                # set before the data goes in (after, a 0600 photo sat in a 0644 file while it was written)
                with contextlib.suppress(OSError):
                    os.fchmod(f.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _move_into_place(tmp, path, overwrite)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"writing {path} failed ({e.strerror or e}); nothing was changed there") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | Path, suffix: str = ".tmp") -> list[Path]:
    """Remove the temporary files (or staging folders, ``suffix=".staging"``) that writes of ``path`` left behind
    when their process was killed (their names carry the writer's process id; a temporary of a live process is
    left alone). Only ``path``'s own: a temporary of 'a.5' is not one of 'a' (names that are long are told apart by
    the hash in their temporaries' names: :func:`_temporary_stem`). A temporary made in another container or on
    another machine (:func:`here_tag`) is removed only when nothing has changed it for :data:`FOREIGN_STALE_S`.
    Returns what was removed."""
    path = Path(path)
    removed = []
    stem = _pid_stem(path.name, suffix)
    own = re.compile(rf"\.{re.escape(stem)}\.(\d+)\.([^.]+){re.escape(suffix)}")
    for tmp in path.parent.glob(f".{glob.escape(stem)}.*{suffix}"):
        found = own.fullmatch(tmp.name)
        if found and _left_behind(tmp, int(found[1]), found[2]):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _left_behind(tmp: Path, pid: int, letters: str) -> bool:
    """Whether the temporary ``tmp`` of process ``pid`` (``letters``: what follows the id in its name) was left by
    a writer that is gone: one made here whose process has ended, or one made elsewhere (another container or
    machine: its id means nothing here) unchanged for a day. A name of an earlier version (8 random letters, no
    :func:`here_tag`) is taken as made here."""
    if len(letters) != 16 or letters[:8] == here_tag():
        return not process_alive(pid)
    try:
        return time.time() - tmp.lstat().st_mtime > FOREIGN_STALE_S
    except OSError:  # gone meanwhile
        return False


STAGING_NAME = "moe-denoise"  # a staging folder inside its target (a mount point): .moe-denoise.PID.HERERANDOM.staging


def is_staging_folder(path: Path) -> bool:
    """Whether ``path`` is a staging folder that :func:`staging_folder` made inside its target (this run's, another
    run's, or a killed run's): not content of the target."""
    return re.fullmatch(rf"\.{re.escape(STAGING_NAME)}\.\d+\.[^.]+\.staging", path.name) is not None


@contextlib.contextmanager
def staging_folder(target: str | Path) -> Iterator[Path]:
    """A new, empty, hidden folder to make the content of the folder ``target`` in, removed on leaving whatever
    happened: beside ``target``, or inside it when it is a mount point (or its parent takes no new folder). Either
    way it is on the file system the files end on, so :func:`publish_folder` only renames: a folder made beside a
    mount point (a docker volume, a Kubernetes volume at /models, an NFS root) was on another file system, and the
    renames failed after all the work ('Device or resource busy', 'Invalid cross-device link'). Not inside any other
    folder: Triton takes every folder of a model repository for a model, a hidden one too, and one that a killed run
    left there stopped its start ('failed to load model'). An existing ``target`` that cannot be written to is
    refused (InputError) as every output folder is; it was replaced, with its owner and mode, by a writable folder,
    which needed only its parent to be writable. Staging folders of killed processes are removed first."""
    target = Path(target)
    refuse_long_names(target)
    try:
        exists = target.is_dir()
    except OSError:  # a folder above that cannot be searched (Python < 3.12 raises): said, in words, below
        exists = False
    if exists:  # its entries are renamed into it, which needs it writable: said now, not after the work
        check_folder_takes_files(target)
        with contextlib.suppress(OSError):  # a killed run's, staged inside a mount point
            remove_stale_temporaries(target / STAGING_NAME, ".staging")
    staging = None
    if not (exists and os.path.ismount(os.path.realpath(target))):  # beside where it can be: Triton takes every
        # folder of a model repository for a model (a hidden one too: 'failed to load model .moe-denoise...', and a
        # start with --exit-on-error fails), so a staging folder a killed run left inside it stopped the server
        try:
            staging = _new_staging_beside(target)
        except OSError as e:
            if not exists:
                raise cannot_write(target, e) from e
        try:
            if exists and staging is not None and not _renames_into(staging, target):  # a bind mount (of the same
                os.rmdir(staging)  # file system: ismount cannot tell): renames fail across it
                staging = None
        except OSError as e:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            raise cannot_write(target, e) from e
    if staging is None:  # a mount point, or a folder whose parent takes no new folder
        try:
            staging = new_temporary(target, _own_prefix(STAGING_NAME), ".staging", folder=True)[0]
        except OSError as e:
            raise InputError(f"cannot write to the folder '{target}' ({e.strerror or e}); choose a folder you can "
                             f"write to") from e
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _new_staging_beside(target: Path) -> Path:
    """A new hidden staging folder beside ``target`` (its parent made if missing), named after it and this process
    (:func:`_new_own_folder`), those of killed runs removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target, ".staging")
    return _new_own_folder(target, ".staging")


def _new_own_folder(target: Path, suffix: str) -> Path:
    """A new folder beside ``target`` named after it and this process, ``.NAME.PID.HERERANDOM`` + ``suffix`` (HERE:
    :func:`here_tag`): the name :func:`remove_stale_temporaries` finds when this process is gone."""
    return new_temporary(target.parent, _own_prefix(_pid_stem(target.name, suffix)), suffix, folder=True)[0]


@contextlib.contextmanager
def staging_for_files(folder: str | Path, name: str) -> Iterator[Path]:
    """A new hidden folder inside ``folder`` (made if missing) for files that go into ``folder`` together
    (:func:`publish_folder`), named after ``name`` and this process, so that the next run removes one a killed run
    left; removed on leaving whatever happened. (:func:`staging_folder` is for a folder's whole content: given
    ``folder / name`` as a stand-in target, it probed and checked a real folder of that name.)"""
    target = Path(folder) / name
    refuse_long_names(target)
    try:
        staging = _new_staging_beside(target)
    except OSError as e:
        raise cannot_write(target, e) from e
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def scratch_folder(name: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A new, empty, hidden folder for a command's intermediate files (the graph under export's parity check, an
    engine under test, --check-local's local result), removed on leaving whatever happened. It is made in ``parent``
    (the temporary folder when None) as ``.NAME.PID.HERERANDOM.scratch``, and the ones of ``name`` that killed processes
    left there are removed first: a killed command's ``tmpXXXXXXXX`` folder stayed for good, beside the user's engine
    or in the temporary folder, with nothing saying whose it was."""
    target = Path(tempfile.gettempdir() if parent is None else parent) / name
    with contextlib.suppress(OSError):  # a folder where they cannot be listed: the new one is what matters
        remove_stale_temporaries(target, ".scratch")
    folder = _new_own_folder(target, ".scratch")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def not_written(path: Path, e: OSError, kept: str) -> InputError:
    """The error for a file of a set written together (:func:`staging_for_files`) that could not be written: nothing
    in its folder was changed, and the ``kept`` files of an earlier run there are as they were."""
    return InputError(f"writing {path} failed ({e.strerror or e}); nothing in {path.parent} was changed ({kept} of an "
                      f"earlier run there are as they were): free some space or fix what stopped the write, then run "
                      f"again")


def _renames_into(folder: Path, target: Path) -> bool:
    """Whether ``folder`` (beside ``target``) can be renamed into ``target``: not across a mount point (EXDEV, EBUSY),
    which os.path.ismount misses for a bind mount of the same file system. Tried with ``folder`` itself, moved
    there and back at once."""
    probe = target / f"{_own_prefix(STAGING_NAME)}{secrets.token_hex(4)}.staging"  # a stale one is removed as one
    try:
        os.rename(folder, probe)
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.EBUSY):
            return False
        raise
    os.rename(probe, folder)
    return True


def publish_folder(staging: Path, target: Path, entries: Sequence[str], overwrite: bool = True) -> None:
    """Move ``entries`` (names of files and folders in ``staging``, from :func:`staging_folder`) into the folder
    ``target``.

    A missing ``target`` becomes ``staging`` in one rename. An existing one is filled, never replaced: each entry is
    renamed into it, so the folder itself (its inode, owner, group, mode and ACLs) stays, and a container that
    mounted it before sees the new files (replaced by a rename, the folder it had mounted was a deleted one).
    Without ``overwrite`` a ``target`` that holds anything (another run filled it meanwhile) is refused
    (InputError), not replaced: nothing is moved, and entries moved before a namesake appeared are taken back. With
    ``overwrite`` each entry replaces its namesake: a file by one rename, a folder after the old one is moved aside
    into ``staging`` (hidden, on the same file system), where it is removed with it; a move that fails puts the old
    one back, so nothing is lost, and the error says what was already replaced. What else ``target`` holds is kept."""
    target = Path(target)
    with writer_lock(target):  # two runs publishing into one folder at once (two benches of one --out-dir) left
        _publish(staging, target, entries, overwrite)  # one's results.json beside the other's results.md


def _publish(staging: Path, target: Path, entries: Sequence[str], overwrite: bool) -> None:
    """:func:`publish_folder`'s moves, by one writer at a time."""
    if not target.exists():
        real = target.resolve() if target.is_symlink() else target  # a link to nothing: the folder it names
        try:
            os.rename(staging, real)
            return
        except OSError as e:
            if not target.is_dir():
                raise InputError(f"moving the new files into '{target}' failed ({e.strerror or e}); nothing there "
                                 f"was changed") from e
            # made meanwhile: filled as any existing folder
    filled = f"'{target}' was filled while this was being written (another run writing it?); refusing to replace " \
             f"what is there: choose a new folder, or pass --overwrite"
    if not overwrite and any(not is_staging_folder(p) for p in target.iterdir()):
        raise InputError(filled)
    for name in entries:  # before anything is moved (_move_entry would refuse it half-way)
        old, new = target / name, staging / name
        if old.is_dir() and not old.is_symlink() and not (new.is_dir() and not new.is_symlink()):
            raise InputError(f"'{old}' is a folder, where a file of that name goes; nothing in '{target}' was "
                             f"changed: move that folder away, or choose another place")
    moved: list[str] = []
    try:
        with signals_held():  # a Ctrl-C between two renames left a folder half of one run's, half another's
            for name in entries:
                _move_entry(staging / name, target / name, staging / f".replaced.{name}", overwrite)
                moved.append(name)
    except OSError as e:
        if not overwrite:  # ours, moved just now: taken back, so the folder is as it was
            kept = [name for name in moved if not _moved_back(target / name, staging / name)]
            done = f"already moved there: {', '.join(kept)}; " if kept else "nothing there was changed; "
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and not kept:
                raise InputError(filled) from e
        else:
            done = f"already replaced: {', '.join(moved)}; " if moved else "nothing there was changed; "
        raise InputError(f"moving the new files into '{target}' failed ({e.strerror or e}); {done}check that folder "
                         f"and run again") from e


def _move_entry(new: Path, old: Path, aside: Path, overwrite: bool) -> None:
    """Rename ``new`` to ``old``, in the folder that holds ``old`` (see :func:`publish_folder`): without
    ``overwrite`` never over something that is there (FileExistsError); with it, a folder replacing a folder (or a
    file) is first moved to ``aside`` and put back when the move fails, and a file never replaces a folder
    (IsADirectoryError): the folder, with all it held, went with the staging folder (a folder named results.md in
    bench's --out-dir)."""
    if not overwrite:
        if new.is_dir() and not new.is_symlink():
            if os.path.lexists(old):
                raise FileExistsError(errno.EEXIST, "File exists", str(old))
            os.rename(new, old)  # a folder that appeared meanwhile with anything in it: ENOTEMPTY
            return
        _move_into_place(new, old, overwrite=False, say=False)
        return
    old_is_folder = old.is_dir() and not old.is_symlink()
    if old_is_folder and not (new.is_dir() and not new.is_symlink()):
        raise IsADirectoryError(errno.EISDIR, "a folder is there, and a file would replace it", str(old))
    if os.path.lexists(old) and (old_is_folder or new.is_dir()):
        os.rename(old, aside)
        try:
            os.rename(new, old)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(aside, old)
            raise
        return
    os.replace(new, old)


def _moved_back(moved: Path, to: Path) -> bool:
    try:
        os.rename(moved, to)
    except OSError:
        return False
    return True


def first_missing(folder: str | os.PathLike[str]) -> Path | None:
    """The topmost of ``folder`` and its parents that does not exist (what making ``folder`` creates first), or None
    when ``folder`` exists: for :func:`remove_if_empty` after a refused or stopped command."""
    folder = Path(folder).absolute()
    missing = None
    for f in (folder, *folder.parents):
        if f.exists():
            break
        missing = f
    return missing


def remove_if_empty(folder: str | os.PathLike[str], top: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``top`` (from :func:`first_missing`: the folders a command made) as
    long as they are empty; a folder that holds anything stops it."""
    if top is None:
        return
    f = Path(folder).absolute()
    while True:
        try:
            f.rmdir()  # only an empty folder
        except OSError:
            return
        if f == top or top not in f.parents:
            return
        f = f.parent


LOCK_NAME = ".lock"
LOCK_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, option: str) -> Iterator[Path]:
    """Only one process at a time writes ``folder`` (which must exist): an exclusive ``flock`` on ``folder/.lock``,
    which the kernel releases when its process ends however it ends (no stale lock to take over), with the
    holder's process id written in it for the message. A second writer, in this process or another, is refused
    (InputError naming the process, ``what`` it is and ``option`` to choose another folder). Where the file system
    cannot lock, the work goes on unlocked, as before. The file is removed when the ``with`` ends."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield lock
        return
    for _ in range(5):
        try:  # not through a link: one planted there (a run folder from elsewhere) had its target overwritten
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | LOCK_FLAGS, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InputError(f"{lock} is a symbolic link, not this tool's lock file; remove it (nothing else "
                                 f"uses it), then run again") from e
            raise InputError(f"cannot take the lock {lock} ({e.strerror or e}); is another {what} writing {folder}? "
                             f"Choose another {option}") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # its process id is written into it below
            os.close(fd)
            kind = "a second name of another file (a hard link)" if stat.S_ISREG(st.st_mode) else "not a plain file"
            raise InputError(f"{lock} is {kind}, not this tool's lock file; remove it (nothing else uses it), then "
                             f"run again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").split()
            os.close(fd)
            who = f" (process {holder[0]})" if holder else ""
            raise InputError(f"another {what}{who} is writing {folder} now; wait for it to end (or stop it), or "
                             f"choose another {option}") from None
        except OSError:  # this file system cannot lock (some network mounts): unlocked, as before
            os.close(fd)
            yield lock
            return
        try:  # the file may have been removed by its last holder between our open and our lock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise InputError(f"could not take the lock {lock} (it keeps being replaced); is another {what} writing "
                         f"{folder}? Choose another {option}")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a waiting opener then finds another file
        os.close(fd)


@contextlib.contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Writers of ``path`` one at a time, in this process or others: a blocking ``flock`` on a hidden
    ``.NAME.lock`` beside it (its folder made if missing), released by the kernel however its holder ends, and
    removed by it when done. For files written as a pair (a model, then its manifest): two exports to one default
    path interleaved their renames, and one's model stood beside the other's manifest, both saying they wrote it.
    Where no lock can be taken (no such folder can be made, a file system that cannot lock), the write goes on
    unlocked, as before, and says what is wrong itself."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    path = Path(path)
    lock = path.parent / f".{_temporary_stem(path.name, 7)}.lock"
    fd = None
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | LOCK_FLAGS, 0o644)  # a planted link: unlocked, as below
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the writer before (Ctrl-C still stops the wait)
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # removed by its last holder meanwhile: take the new
        except FileNotFoundError:
            same = False
        except OSError:
            same = None
        if same:
            break
        if fd is not None:
            os.close(fd)
            fd = None
        if same is None:  # no lock here: unlocked, as before
            break
    try:
        yield
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # while still holding it: a waiting opener then finds another file
            os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs now (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _move_into_place(tmp: Path, target: Path, overwrite: bool, say: bool = True) -> None:
    """Rename ``tmp`` to ``target``; without ``overwrite`` never over a file that appeared meanwhile (InputError, or
    FileExistsError with ``say=False``)."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if the target appeared meanwhile: no silent replacement
    except FileExistsError as e:
        if not say:
            raise
        raise InputError(f"the output '{target}' appeared while it was being written; refusing to replace it. "
                         f"Choose another output path or pass --overwrite (overwrite=True in Python)") from e
    except OSError:  # file systems without hard links: re-check, then rename
        if os.path.lexists(target):
            if not say:
                raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
            raise InputError(f"the output '{target}' already exists; refusing to replace it") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def atomic_write_json(path: str | Path, obj: Any, overwrite: bool = True) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), overwrite)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def holds(path: str | Path, sha256: str) -> bool:
    """Whether ``path`` is a file whose contents have this sha256 (e.g. the weights a manifest recorded, still there
    and unchanged)."""
    return Path(path).is_file() and sha256_file(path) == sha256


def is_link_loop(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a symbolic link that leads back to itself (directly or through others): it 'exists' to
    no check, as a link to nothing does not, and was said to be one ('a link to ... which does not exist')."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def refuse_dangling_link(path: Path, overwrite: bool, option: str = "--overwrite") -> None:
    """InputError when ``path`` is a symbolic link to nothing and ``overwrite`` is off: it exists as a link, so it
    cannot be made without replacing it (that refusal came after the work, and said the output 'appeared while it
    was being written')."""
    if overwrite or not path.is_symlink() or path.exists():
        return
    what = "which leads back to itself (a loop of links)" if is_link_loop(path) else "which does not exist"
    raise InputError(f"the output '{path}' is a symbolic link to '{os.readlink(path)}', {what}; refusing to replace "
                     f"the link. Remove it, choose another path, or pass {option} (the link itself is then replaced by "
                     f"the file, its target left alone)")


def refuse_special_file(path: Path) -> None:
    """InputError when ``path`` (or what its link points to) is a device, pipe or socket: a write replaced it with a
    regular file (a FIFO's reader then waited forever; a link to /dev/null became a report with the device's mode,
    0666, and as root /dev/stdout could have been replaced for the whole machine)."""
    try:
        special = path.exists() and not path.is_file() and not path.is_dir()
    except OSError:  # a folder on the way that cannot be searched: the write says so, in words
        return
    if special:
        raise InputError(f"the output '{path}' is a device, pipe or socket, not a regular file: it would be replaced "
                         f"by one. Give the path of a file")


def check_output_file(path: str | Path, overwrite: bool = False, option: str = "--overwrite") -> Path:
    """Before any work: ``path`` can be written, and is replaced only when ``overwrite`` says so.

    Refuses (InputError) a folder, a device, pipe or socket, an existing file without ``overwrite``, and a folder
    that cannot be written to (a probe file is created and removed there, or in the nearest folder that exists: none
    is made). A link to a file is written through with ``overwrite`` (the link stays; :func:`atomic_write`). A name
    longer than a file system takes is refused here too (:func:`refuse_long_names`)."""
    path = Path(path)
    refuse_long_names(path)
    if path.is_dir():
        raise InputError(f"the output '{path}' is a folder; give a file path")
    refuse_special_file(path)
    if path.exists() and not overwrite:
        raise InputError(f"the output '{path}' already exists; refusing to replace it. Choose another path or pass "
                         f"{option}")
    refuse_dangling_link(path, overwrite, option)
    check_folder_takes_files(written_path(path, overwrite).parent, path.name)  # a link's target's folder takes it
    return path


def written_path(path: Path, overwrite: bool) -> Path:
    """Where :func:`atomic_write` puts ``path``'s file: through a link to a file when replacing (the file is replaced
    and the link kept: 'latest.json -> run3.json' was replaced by a file of its own), else ``path``. One answer for
    the write and the check before the work (the check looked at the link's folder, the write at the target's)."""
    with contextlib.suppress(OSError):
        if overwrite and path.is_symlink() and path.exists():
            return Path(os.path.realpath(path))
    return path


def check_folder_takes_files(folder: str | Path, name: str = "moe-denoise") -> None:
    """InputError unless ``folder``, or the nearest of its parents that exists when it is missing, takes new files: a
    probe file (named after ``name``) is made and removed there. No folder is made here (a refused command left
    empty ones behind); the missing ones are made when the files are written. A name in ``folder`` too long for a
    file system is refused (:func:`refuse_long_names`)."""
    folder = Path(folder)
    refuse_long_names(folder / name)
    there = next((f for f in (folder, *folder.parents) if f.exists() or f.is_symlink()), Path("."))
    try:
        if not there.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(there))
        probe, fd = new_temporary(there, f".{_temporary_stem(name, 16)}.", ".probe")  # '.' + '.' + 8 + '.probe'
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if there == folder else f", since '{there}' cannot take it"
        raise InputError(f"cannot write to the folder '{folder}' ({e.strerror or e}{where}); choose a folder you can "
                         f"write to") from e
