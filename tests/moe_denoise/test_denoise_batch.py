"""moe-denoise denoise with several photos or folders: each result as a single-photo run writes it, into -o; a
photo that cannot be read is reported and the others go on (exit 2); --skip-existing resumes; --json reports all."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moe_base.errors import InputError
from moe_denoise.cli import main
from moe_denoise.commands import denoise as denoise_cmd


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(0, 256, (37, 20), dtype=np.uint8)).save(folder / "gray.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "2023").mkdir()  # subfolders are not searched: said, not silently passed over
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(folder / "2023" / "deep.png")
    return folder


def test_a_folder_of_formats_read_but_not_written_is_denoised_into_png(capsys, random_weights, tmp_path):
    """A folder of a phone's AVIF photos (or JPEG 2000, MPO) was left out whole ('left out of the folders given'),
    though each named on its own is read, its result written as NAME.avif.png."""
    from PIL import features

    folder = tmp_path / "phone"
    folder.mkdir()
    kinds = [("a.jp2", "JPEG2000")] + ([("b.avif", "AVIF")] if features.check("avif") else [])
    for name, fmt in kinds:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
            folder / name, format=fmt, **({"quality": 90} if fmt == "AVIF" else {}))
    code, text, err = run(capsys, "denoise", folder, "-o", tmp_path / "out", "--weights", random_weights,
                          "--no-progress")
    assert code == 0, err
    assert f"denoised {len(kinds)} of {len(kinds)} photos" in text and "left out" not in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{name}.png" for name, _ in kinds)


def test_camera_raw_files_left_out_of_a_folder_are_said_to_need_a_raw_converter(capsys, random_weights, photos,
                                                                             tmp_path):
    """A folder's camera raw files were left out with 'name another file to denoise it', which led to a refusal."""
    (photos / "IMG_0001.CR2").write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00")
    (photos / "broken.png").unlink()
    code, text, _ = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights,
                        "--no-progress")
    assert code == 0
    assert ("subfolders are not searched; IMG_0001.CR2: camera raw, to develop in a raw converter (darktable, "
            "RawTherapee, ...) first)") in text
    assert "camera raw" not in run(capsys, "denoise", photos / "colour.png", "-o", tmp_path / "one.png", "--weights",
                                   random_weights, "--no-progress")[1]


