"""Many photos in one run: which files to denoise and where each result goes, decided before any work.

``moe-denoise denoise a.jpg b.png photos/ -o out/`` denoises every photo named or found in a named folder (not in
its subfolders) into ``out/`` under the input's own file name, loading the denoiser once. Everything that can be
known before the first photo is checked first, so a run is never refused half-way for a reason it could have given
at the start: inputs that do not exist, a folder without photos, two inputs that would be written to the same file,
outputs that exist already (refused, replaced with ``overwrite``, or left alone with ``skip_existing``, which is
also how a stopped run is resumed: each result is written atomically, so an output that exists is complete).
A photo whose own format cannot hold its result (a colour or transparent GIF) is written as PNG (``a.gif.png``),
said in its report.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_base.errors import InputError
from moe_base.fileio import check_folder_takes_files

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm", ".pgm",
                  ".pnm", ".pbm", ".tga", ".apng")
"""The formats that are both read and written (any case)."""
READ_ONLY_SUFFIXES = (".avif", ".jp2", ".j2k", ".mpo")
"""Read, not written: taken from a folder too, each result written as NAME.avif.png (:func:`result_path`); a
folder of a phone's AVIF photos was left out whole."""
FOLDER_SUFFIXES = PHOTO_SUFFIXES + READ_ONLY_SUFFIXES
"""The files taken from a folder (any case). A file named on its own is taken whatever its name: the reader decides
from its content."""


CONTRADICTION = ("--overwrite and --skip-existing contradict each other (replace existing outputs, or leave them "
                 "alone); pass one of them")


@dataclass(frozen=True)
class BatchPlan:
    """What a run over many photos will do: ``jobs`` (input, output) in order; ``skipped`` the inputs left alone
    because their output exists (``skip_existing``); ``ignored`` what the folders named hold besides photos (other
    files, subfolders); ``renamed`` the inputs whose result is written as PNG, with why (:func:`result_path`)."""
    out_dir: Path
    jobs: tuple[tuple[Path, Path], ...]
    skipped: tuple[tuple[Path, Path], ...] = ()
    ignored: tuple[Path, ...] = ()
    skip_existing: bool = False  # outputs that appear during the run (another run's) are left alone too
    renamed: tuple[tuple[Path, str], ...] = ()
    in_place: tuple[Path, ...] = ()  # inputs whose result replaces them (-o their own folder, with overwrite)
    overwrite: bool = False  # outputs there are replaced: a rerun that goes on needs --skip-existing instead

    def note_for(self, src: Path) -> str | None:
        """Why ``src``'s result does not keep its file name, or None."""
        return dict(self.renamed).get(src)


