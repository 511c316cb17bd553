"""runtime.batch.plan_batch: which photos a run over many takes and where each goes, all decided before any work."""
from pathlib import Path

import pytest

from moe_base.errors import InputError
from runtime.batch import PHOTO_SUFFIXES, BatchRun, output_folder, plan_batch


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folders_give_their_photos_sorted_and_files_keep_their_order(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    for name in ("b.JPG", "a.png", "c.tiff", "notes.txt", ".hidden.png", "sub/d.png"):
        touch(d / name)
    single = touch(tmp_path / "z.raw")  # named on its own: taken whatever its name (the reader decides); its result
    # goes to a PNG, since no format is written under that name
    plan = plan_batch([single, d], tmp_path / "out")
    assert [(s.name, o) for s, o in plan.jobs] == [("z.raw", tmp_path / "out" / "z.raw.png"),
                                                   ("a.png", tmp_path / "out" / "a.png"),
                                                   ("b.JPG", tmp_path / "out" / "b.JPG"),
                                                   ("c.tiff", tmp_path / "out" / "c.tiff")]
    assert [p.name for p in plan.ignored] == ["notes.txt", "sub"] and plan.skipped == ()
    assert not (tmp_path / "out").exists()  # planning creates nothing


def test_a_photo_named_twice_is_denoised_once(tmp_path: Path) -> None:
    a = touch(tmp_path / "in" / "a.png")
    plan = plan_batch([a, tmp_path / "in", a], tmp_path / "out")
    assert [s for s, _ in plan.jobs] == [a]
    (tmp_path / "in" / "b.png").symlink_to("a.png")  # another name for it: dropped in silence, its output missing
    plan = plan_batch([a, tmp_path / "in"], tmp_path / "out")
    assert [(s.name, o.name) for s, o in plan.jobs] == [("a.png", "a.png"), ("b.png", "b.png")]


def test_reliability_batch_name_clash(tmp_path: Path) -> None:
    """two photos with one file name, from two folders, into one output folder => refused before any work (both
    paths named, separate runs suggested)"""
    a, b = touch(tmp_path / "x" / "a.png"), touch(tmp_path / "y" / "a.png")
    with pytest.raises(InputError, match=r"same file name.*a\.png .*x/a\.png.*y/a\.png"):
        plan_batch([a, b], tmp_path / "out")


def test_reliability_batch_existing_outputs(tmp_path: Path) -> None:
    """several photos into a folder where some outputs exist => refused before any work (count and names;
    --skip-existing and --overwrite offered), left alone with --skip-existing, replaced with --overwrite; both at
    once refused"""
    a, b = touch(tmp_path / "in" / "a.png"), touch(tmp_path / "in" / "b.png")
    touch(tmp_path / "out" / "a.png")
    with pytest.raises(InputError, match=r"1 of the 2 outputs already exist.*a\.png.*--skip-existing.*--overwrite"):
        plan_batch([tmp_path / "in"], tmp_path / "out")
    plan = plan_batch([tmp_path / "in"], tmp_path / "out", skip_existing=True)
    assert [s for s, _ in plan.jobs] == [b] and [s for s, _ in plan.skipped] == [a]
    plan = plan_batch([tmp_path / "in"], tmp_path / "out", overwrite=True)
    assert [s for s, _ in plan.jobs] == [a, b] and plan.skipped == ()
    with pytest.raises(InputError, match="contradict"):
        plan_batch([tmp_path / "in"], tmp_path / "out", overwrite=True, skip_existing=True)


def test_reliability_batch_into_the_photos_own_folder(tmp_path: Path) -> None:
    """photos into the folder that holds them, without --overwrite (with --skip-existing too) => refused: each
    result would replace its input (another folder or --overwrite offered)"""
    a = touch(tmp_path / "in" / "a.png")
    for skip in (False, True):  # --skip-existing would skip them all and say nothing useful
        with pytest.raises(InputError, match=r"holds the photos themselves \(a\.png\).*--overwrite"):
            plan_batch([a], tmp_path / "in", skip_existing=skip)
    assert plan_batch([a], tmp_path / "in", overwrite=True).jobs == ((a, tmp_path / "in" / "a.png"),)


@pytest.mark.parametrize("case", ["missing input", "folder without photos", "output is a file",
                                  "output parent missing", "nothing given"])
def test_what_cannot_be_planned_is_refused_with_what_to_do(tmp_path: Path, case: str) -> None:
    photo = touch(tmp_path / "a.png")
    inputs, out, expected = [photo], tmp_path / "out", ""
    if case == "missing input":
        inputs, expected = [photo, tmp_path / "nope.png"], r"'.*nope\.png' does not exist"
    elif case == "folder without photos":
        touch(tmp_path / "docs" / "readme.txt")
        inputs, expected = [tmp_path / "docs"], r"'.*docs' has no photos \(files ending in \.png"
    elif case == "output is a file":
        out, expected = touch(tmp_path / "out.png"), r"'.*out\.png' is a file.*give a folder"
    elif case == "output parent missing":
        out, expected = tmp_path / "no" / "out", r"parent '.*no' does not exist; create it first"
    else:
        inputs, expected = [], "no photos given"
    with pytest.raises(InputError, match=expected):
        plan_batch(inputs, out)


def test_the_folder_suffixes_are_ones_the_writer_can_write() -> None:
    from runtime.images import output_format

    assert {output_format(f"x{s}") for s in PHOTO_SUFFIXES} == {"PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "TGA"}


def test_a_run_goes_past_a_photo_that_fails_and_stops_on_the_same_failure_twice(tmp_path: Path) -> None:
    photos = [touch(tmp_path / "in" / f"{n}.png") for n in "abcde"]
    plan = plan_batch([tmp_path / "in"], tmp_path / "out")
    outcome = {"a": "ok", "b": "bad b", "c": "ok", "d": "gone", "e": "gone"}
    seen = []

    def one(src: Path, dst: Path) -> dict:
        if outcome[src.stem] != "ok":
            raise InputError(outcome[src.stem])
        return {"input": str(src), "output": str(dst)}

    run = BatchRun(plan, one, on_report=lambda i, r: seen.append(("done", i)),
                   on_failure=lambda i, src, e: seen.append(("failed", i, str(e))))
    with pytest.raises(InputError, match=r"stopped after 5 of 5 photos: the last two failed with the same message.*"
                                         r"\(gone\)\. 2 written"):
        run.run()
    assert seen == [("done", 1), ("failed", 2, "bad b"), ("done", 3), ("failed", 4, "gone"), ("failed", 5, "gone")]
    assert [r["input"] for r in run.reports] == [str(photos[0]), str(photos[2])]
    assert [f["error"] for f in run.failed] == ["bad b", "gone", "gone"]


def test_two_alike_failures_with_a_photo_written_between_them_do_not_stop_the_run(tmp_path: Path) -> None:
    """The run stops on the same failure twice *in a row*: a photo written between two alike failures starts the
    count again (a run that remembered the last failure across a success stopped at d here)."""
    photos = [touch(tmp_path / "in" / f"{n}.png") for n in "abcde"]
    plan = plan_batch([tmp_path / "in"], tmp_path / "out")
    outcome = {"a": "ok", "b": "gone", "c": "ok", "d": "gone", "e": "ok"}

    def one(src: Path, dst: Path) -> dict:
        if outcome[src.stem] != "ok":
            raise InputError(outcome[src.stem])
        return {"input": str(src), "output": str(dst)}

    run = BatchRun(plan, one)
    run.run()
    assert [r["input"] for r in run.reports] == [str(photos[i]) for i in (0, 2, 4)]
    assert [f["input"] for f in run.failed] == [str(photos[1]), str(photos[3])]


def test_an_output_folder_made_for_a_run_that_wrote_nothing_is_removed(tmp_path: Path) -> None:
    with output_folder(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists()
    with output_folder(tmp_path / "kept") as folder:
        touch(folder / "a.png")
    assert (tmp_path / "kept" / "a.png").exists()
    (tmp_path / "theirs").mkdir()  # a folder that was there before is never removed
    with pytest.raises(RuntimeError), output_folder(tmp_path / "theirs"):
        raise RuntimeError("the run failed")
    assert (tmp_path / "theirs").is_dir()


def test_with_skip_existing_outputs_another_run_writes_meanwhile_are_left_alone(tmp_path: Path) -> None:
    """Two `denoise --skip-existing` runs on one folder: the second denoised every photo again and then failed each
    ('appeared while it was being written'), exit 2. Now an output written since the plan was made is skipped, before
    its photo or when its write finds it there; without --skip-existing that is still a failure."""
    for n in "abc":
        touch(tmp_path / "in" / f"{n}.png")
    out = tmp_path / "out"

    def other_run_writes(src: Path, dst: Path) -> dict:
        if src.stem == "a":  # meanwhile the other run finishes b
            touch(out / "b.png", b"theirs")
            return {"input": str(src)}
        touch(dst, b"theirs")  # c: the other run's write lands first
        raise InputError(f"the output '{dst}' appeared while it was being written; refusing to replace it")

    out.mkdir()
    seen = []
    run = BatchRun(plan_batch([tmp_path / "in"], out, skip_existing=True), other_run_writes,
                   on_skip=lambda i, src: seen.append((i, src.stem)))
    run.run()
    assert [r["input"] for r in run.reports] == [str(tmp_path / "in" / "a.png")] and run.failed == []
    assert seen == [(2, "b"), (3, "c")] and [d.name for _, d in run.skipped] == ["b.png", "c.png"]
    assert (out / "b.png").read_bytes() == (out / "c.png").read_bytes() == b"theirs"
    out = tmp_path / "out2"  # the same race without --skip-existing: b and c fail, as the user asked for them
    out.mkdir()
    plain = BatchRun(plan_batch([tmp_path / "in"], out), other_run_writes)
    plain.run()
    assert [Path(f["input"]).stem for f in plain.failed] == ["b", "c"] and plain.skipped == []


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path, monkeypatch):
    """A read-only file system (or no permission) ended in an OSError traceback."""
    def refuse(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(InputError, match=r"cannot create the output folder '.*new' \(Read-only file system\)"):
        with output_folder(tmp_path / "new"):
            pass
    monkeypatch.undo()
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InputError, match=r"its parent '.*afile' is a file, not a folder"):
        plan_batch([tmp_path / "afile"], tmp_path / "afile" / "sub")


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS"])
def test_a_full_disk_stops_the_run_though_each_message_names_its_photo(tmp_path: Path, code: str) -> None:
    """A write refused for want of space names its own file, so no two messages matched and the run denoised every
    remaining photo only to fail its write; two corrupt photos in a row (different messages) still go on. A quota
    (EDQUOT) and a read-only mount (EROFS) are refusals no other photo escapes either."""
    import errno
    import os

    number = getattr(errno, code)

    [touch(tmp_path / "in" / f"{n}.png") for n in "abcd"]
    plan = plan_batch([tmp_path / "in"], tmp_path / "out")

    def one(src: Path, dst: Path) -> dict:
        if src.stem in "ab":
            raise InputError(f"cannot read '{src}' as an image")
        try:
            raise OSError(number, os.strerror(number))
        except OSError as e:
            raise InputError(f"writing {dst} failed ({e.strerror}); nothing was changed there") from e

    run = BatchRun(plan, one)
    with pytest.raises(InputError, match=r"stopped after 4 of 4 photos: .*same refusal of the file system.*d.png"):
        run.run()
    assert len(run.failed) == 4  # a and b (each its own problem) went on; c and d, the same full disk, stopped it


def test_a_pipe_given_as_a_photo_is_not_said_to_be_missing(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"'.*fifo.png' is not a regular file or a folder \(a pipe or a device\?\)"):
        plan_batch([touch(tmp_path / "a.png"), fifo], tmp_path / "out")


@pytest.mark.parametrize("flags", [{"skip_existing": True}, {"overwrite": True}])
def test_a_folder_or_an_empty_file_where_a_result_goes_is_refused_first(tmp_path: Path, flags: dict) -> None:
    """--skip-existing counted a folder or an empty file at an output's path as a result done; --overwrite failed
    on the folder only after the photo was denoised."""
    a, b = touch(tmp_path / "in" / "a.png"), touch(tmp_path / "in" / "b.png")
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    (tmp_path / "out" / "b.png").write_bytes(b"")
    said = r"a.png/, b.png \(empty\);" if "skip_existing" in flags else r"a.png/;"  # --overwrite replaces an empty one
    with pytest.raises(InputError, match=rf"what cannot be a result: {said} remove those"):
        plan_batch([a, b], tmp_path / "out", **flags)


def test_a_photo_whose_own_format_cannot_hold_its_result_is_planned_as_png(tmp_path: Path) -> None:
    """A colour GIF (256 colours) kept its name, and its write was refused after the work (a photo found in a
    folder could not be denoised in a run at all); it goes to NAME.gif.png (not a.png: an a.png may stand beside
    it), with the reason in the plan."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P").save(d / "colour.gif")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / "gray.gif")  # a gray GIF stays a GIF
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(gray).save(d / "clear.gif", transparency=int(gray[0, 0]))  # read as RGBA
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "plain.bmp")
    touch(d / "broken.gif", b"GIF89a")  # unreadable: keeps its name, its denoising says what is wrong
    out = tmp_path / "out"
    plan = plan_batch([d], out)
    assert {s.name: o.name for s, o in plan.jobs} == {"clear.gif": "clear.gif.png", "broken.gif": "broken.gif",
                                                      "colour.gif": "colour.gif.png", "gray.gif": "gray.gif",
                                                      "plain.bmp": "plain.bmp"}
    notes = {s.name: note for s, note in plan.renamed}
    assert sorted(notes) == ["clear.gif", "colour.gif"]
    assert notes["colour.gif"].startswith("written as colour.gif.png, not .gif: GIF holds at most 256 colours")
    assert "the 'RGBA' result" in notes["clear.gif"] and plan.note_for(d / "plain.bmp") is None
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "colour.png")  # beside colour.gif:
    assert {s.name: o.name for s, o in plan_batch([d], out).jobs}["colour.png"] == "colour.png"  # both written
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "colour.pgm", format="PPM")  # a
    colour_pgm = plan_batch([d], out)  # colour P6 under .pgm (as written before): its write was refused after the work
    assert {s.name: o.name for s, o in colour_pgm.jobs}["colour.pgm"] == "colour.pgm.png"
    assert colour_pgm.note_for(d / "colour.pgm").startswith("written as colour.pgm.png, not .pgm: a .pgm file holds")
    (d / "colour.pgm").unlink()
    (d / "colour.png").rename(d / "colour.gif.png")  # the one name that can clash: said so
    with pytest.raises(InputError, match=r"gets \.png added to its name\): colour\.gif\.png \(.*colour\.gif,"):
        plan_batch([d], out)


def test_a_link_to_nothing_at_an_output_path_is_refused_before_any_photo(tmp_path: Path) -> None:
    """It was refused at its photo's turn, after the photos before it were denoised."""
    photos = [touch(tmp_path / "in" / f"{n}.png") for n in "ab"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").symlink_to(tmp_path / "gone.png")
    for skip in (False, True):
        with pytest.raises(InputError, match=r"symbolic links to nothing: b\.png; .*--overwrite"):
            plan_batch(photos, tmp_path / "out", skip_existing=skip)
    assert [o.name for _, o in plan_batch(photos, tmp_path / "out", overwrite=True).jobs] == ["a.png", "b.png"]


def test_an_output_folder_that_takes_no_files_is_refused_when_planned(tmp_path: Path, monkeypatch) -> None:
    """A batch into a folder that cannot be written (read-only mount, no permission) loaded the model, denoised each
    photo and failed its write, until two had failed alike; one photo into it was refused before the work."""
    import errno

    import moe_base.fileio as fileio

    a = touch(tmp_path / "in" / "a.png")
    (tmp_path / "ro").mkdir()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio, "new_temporary", read_only)
    with pytest.raises(InputError, match=r"cannot write to the folder '.*ro' \(Read-only file system\)"):
        plan_batch([a], tmp_path / "ro")
    with pytest.raises(InputError, match=r"cannot write to the folder '.*new' \(Read-only file system, since '.*' "
                                         r"cannot take it\)"):
        plan_batch([a], tmp_path / "new")  # a folder to be made: its parent is probed
    assert not (tmp_path / "new").exists()


def test_a_folders_jpe_jfif_pbm_and_apng_files_are_taken_as_photos(tmp_path: Path) -> None:
    """Files named .jpe, .jfif, .pbm or .apng were denoised when named on their own, and left out of a folder (the
    summary hid them behind '...'): each is read and written."""
    from runtime.images import output_format

    for suffix in (".jpe", ".jfif", ".pbm", ".apng"):
        assert output_format(f"x{suffix}") is not None  # written under that name
        touch(tmp_path / "in" / f"a{suffix}")
    plan = plan_batch([tmp_path / "in"], tmp_path / "out")
    assert sorted(s.suffix for s, _ in plan.jobs) == [".apng", ".jfif", ".jpe", ".pbm"] and plan.ignored == ()


def test_reliability_batch_output_cut_short(tmp_path: Path) -> None:
    """--skip-existing over an output folder holding a PNG or JPEG cut short (a copy stopped half-way, another tool's)
    => refused before any work, naming it as cut short (it was counted as done); --overwrite replaces it, and an
    empty one too (it was refused even with --overwrite)"""
    import io

    import numpy as np
    from PIL import Image

    for name, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, fmt)
        touch(tmp_path / "in" / name, buf.getvalue())
        touch(tmp_path / "out" / name, buf.getvalue()[:-20])
    touch(tmp_path / "in" / "c.png")
    touch(tmp_path / "out" / "c.png", b"")
    with pytest.raises(InputError, match=r"a\.png \(cut short\), b\.jpg \(cut short\), c\.png \(empty\); remove "
                                         r"those, or choose another -o folder; --overwrite replaces an empty or "
                                         r"cut-short file"):
        plan_batch([tmp_path / "in"], tmp_path / "out", skip_existing=True)
    assert len(plan_batch([tmp_path / "in"], tmp_path / "out", overwrite=True).jobs) == 3
    (tmp_path / "out" / "a.png").write_bytes((tmp_path / "in" / "a.png").read_bytes())  # whole: skipped
    (tmp_path / "out" / "b.jpg").unlink()
    (tmp_path / "out" / "c.png").unlink()
    assert [s.name for s, _ in plan_batch([tmp_path / "in"], tmp_path / "out", skip_existing=True).skipped] == ["a.png"]


def test_inputs_that_take_in_the_output_folder_are_told_so(tmp_path: Path) -> None:
    """'denoise p/* -o p/out/' run again (p/* now names p/out): refused as photos sharing names, with the advice to
    use other -o folders; the cause is that the output folder is among the inputs."""
    p = tmp_path / "p"
    touch(p / "a.png")
    touch(p / "out" / "a.png")
    with pytest.raises(InputError, match=r"-o folder, and the inputs take in its results too .*out/a\.png.*: leave "
                                         r"it out of the inputs"):
        plan_batch([p / "a.png", p / "out"], p / "out", skip_existing=True)