def test_reliability_batch_with_a_broken_photo(capsys, random_weights, photos, tmp_path):
    """denoise of a folder holding a photo that cannot be read => that photo reported, the others written
    byte-identical to single-photo runs (exit 2, the count and --skip-existing named); after a fix, --skip-existing
    denoises only the rest and leaves the outputs alone; a link to nothing is named as one (it was said to lack a
    photo's ending, which it has)"""
    (photos / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    code, text, err = run(capsys, "denoise", photos, "-o", out, "--weights", random_weights, "--no-progress")
    assert code == 2  # one photo failed: said, the others written
    assert "[1/3] failed: " in err and "broken.png" in err and "1 of 3 photos could not be denoised" in err
    assert "--skip-existing" in err and "Traceback" not in err
    assert "[2/3] denoised" in text and "[3/3] denoised" in text
    assert "denoised 2 of 3 photos into" in text
    assert ("left out of the folders given: 2023/, gone.png (a link to nothing), notes.txt (taken from a folder: "
            "files ending in .png") in text
    assert "subfolders are not searched)" in text
    assert sorted(p.name for p in out.iterdir()) == ["colour.png", "gray.jpg"]
    for name in ("colour.png", "gray.jpg"):  # byte for byte what denoising the photo on its own writes
        code, _, err = run(capsys, "denoise", photos / name, "-o", tmp_path / f"single_{name}", "--weights",
                           random_weights, "--no-progress")
        assert code == 0, err
        assert (out / name).read_bytes() == (tmp_path / f"single_{name}").read_bytes()

    (photos / "broken.png").unlink()  # fixed by the user; the run resumed
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(photos / "late.png")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, text, err = run(capsys, "denoise", photos, "-o", out, "--weights", random_weights, "--no-progress",
                          "--skip-existing")
    assert code == 0, err
    assert "[1/1] denoised" in text and "late.png" in text and "2 skipped (output exists)" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before


def test_json_reports_every_photo_failure_and_skip(capsys, random_weights, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gray.jpg").write_bytes(b"kept")
    code, text, err = run(capsys, "denoise", photos / "colour.png", photos / "broken.png", photos / "gray.jpg",
                          "-o", out, "--weights", random_weights, "--json", "--skip-existing")
    assert code == 2 and "could not be denoised" in err
    report = json.loads(text)
    assert report["summary"] | {"seconds": 0} == {"output_dir": str(out), "denoised": 1, "failed": 1, "skipped": 1,
                                                  "ignored": 0, "seconds": 0}
    assert [Path(r["output"]).name for r in report["photos"]] == ["colour.png"]
    assert report["failed"][0]["input"].endswith("broken.png") and "cannot read" in report["failed"][0]["error"]
    assert report["skipped"] == [{"input": str(photos / "gray.jpg"), "output": str(out / "gray.jpg")}]
    assert (out / "gray.jpg").read_bytes() == b"kept"


def test_reliability_batch_failing_alike_twice(capsys, monkeypatch, random_weights, photos, tmp_path):
    """denoise of several photos where two in a row fail with the same message (not one photo's fault: a server
    gone) => the run stops there (exit 2, the message and --skip-existing named); the output folder it made, empty,
    is removed"""
    (photos / "broken.png").unlink()
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(photos / "third.png")
    calls = []

    def fails(args, runner, src, dst, client=None):
        calls.append(src.name)
        raise InputError("cannot reach a Triton server at localhost:1")

    monkeypatch.setattr(denoise_cmd, "denoise_one", fails)
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights)
    assert code == 2 and calls == ["colour.png", "gray.jpg"]
    assert "stopped after 2 of 3 photos: the last two failed with the same message" in err
    assert "cannot reach a Triton server" in err and "--skip-existing" in err
    assert not (tmp_path / "out").exists()  # the folder the run made is not left behind empty
    code, out, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights, "--json")
    done = json.loads(out)  # --json promises JSON on stdout: it was empty
    assert code == 2 and done["summary"]["failed"] == 2 and "stopped after 2 of 3" in done["summary"]["stopped"]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sighup"])
def test_reliability_batch_interrupted(capsys, monkeypatch, random_weights, photos, tmp_path, how, request):
    """denoise of several photos interrupted (Ctrl-C, or SIGTERM or SIGHUP (a closed terminal), which ended it in
    silence with an empty output folder left) => exit 130 (143 for SIGTERM, 129 for SIGHUP); the outputs written are
    complete and kept, and --skip-existing is named to go on (said once; stopped before the first photo, that nothing
    was written and no folder is left)"""
    import signal

    (photos / "broken.png").unlink()
    real = denoise_cmd.denoise_one
    sent = {"sigterm": signal.SIGTERM, "sighup": signal.SIGHUP}.get(how)
    code_of = {"ctrl-c": 130, "sigterm": 143, "sighup": 129}
    if sent == signal.SIGHUP:  # a closing terminal's: under nohup (a CI job started with it) SIGHUP is ignored, and
        previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # the command leaves it so (nohup is respected)
        request.addfinalizer(lambda: signal.signal(signal.SIGHUP, previous))

    def interrupted_on(name):
        def denoise_one(args, runner, src, dst, client=None):
            if src.name == name:
                if sent is not None:
                    signal.raise_signal(sent)  # the handler raises here, in the main thread
                raise KeyboardInterrupt
            return real(args, runner, src, dst, client)
        return denoise_one

    monkeypatch.setattr(denoise_cmd, "denoise_one", interrupted_on("gray.jpg"))
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights,
                       "--no-progress")
    assert code == code_of[how]
    assert err.strip() == ("interrupted after 1 of 2 photos; every output written is complete: run the same command "
                           "with --skip-existing to go on")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["colour.png"]
    monkeypatch.setattr(denoise_cmd, "denoise_one", interrupted_on("colour.png"))
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out2", "--weights", random_weights,
                       "--no-progress")
    assert code == code_of[how] and not (tmp_path / "out2").exists()
    assert err.strip() == "interrupted before the first of 2 photos was written; nothing was written"
    monkeypatch.setattr(denoise_cmd, "denoise_one", interrupted_on("gray.jpg"))  # --json: stdout stayed empty
    code, out, _ = run(capsys, "denoise", photos, "-o", tmp_path / "out3", "--weights", random_weights, "--json")
    done = json.loads(out)
    assert code == code_of[how] and done["summary"]["denoised"] == 1
    assert done["summary"]["stopped"] == "interrupted after 1 of 2 photos" and len(done["photos"]) == 1