def _listed(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def cut_short(path: Path) -> str | None:
    """Why the file at ``path`` cannot be a whole result, read from its ends alone: 'empty', or 'cut short' for a PNG
    without its closing chunk, a JPEG without its end marker or a WebP shorter than its header says; None when it
    looks whole (other formats are not looked into)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        with open(path, "rb") as f:
            head = f.read(12)
            f.seek(max(0, size - 12))
            tail = f.read()
    except OSError:
        return None  # unreadable: its own error comes where it is used
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        whole = tail.endswith(b"IEND\xaeB`\x82")
    elif head.startswith(b"\xff\xd8"):
        whole = tail.endswith(b"\xff\xd9")
    elif head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        whole = size >= 8 + int.from_bytes(head[4:8], "little")
    else:
        whole = True
    return None if whole else "cut short"


def photos_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """A folder's photos (files by :data:`FOLDER_SUFFIXES`, sorted by name) and what else it holds (other files and
    subfolders, which are not searched); hidden entries are left out of both."""
    photos, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        (photos if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES else others).append(p)
    return photos, others


def result_path(src: Path, folder: Path) -> tuple[Path, str | None]:
    """Where the result of ``src`` goes in ``folder`` when the tool names it: under the input's own name, unless
    that format cannot hold the result (a colour or transparent GIF: 256 colours, on/off alpha): then as
    ``NAME.gif.png`` (a.png would be the output of an a.png beside it), with a note saying why (None otherwise).
    Read from the header alone; a file whose header cannot be read keeps its name (denoising it says what is
    wrong)."""
    from runtime.images import format_problem, output_format, read_header

    dst = folder / src.name
    png = dst.with_name(dst.name + ".png")  # a.gif.png: never the a.png of a photo beside it
    try:
        fmt = output_format(dst)
    except InputError as e:  # read but not written (a JPEG 2000 .jp2)
        return png, f"written as {png.name}, not {dst.suffix}: {str(e).split(' for ')[0]}"
    try:
        problem = format_problem(fmt, read_header(src), dst.suffix)  # a colour .pgm: written as NAME.pgm.png
    except InputError:
        return dst, None
    if problem is None:
        return dst, None
    return png, f"written as {png.name}, not {dst.suffix}: {problem[0]}"


def check_folder_can_be_made(folder: Path) -> None:
    """InputError when the output folder ``folder`` is missing and cannot be made: its parent is missing or a file."""
    if not folder.exists() and not folder.parent.is_dir():
        why = ("is a file, not a folder; choose another place" if folder.parent.exists() else
               f"does not exist; create it first (mkdir -p {shlex.quote(str(folder))})")
        raise InputError(f"the output folder '{folder}' cannot be created: its parent '{folder.parent}' {why}")


def plan_batch(inputs: list[str | os.PathLike[str]], out_dir: str | os.PathLike[str], overwrite: bool = False,
               skip_existing: bool = False) -> BatchPlan:
    """Plan denoising ``inputs`` (files, or folders whose photos are taken) into the folder ``out_dir``.

    Nothing is written or created; InputError (what was given, what is expected, what to do) when: an input does
    not exist; a folder has no photos; two inputs share a file name (their outputs would collide); ``out_dir`` is
    a file, or is missing and so is its parent; outputs exist and neither ``overwrite`` nor ``skip_existing`` is
    given, or an output would be its own input without ``overwrite``. An input named twice (or named and found in
    a folder) is denoised once; a link to it under another name gives its own output."""
    if overwrite and skip_existing:
        raise InputError(CONTRADICTION)
    if not inputs:
        raise InputError("no photos given; name one or more photos or folders of photos")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"the output '{out}' is a file, but several photos need a folder to go to; give a folder "
                         f"(it is created if missing), e.g. -o denoised/")
    check_folder_can_be_made(out)
    sources: list[Path] = []
    ignored: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            photos, others = photos_in(given)
            if not photos:
                raise InputError(f"the folder '{given}' has no photos (files ending in {', '.join(FOLDER_SUFFIXES)}; "
                                 f"subfolders are not searched); name the photos or another folder")
            sources += photos
            ignored += others
        elif given.is_file():
            sources.append(given)
        elif given.exists():  # a FIFO, a socket, a device: was said not to exist
            raise InputError(f"the input '{given}' is not a regular file or a folder (a pipe or a device?); give photo "
                             f"files or folders of them (no photo was denoised)")
        else:
            raise InputError(f"the input '{given}' does not exist; check the path (no photo was denoised)")
    seen: dict[tuple[Path, str], Path] = {}
    jobs: list[tuple[Path, Path]] = []
    renamed: list[tuple[Path, str]] = []
    by_name: dict[str, list[Path]] = {}
    for src in sources:
        key = (src.resolve(), src.name)  # a link under another name is another output, as cp gives
        if key in seen:
            continue
        seen[key] = src
        dst, note = result_path(src, out)
        if note is not None:
            renamed.append((src, note))
        by_name.setdefault(dst.name, []).append(src)
        jobs.append((src, dst))
    clashes = [f"{name} ({', '.join(map(str, paths))})" for name, paths in by_name.items() if len(paths) > 1]
    ours = [src for paths in by_name.values() if len(paths) > 1 for src in paths if src.parent.resolve() == out.resolve()]
    if clashes and ours:  # 'denoise p/* -o p/out/' run again: p/* takes p/out in, and the advice was other -o folders
        raise InputError(f"'{out}' is the -o folder, and the inputs take in its results too ({_listed(list(map(str, ours)))}"
                         f"): leave it out of the inputs (a pattern such as {out.parent}/* includes it), or write "
                         f"the results outside the input folders")
    if clashes:
        why = "" if not renamed else " (a photo whose format cannot hold its result gets .png added to its name)"
        raise InputError(f"photos with the same file name would be written to the same output in '{out}'{why}: "
                         f"{_listed(clashes)}; denoise them in separate runs with different -o folders")
    in_place = [src for src, dst in jobs if dst.exists() and dst.resolve() == src.resolve()]
    if in_place and not overwrite:
        own = _listed([p.name for p in in_place])
        raise InputError(f"the output folder '{out}' holds the photos themselves ({own}): each result would "
                         f"replace its input. Choose another -o folder, or pass --overwrite to replace the originals")
    # an empty or cut-short file is no result (another tool's, or a copy stopped half-way): --skip-existing took it
    # for one; --overwrite replaces it
    unusable = [f"{dst.name}/" if dst.is_dir() else f"{dst.name} ({why})" for _, dst in jobs  # each file read once
                if dst.is_dir() or (not overwrite and dst.is_file() and (why := cut_short(dst)))]
    if unusable:  # --skip-existing took them for results; --overwrite failed on a folder after the work
        files = "" if all(u.endswith("/") for u in unusable) else "; --overwrite replaces an empty or cut-short file"
        raise InputError(f"'{out}' holds, at the paths the results go to, what cannot be a result: "
                         f"{_listed(unusable)}; remove those, or choose another -o folder{files} (nothing was "
                         f"denoised)")
    dangling = [dst.name for _, dst in jobs if dst.is_symlink() and not dst.exists()]
    if dangling and not overwrite:  # each was refused at its turn, after the photos before it
        raise InputError(f"'{out}' holds, at the paths the results go to, symbolic links to nothing: "
                         f"{_listed(dangling)}; remove them, choose another -o folder, or pass --overwrite (each link is "
                         f"then replaced by its result, its target left alone). Nothing was denoised")
    existing = [(src, dst) for src, dst in jobs if dst.exists()]
    if existing and not (overwrite or skip_existing):
        raise InputError(f"{len(existing)} of the {len(jobs)} outputs already exist in '{out}' "
                         f"({_listed([dst.name for _, dst in existing])}); nothing was denoised. Pass --skip-existing "
                         f"to denoise only the others (as when resuming a stopped run), --overwrite to replace them, "
                         f"or choose another -o folder")
    if skip_existing:
        jobs = [job for job in jobs if job not in existing]
    if jobs:  # each photo was denoised, then failed its write (the run stopped at the second)
        check_folder_takes_files(out)
    return BatchPlan(out_dir=out, jobs=tuple(jobs), skipped=tuple(existing) if skip_existing else (),
                     ignored=tuple(ignored), skip_existing=skip_existing, renamed=tuple(renamed),
                     # with overwrite alone, which skip_existing contradicts: all in jobs
                     in_place=tuple(in_place), overwrite=overwrite)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The folder ``path``, made if missing (its parent must exist) for the work inside the ``with``; a folder made
    here that the work left empty (every photo failed, or the run was stopped first) is removed again."""
    folder = Path(path)
    created = not folder.exists()
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:  # a read-only or full file system, no permission: said, not a traceback
        raise InputError(f"cannot create the output folder '{folder}' ({e.strerror or e}); choose a folder you can "
                         f"write to") from e
    try:
        yield folder
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