def test_an_interrupted_batch_whose_results_replace_its_photos_names_the_photos_left(capsys, monkeypatch,
                                                                                      random_weights, photos):
    """denoise photos/ -o photos/ --overwrite, stopped: the advice was '--skip-existing', which contradicts
    --overwrite and, alone, is refused there (the results would replace the photos); the only command that ran was
    the same one, which denoised the photos already done a second time."""
    import shutil

    shutil.rmtree(photos / "2023")
    (photos / "broken.png").unlink()
    real = denoise_cmd.denoise_one

    def stopped_on_gray(args, runner, src, dst, client=None):
        if src.name == "gray.jpg":
            raise KeyboardInterrupt
        return real(args, runner, src, dst, client)

    monkeypatch.setattr(denoise_cmd, "denoise_one", stopped_on_gray)
    code, _, err = run(capsys, "denoise", photos, "-o", photos, "--overwrite", "--weights", random_weights,
                       "--no-progress")
    assert code == 130 and "--skip-existing" not in err.replace("so --skip-existing cannot tell", "")
    assert err.strip().endswith(f"every output written is complete: to go on, run it naming only the 1 photo(s) not "
                                f"written ({photos / 'gray.jpg'}): their results replace them, so --skip-existing "
                                f"cannot tell the 1 done from the others, and the same command would denoise those "
                                f"twice")
    done = (photos / "colour.png").read_bytes()
    monkeypatch.setattr(denoise_cmd, "denoise_one", real)
    code, _, _ = run(capsys, "denoise", photos / "gray.jpg", "-o", photos, "--overwrite", "--weights", random_weights,
                     "--no-progress")
    assert code == 0 and (photos / "colour.png").read_bytes() == done  # the advice, followed: nothing done twice


def test_a_batch_whose_output_pipe_closes_says_where_it_stopped(capsys, monkeypatch, random_weights, photos,
                                                                tmp_path):
    """moe-denoise denoise photos/ -o out | head -1: the run stopped at the second photo, exit 141, in silence; it now
    says on stderr where it stopped and how to go on."""
    import moe_denoise.cli

    (photos / "broken.png").unlink()
    real = denoise_cmd.denoise_one

    def pipe_closed_on_the_second(args, runner, src, dst, client=None):
        if src.name == "gray.jpg":
            raise BrokenPipeError(32, "Broken pipe")
        return real(args, runner, src, dst, client)

    monkeypatch.setattr(denoise_cmd, "denoise_one", pipe_closed_on_the_second)
    monkeypatch.setattr(moe_denoise.cli, "_stdout_to_devnull", lambda: None)  # capsys holds stdout here
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights,
                       "--no-progress")
    assert code == 141 and err.strip() == ("stopped after 1 of 2 photos: the output pipe was closed; run the same "
                                           "command with --skip-existing to go on")
    # with --overwrite into another folder, the advice cannot be '--skip-existing' alone: the two contradict
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--overwrite", "--weights", random_weights,
                       "--no-progress")
    assert code == 141 and err.strip().endswith("run the same command with --skip-existing in place of --overwrite "
                                                "to go on")