@dataclass
class BatchRun:
    """The jobs of a :class:`BatchPlan` run in order by ``denoise_one(input, output) -> report``, as far as they go.

    A photo whose denoising raises InputError is recorded in ``failed`` and the others go on, unless two in a row
    fail with the same message: that is not one photo's problem (a server gone, a full disk), and :meth:`run`
    raises InputError saying so. ``reports`` and ``failed`` hold what was done when :meth:`run` returns or
    raises (KeyboardInterrupt included: every output written is complete, so a run can go on with
    ``skip_existing``). With the plan's ``skip_existing``, an output that another run wrote meanwhile (two runs
    sharing a folder) is left alone, before its photo or when its write finds it there, and counted in
    ``skipped``. ``on_report(index, report)``, ``on_failure(index, input, error)`` and ``on_skip(index, input)``
    (1-based index) are called as each photo ends."""
    plan: BatchPlan
    denoise_one: Callable[[Path, Path], dict[str, Any]]
    on_report: Callable[[int, dict[str, Any]], None] | None = None
    on_failure: Callable[[int, Path, InputError], None] | None = None
    on_skip: Callable[[int, Path], None] | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[tuple[Path, Path]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # the inputs whose result was written, in order

    def go_on(self, what: str = "to go on") -> str:
        """How to resume this run (a clause that reads after ':' or 'then'): --skip-existing (in place of
        --overwrite, which contradicts it), or, where results replace their photos (which --skip-existing cannot
        tell from photos not yet done, and the same command would denoise twice), the photos left."""
        if not self.plan.in_place:
            instead = " in place of --overwrite" if self.plan.overwrite else ""
            return f"run the same command with --skip-existing{instead} {what}"
        done = set(self.written)
        left = [src for src, _ in self.plan.jobs if src not in done]
        listed = _listed([str(p) for p in left])
        return (f"{what}, run it naming only the {len(left)} photo(s) not written ({listed}"
                f"{'; the others were reported as written' if len(left) > 5 else ''}): their results replace them, "
                f"so --skip-existing cannot tell the {len(done)} done from the others, and the same command would "
                f"denoise those twice")

    @staticmethod
    def _kind(error: InputError) -> str:
        """What two failures must share to be one problem: the message, or, for a write the file system refused
        for a reason no other photo escapes (a full disk, a quota, a read-only mount), that reason: the messages
        differ by the photo's path, so the run went on through every photo, denoising each to fail its write."""
        cause = error.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return f"os-error-{cause.errno}"
        return str(error)

    def run(self) -> None:
        total, previous = len(self.plan.jobs), None
        for i, (src, dst) in enumerate(self.plan.jobs, 1):
            if self.plan.skip_existing and dst.exists():  # written since the plan was made, by another run
                self._skip(i, src, dst)
                continue
            try:
                report = self.denoise_one(src, dst)
            except InputError as e:
                if self.plan.skip_existing and dst.exists():  # another run wrote it while this one worked on it
                    self._skip(i, src, dst)
                    continue
                self.failed.append({"input": str(src), "error": str(e)})
                if self.on_failure is not None:
                    self.on_failure(i, src, e)
                kind = self._kind(e)
                if kind == previous:
                    raise InputError(f"stopped after {i} of {total} photos: the last two failed with the same message "
                                     f"(or the same refusal of the file system), so the problem is not one photo's "
                                     f"({e}). {len(self.reports)} written to '{self.plan.out_dir}'; fix it, then "
                                     f"{self.go_on()}") from e
                previous = kind
                continue
            previous = None
            self.reports.append(report)
            self.written.append(src)
            if self.on_report is not None:
                self.on_report(i, report)

    def _skip(self, i: int, src: Path, dst: Path) -> None:
        self.skipped.append((src, dst))
        if self.on_skip is not None:
            self.on_skip(i, src)