def test_reference_needs_a_single_photo(capsys, photos, tmp_path):
    code, _, err = run(capsys, "denoise", photos / "colour.png", photos / "gray.jpg", "-o", tmp_path / "out",
                       "--reference", photos / "colour.png")
    assert code == 2 and "--reference compares one photo" in err and not (tmp_path / "out").exists()


def test_skip_existing_with_one_photo(capsys, photos, tmp_path):
    (tmp_path / "out.png").write_bytes(b"kept")
    code, text, _ = run(capsys, "denoise", photos / "colour.png", "-o", tmp_path / "out.png", "--skip-existing")
    assert code == 0 and "skipped" in text and (tmp_path / "out.png").read_bytes() == b"kept"


def test_overwrite_and_skip_existing_contradict(capsys, photos, tmp_path):
    code, _, err = run(capsys, "denoise", photos / "colour.png", "-o", tmp_path / "out.png", "--skip-existing",
                       "--overwrite")
    assert code == 2 and "contradict" in err and not (tmp_path / "out.png").exists()


def test_one_photo_into_a_folder_named_with_a_slash(capsys, random_weights, photos, tmp_path):
    """-o new/ (a trailing slash) for one photo: the folder is made and the photo written into it; when the photo
    cannot be read, the folder made for it is not left behind; a missing parent is refused."""
    code, _, err = run(capsys, "denoise", photos / "broken.png", "-o", f"{tmp_path / 'new'}/", "--weights",
                       random_weights)
    assert code == 2 and "cannot read" in err and not (tmp_path / "new").exists()
    code, text, err = run(capsys, "denoise", photos / "colour.png", "-o", f"{tmp_path / 'new'}/", "--weights",
                          random_weights, "--no-progress")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["colour.png"] and "new/colour.png" in text
    code, _, err = run(capsys, "denoise", photos / "colour.png", "-o", f"{tmp_path / 'no' / 'new'}/")
    assert code == 2 and "parent" in err and "does not exist" in err


def test_reliability_batch_with_weights_that_cannot_load(capsys, photos, tmp_path):
    """denoise of a folder with --weights that cannot be loaded => refused (exit 2, the file named); the output
    folder is not left behind"""
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in err and not (tmp_path / "out").exists()


def test_jpeg_quality_reaches_every_jpeg_output(capsys, random_weights, photos, tmp_path):
    """--jpeg-quality Q: the JPEG outputs of a run are written at Q (smaller at 40 than at the default 95), PNG
    outputs stay lossless and unchanged; out of range is refused before any work."""
    (photos / "broken.png").unlink()
    for q, out in (("95", tmp_path / "q95"), ("40", tmp_path / "q40")):
        code, _, err = run(capsys, "denoise", photos, "-o", out, "--weights", random_weights, "--jpeg-quality", q,
                           "--no-progress")
        assert code == 0, err
    assert (tmp_path / "q40" / "gray.jpg").stat().st_size < (tmp_path / "q95" / "gray.jpg").stat().st_size
    assert (tmp_path / "q40" / "colour.png").read_bytes() == (tmp_path / "q95" / "colour.png").read_bytes()
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "q0", "--jpeg-quality", "0")
    assert code == 2 and "--jpeg-quality is a JPEG / WebP output's quality" in err and not (tmp_path / "q0").exists()


def test_jpeg_quality_makes_a_lossless_webps_output_lossy(capsys, random_weights, tmp_path):
    """A lossless WebP is written back lossless, unless --jpeg-quality is given: then the lossy file asked for, at
    that quality (it was accepted and only set libwebp's effort, the file staying lossless and large)."""
    from runtime.images import _webp_lossless

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "in.webp", lossless=True)
    for name, extra in (("kept.webp", ()), ("q60.webp", ("--jpeg-quality", "60"))):
        code, _, err = run(capsys, "denoise", tmp_path / "in.webp", "-o", tmp_path / name, "--weights", random_weights,
                           "--no-progress", *extra)
        assert code == 0, err
    assert _webp_lossless(tmp_path / "kept.webp") and not _webp_lossless(tmp_path / "q60.webp")
    assert (tmp_path / "q60.webp").stat().st_size < (tmp_path / "kept.webp").stat().st_size


def test_batch_through_a_server_uses_one_client(capsys, monkeypatch, photos, tmp_path):
    """denoise --server of several photos opens one client for the run (a connection and readiness checks once,
    not per photo), sends every photo through it, closes it at the end; the broken photo is still reported."""
    import serving.client as client_module

    made: list[object] = []

    class Client:  # stands in for the transport: the server answers each photo with its pixels inverted
        def __init__(self, url, timeout_s=3600.0):
            self.photos, self.closed = 0, False
            made.append(self)

        def wait_ready(self, timeout_s=30.0):
            pass

        def ready(self, model=None):
            return True

        def photo_answer(self, pixels, two_scales=False, strength=1.0, sigma=None, guard=True):
            self.photos += 1
            return ~pixels, None, None  # no guard decision, no settings: as a server before either was sent

        def close(self):
            self.closed = True

    monkeypatch.setattr(client_module, "DenoiseClient", Client)
    code, text, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--server", "localhost:1")
    assert code == 2 and "broken.png" in err  # the broken photo fails before any request
    assert len(made) == 1 and made[0].photos == 2 and made[0].closed
    assert "denoised 2 of 3 photos into" in text
    assert "with the server at localhost:1 in " in text and "tiles)" not in text  # its tile count was not sent
    written = np.asarray(Image.open(tmp_path / "out" / "colour.png"))
    assert np.array_equal(written, ~np.asarray(Image.open(photos / "colour.png")))


def test_several_photos_into_a_name_like_a_photos_are_refused(capsys, photos, tmp_path):
    """-o new.png with several photos made a folder named new.png; a folder written new.png/ still is one."""
    code, _, err = run(capsys, "denoise", photos / "colour.png", photos / "gray.jpg", "-o", tmp_path / "new.png")
    assert code == 2 and "is named like a photo, but several photos go into a folder" in err
    assert f"-o {tmp_path / 'new'}/" in err and not (tmp_path / "new.png").exists()
    (tmp_path / "empty").mkdir()  # one folder: its photos, not 'several' (an empty one was said to hold several)
    code, _, err = run(capsys, "denoise", tmp_path / "empty", "-o", tmp_path / "new.png")
    assert code == 2 and f"but the photos of the folder '{tmp_path / 'empty'}' go into a folder" in err


def test_reliability_colour_gif_denoised_into_a_folder(capsys, random_weights, tmp_path):
    """denoise of a folder (or a photo into -o folder/) holding a colour GIF, which was refused after the other photos
    (its GIF result would lose colours; a GIF in a folder was left out as 'not photos') => denoised, its result
    written as NAME.gif.png, a note saying why"""
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).convert("P").save(folder / "c.gif")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    code, text, err = run(capsys, "denoise", folder, "-o", tmp_path / "out", "--weights", random_weights,
                          "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.gif.png"]
    assert "-> " + str(tmp_path / "out" / "c.gif.png") in text
    assert "note: written as c.gif.png, not .gif: GIF holds" in text
    code, text, err = run(capsys, "denoise", folder / "c.gif", "-o", f"{tmp_path / 'alone'}/", "--weights",
                          random_weights, "--no-progress", "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["output"] == str(tmp_path / "alone" / "c.gif.png")
    assert any("written as c.gif.png" in n for n in report["notes"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "alone" / "c.gif.png")),
                          np.asarray(Image.open(tmp_path / "out" / "c.gif.png")))


def test_a_pbm_photo_denoised_into_a_folder_stays_a_pbm(capsys, random_weights, tmp_path):
    """A 1-bit .pbm was read but .pbm was not written: into -o folder/ it failed at its turn (later written as
    NAME.pbm.png with a note), and -o x.pbm was refused, though Pillow writes a 1-bit image as a PBM (P4)."""
    bw = Image.fromarray(np.random.default_rng(2).integers(0, 2, (16, 20), dtype=np.uint8) * 255).convert("1")
    bw.save(tmp_path / "bw.pbm")
    code, text, err = run(capsys, "denoise", tmp_path / "bw.pbm", "-o", f"{tmp_path / 'out'}/", "--weights",
                          random_weights, "--no-progress")
    assert code == 0, err
    assert "note: written as" not in text and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bw.pbm"]
    with Image.open(tmp_path / "out" / "bw.pbm") as written:
        assert written.format == "PPM" and written.mode == "1" and written.size == (20, 16)
    code, _, err = run(capsys, "denoise", tmp_path / "bw.pbm", "-o", tmp_path / "bw_out.pbm", "--weights",
                       random_weights)
    assert code == 0 and (tmp_path / "bw_out.pbm").read_bytes()[:2] == b"P4", err


def test_a_folder_run_in_a_log_names_each_photo_as_it_begins(capsys, random_weights, photos, tmp_path):
    """In a log (stderr not a terminal) the progress lines name no photo, and a photo's own line comes only when it
    is done: a long photo showed as 'denoising: (k of N tiles, ...)' of an unknown photo. Each now begins with a line
    naming it; --no-progress leaves them out."""
    (photos / "broken.png").unlink()
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights)
    assert code == 0, err
    assert f"[1/2] denoising {photos / 'colour.png'} ..." in err and f"[2/2] denoising {photos / 'gray.jpg'} ..." in err
    code, _, err = run(capsys, "denoise", photos, "-o", tmp_path / "quiet", "--weights", random_weights, "--no-progress")
    assert code == 0 and "denoising" not in err
    (tmp_path / "out" / "colour.png").unlink()  # resumed: numbered as the photo's own line is
    code, text, err = run(capsys, "denoise", photos, "-o", tmp_path / "out", "--weights", random_weights,
                          "--skip-existing")
    colour = photos / "colour.png"
    assert code == 0 and f"[1/1] denoising {colour} ..." in err and f"[1/1] denoised {colour}" in text
    assert "gray.jpg" not in err


def test_many_inputs_say_their_headers_are_read_first(capsys, monkeypatch, random_weights, tmp_path):
    """A glob of 5,000 photos was 15 s of silence before the first line (every header is read before any work);
    from PLAN_NOTE_AT inputs on, that is said at once."""
    from moe_denoise.commands import denoise

    monkeypatch.setattr(denoise, "PLAN_NOTE_AT", 3)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths[-1])
    code, _, err = run(capsys, "denoise", *paths, "-o", tmp_path / "out", "--weights", random_weights)
    assert code == 0 and err.startswith("reading the headers of 3 inputs before any work ..."), err
    code, _, err = run(capsys, "denoise", *paths[:2], "-o", tmp_path / "out2", "--weights", random_weights)
    assert code == 0 and "reading the headers" not in err


def test_visualize_offset_past_the_end_says_which_there_are(capsys, fake_cifar, random_weights, tmp_path):
    code, _, err = run(capsys, "visualize", "--weights", random_weights, "--data-dir", fake_cifar, "--offset", 40,
                       "-o", tmp_path / "v")
    assert code == 2 and "--offset 40 is past the end of the test split (40 images): give an --offset from 0 to 39" \
        in err, err
