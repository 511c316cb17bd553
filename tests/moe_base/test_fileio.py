"""moe_base.fileio's small helpers that have no reliability test of their own."""
import hashlib
import json
import os
from pathlib import Path

import pytest

from moe_base.errors import InputError
from moe_base.fileio import holds, sha256_file


def test_holds_is_true_only_for_a_file_with_that_content(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert sha256_file(path) == digest and holds(path, digest)
    path.write_bytes(b"other weights")  # changed since the manifest recorded it
    assert not holds(path, digest)
    assert not holds(tmp_path / "gone.bin", digest)  # gone
    assert not holds(tmp_path, digest)  # a folder, not a file


HOLD_LOCK = """import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(60)
"""


def hold_lock(path):
    """Another process holding the lock of ``path`` as folder_lock takes it (flock), until killed."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_lock_refuses_a_second_writer_and_is_free_once_its_holder_dies(tmp_path):
    """Two `train` runs into one --out-dir both ran and reported their own weights, and the folder held the other's:
    folder_lock lets one writer at a time hold a folder (also within one process); the kernel frees the lock of a
    process that died, however it died."""
    import os

    from moe_base.errors import InputError
    from moe_base.fileio import LOCK_NAME, folder_lock

    other = hold_lock(tmp_path / LOCK_NAME)
    try:
        with pytest.raises(InputError, match=rf"another training run \(process {other.pid}\) is writing {tmp_path} "
                                             rf"now; wait for it to end \(or stop it\), or choose another --out-dir"):
            with folder_lock(tmp_path, "training run", "--out-dir"):
                pass
    finally:
        other.kill()  # killed: no chance to remove or release anything itself
        other.wait()
    assert (tmp_path / LOCK_NAME).exists()  # its file is still there, and free
    with folder_lock(tmp_path, "training run", "--out-dir") as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(InputError, match=rf"another training run \(process {os.getpid()}\)"):
            with folder_lock(tmp_path, "training run", "--out-dir"):  # nested, in one process: refused too
                pass
        assert lock.exists()  # the refused attempt left the holder's lock alone
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # removed at the end


def test_a_folder_lock_on_a_file_system_that_cannot_lock_goes_on_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    from moe_base.fileio import folder_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_lock(tmp_path, "training run", "--out-dir"):
        ran = True
    assert ran


def test_an_artifact_read_while_its_export_puts_the_manifest_in_place_is_read_again(tmp_path):
    """An export writes the model, then its manifest: a runner loading between the two was refused ('does not match
    its manifest ... re-export it'). A mismatch is read once more after a moment; a lasting one is still refused."""
    import threading

    from moe_base.errors import ArtifactMismatchError
    from moe_base.manifest import base_manifest, manifest_path, read_checked, write_artifact

    model = tmp_path / "m.onnx"
    write_artifact(model, b"old graph", base_manifest("onnx", model, b"old graph"))
    model.write_bytes(b"new graph")  # the new model is in place, its manifest not yet
    later = threading.Timer(0.1, lambda: write_artifact(model, b"new graph", base_manifest("onnx", model, b"new graph")))
    later.start()
    try:
        assert read_checked(model, kind="onnx", settle_s=0.5)["artifact"]["bytes"] == len(b"new graph")
    finally:
        later.join()
    manifest_path(model).write_text(manifest_path(model).read_text().replace(
        base_manifest("onnx", model, b"new graph")["artifact"]["sha256"], "0" * 64))
    with pytest.raises(ArtifactMismatchError, match="does not match its manifest"):
        read_checked(model, settle_s=0.01)


def test_publishing_a_new_folder_through_a_link_and_a_failed_manifest_over_an_old_model(tmp_path, monkeypatch):
    """publish_folder without overwrite refused a link to an empty folder as 'filled while this was being written';
    write_artifact said 'nothing was changed' when a replaced model's new manifest could not be written."""
    import moe_base.manifest
    from moe_base.errors import InputError
    from moe_base.fileio import publish_folder
    from moe_base.manifest import base_manifest, write_artifact

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "README.md").write_text("new")
    publish_folder(staging, tmp_path / "link", ["README.md"], overwrite=False)
    assert (tmp_path / "link" / "README.md").read_text() == "new" and (tmp_path / "link").is_symlink()

    model = tmp_path / "m.onnx"
    write_artifact(model, b"old", base_manifest("onnx", model, b"old"))

    def disk_full(path, value, overwrite=True):
        raise InputError(f"writing {path} failed (No space left on device); nothing was changed there")

    monkeypatch.setattr(moe_base.manifest, "atomic_write_json", disk_full)
    with pytest.raises(InputError, match=r"but .*m\.onnx was already replaced, and its old manifest does not describe "
                                         r"it.*re-export it"):
        write_artifact(model, b"new", base_manifest("onnx", model, b"new"))


def test_an_output_that_is_a_link_to_nothing_is_refused_before_the_work(tmp_path):
    """A dangling link as the output passed every check, then the finished file was refused: 'the output appeared
    while it was being written'. It is refused up front now, and --overwrite replaces the link, not its target."""
    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write, check_output_file
    from runtime.images import check_output_path

    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "missing" / "target.png")
    for check in (lambda: check_output_file(link), lambda: check_output_path(link, None, overwrite=False)):
        with pytest.raises(InputError, match=r"is a symbolic link to '.*target.png', which does not exist"):
            check()
    check_output_path(link, None, overwrite=True)
    atomic_write(link, b"denoised", overwrite=True)
    assert not link.is_symlink() and link.read_bytes() == b"denoised"
    assert not (tmp_path / "missing").exists()


def test_a_file_where_an_output_folder_must_be_is_named(tmp_path):
    """triton-repo -o a_file/sub said "cannot write a_file/sub: File exists in the folder 'a_file'"."""
    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write, staging_folder

    (tmp_path / "a_file").write_text("x")
    for target in (tmp_path / "a_file" / "sub", tmp_path / "a_file" / "sub" / "deeper"):
        with pytest.raises(InputError, match=rf"cannot write .*: '{tmp_path / 'a_file'}' is a file, not a folder; "
                                             r"choose another place$"):
            with staging_folder(target):
                pass
        with pytest.raises(InputError, match=r"'.*a_file' is a file, not a folder"):
            atomic_write(target / "m.onnx", b"data")
    assert (tmp_path / "a_file").read_text() == "x"


def test_an_output_under_a_folder_that_cannot_be_searched_is_said_in_words(tmp_path, monkeypatch):
    """Looking for a file in the output's path, the error's own path was checked with Path.exists, which raises on
    Python 3.10 / 3.11 for a folder above that cannot be searched (EACCES): a PermissionError traceback instead of
    "cannot write ...: Permission denied". Without root, a folder of mode 700 owned by another user does this (here
    its stat and mkdir are stood in for, as root may search any folder)."""
    import errno
    import pathlib

    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write, staging_folder

    locked = tmp_path / "locked"

    def denied(self: pathlib.Path) -> bool:
        return self == locked / "x" or locked / "x" in self.parents

    def deny(real):
        def call(self, *args, **kwargs):
            if denied(self):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return call

    for name in ("exists", "is_symlink", "mkdir", "stat", "lstat"):
        monkeypatch.setattr(pathlib.Path, name, deny(getattr(pathlib.Path, name)))
    with pytest.raises(InputError, match=r"cannot write .*out\.onnx: Permission denied"):
        atomic_write(locked / "x" / "out.onnx", b"data")
    with pytest.raises(InputError, match=r"cannot write .*repo: Permission denied"):
        with staging_folder(locked / "x" / "repo"):
            pass


def test_a_link_to_nothing_where_an_output_folder_must_be_is_named(tmp_path):
    """It was called 'a file, not a folder'."""
    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write

    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match=r"'.*out' is a symbolic link to '.*gone', which does not exist; create that "
                                         r"folder or choose another place$"):
        atomic_write(tmp_path / "out" / "m.onnx", b"data")


def test_an_existing_output_without_overwrite_is_refused_as_existing_before_anything_is_written(tmp_path):
    """atomic_write(overwrite=False) onto a file that was there all along said it 'appeared while it was being
    written', after writing (and calling the writer) in vain."""
    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write

    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    called = []
    with pytest.raises(InputError, match="already exists; refusing to replace it.*--overwrite") as e:
        atomic_write(out, called.append, overwrite=False)
    assert "appeared" not in str(e.value) and called == []
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    atomic_write(out, b"new", overwrite=True)
    assert out.read_bytes() == b"new"


def test_a_file_that_appears_while_it_is_being_written_is_not_replaced_without_overwrite(tmp_path):
    """atomic_write(overwrite=False) promises that a file appearing during the write is not replaced either: the
    move into place is a link that fails on an existing name, not a rename. Here the writer itself makes the file,
    after the check before the work; its bytes stay, the refusal says so, and no temporary is left."""
    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write

    out = tmp_path / "model.onnx"

    def write(f):
        out.write_bytes(b"another writer's")
        f.write(b"ours")

    with pytest.raises(InputError, match="appeared while it was being written; refusing to replace it.*--overwrite"):
        atomic_write(out, write, overwrite=False)
    assert out.read_bytes() == b"another writer's" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_files_and_staging_folders_get_the_umask_without_the_umask_being_set(tmp_path, monkeypatch):
    """Reading the umask meant setting it to 0 for a moment (os.umask has no read-only form): a file another thread
    made at that moment came out writable by everyone. The kernel now applies it when each is made."""
    import os

    from moe_base.fileio import atomic_write, staging_folder

    old = os.umask(0o027)
    try:
        def set_umask(mask):
            raise AssertionError(f"os.umask({mask:#o}) was called while writing")

        monkeypatch.setattr(os, "umask", set_umask)
        atomic_write(tmp_path / "a.json", b"{}")
        with staging_folder(tmp_path / "repo") as staging:
            assert staging.stat().st_mode & 0o777 == 0o750
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_file_replaced_keeps_its_permissions(tmp_path):
    """--overwrite gave the new file 0666 less the umask: a private (0600) photo became readable by everyone, and a
    read-only one writable."""
    import os

    from moe_base.fileio import atomic_write

    for mode in (0o600, 0o444, 0o640):
        out = tmp_path / f"{mode:o}.png"
        out.write_bytes(b"old")
        os.chmod(out, mode)
        while_written = []  # the temporary file has the mode while the data goes in, not only once it is in

        def data(f, while_written=while_written):
            while_written.append(os.fstat(f.fileno()).st_mode & 0o777)
            f.write(b"new")

        atomic_write(out, data, overwrite=True)
        assert out.read_bytes() == b"new" and out.stat().st_mode & 0o777 == mode and while_written == [mode]


def test_an_engine_is_told_to_be_rebuilt_not_re_exported(tmp_path):
    """Every artifact refusal said 're-export it', an engine's too (an engine without its manifest, a truncated one):
    engines are made by 'moe-denoise build'."""
    from moe_base.errors import ArtifactError
    from moe_base.manifest import base_manifest, read_checked, read_manifest, write_artifact

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(ArtifactError, match=r"has no manifest .* rebuild it with: moe-denoise build --onnx MODEL\.onnx -o "
                                            r"\S*m\.engine --overwrite \(MODEL\.onnx being the ONNX model it was built"):
        read_manifest(engine)
    write_artifact(engine, b"engine bytes", base_manifest("trt-engine", engine, b"engine bytes"))
    engine.write_bytes(b"engine")  # truncated
    with pytest.raises(ArtifactError, match=r"the file is truncated or was replaced; rebuild it with: moe-denoise build"):
        read_checked(engine, kind="trt-engine")
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"graph")
    with pytest.raises(ArtifactError, match=r"re-export it with: moe-denoise export -o \S*m\.onnx --overwrite"):
        read_manifest(graph)


def test_a_manifest_of_another_version_says_what_to_run(tmp_path):
    """A manifest without a schema (or another one) said 'has schema None; this version reads ...', and nothing to
    do; every other manifest refusal names the command that makes the file again."""
    from moe_base.errors import ArtifactError
    from moe_base.manifest import base_manifest, read_manifest, write_artifact

    graph = tmp_path / "m.onnx"
    manifest = base_manifest("onnx", graph, b"graph")
    manifest.update(precision="fp16", onnx={"flavor": "plugin", "rewrites": []})
    for schema in (None, "moe-denoise/manifest/0"):
        if schema is None:
            manifest.pop("schema")
        else:
            manifest["schema"] = schema
        write_artifact(graph, b"graph", manifest)
        found = "no 'schema' field" if schema is None else f"schema '{schema}'"
        with pytest.raises(ArtifactError, match=rf"has {found}, and this version of moe-denoise reads "
                                                rf"'moe-denoise/manifest/1': it was written by another version; "
                                                rf"re-export it with: moe-denoise export --flavor plugin --precision "
                                                rf"fp16 --no-optimize -o \S*m\.onnx --overwrite \(with this version\)"):
            read_manifest(graph)


def test_devices_pipes_and_links_to_them_are_refused_and_a_link_to_a_file_is_written_through(tmp_path):
    """--overwrite replaced whatever was at the output's path: a FIFO became a regular file (its reader waited
    forever), a link to /dev/null became a report with the device's mode (0666), and a link to a report was replaced
    by a file of its own, the report it named left as it was."""
    import os

    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write, check_output_file
    from runtime.images import check_output_path

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    to_null = tmp_path / "null.json"
    to_null.symlink_to("/dev/null")
    for special in (fifo, to_null):
        for overwrite in (False, True):
            for check, extra in ((check_output_file, ()), (check_output_path, (None,)), (atomic_write, (b"{}",))):
                with pytest.raises(InputError, match="is a device, pipe or socket, not a regular file"):
                    check(special, *extra, overwrite=overwrite)
    assert not fifo.is_file() and to_null.is_symlink() and os.readlink(to_null) == "/dev/null"

    report, link = tmp_path / "runs" / "run3.json", tmp_path / "latest.json"
    report.parent.mkdir()
    report.write_text("old")
    link.symlink_to(report)
    check_output_file(link, overwrite=True)
    atomic_write(link, b"new", overwrite=True)
    assert link.is_symlink() and report.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.json", "latest.json", "null.json", "runs"]


def test_a_link_written_through_is_checked_in_its_targets_folder_before_the_work(tmp_path, monkeypatch):
    """--overwrite writes through a link to a file, into the target's folder; the check before the work looked at
    the link's own folder, so a target folder that takes no files failed after the work."""
    from moe_base import fileio
    from moe_base.errors import InputError

    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "out.png").write_bytes(b"old")
    link = tmp_path / "rw" / "link.png"
    link.symlink_to(tmp_path / "ro" / "out.png")
    real = fileio.new_temporary

    def no_new_files_in_ro(folder, prefix, suffix):
        if Path(folder) == tmp_path / "ro":
            raise PermissionError(13, "Permission denied", str(folder))
        return real(folder, prefix, suffix)

    monkeypatch.setattr(fileio, "new_temporary", no_new_files_in_ro)  # root writes anywhere: the folder is told so
    with pytest.raises(InputError, match=r"cannot write to the folder '.*ro'"):
        fileio.check_output_file(link, overwrite=True)


def test_temporaries_of_long_names_fit_and_only_their_own_stale_ones_are_removed(tmp_path):
    """A 235-255-byte name's temporaries (16 to 26 bytes longer) were too long to make, so a valid output was
    refused, or failed after the work; shortened, the stale ones of a killed writer must still be found, and only
    those of that very name (not of another long name that starts alike, nor of 'a.4194303' for 'a')."""
    from moe_base.fileio import atomic_write, check_folder_takes_files, remove_stale_temporaries, staging_folder

    for name in ("b" * 255, "é" * 127, "c" * 240 + ".png"):  # 255, 254, 244 bytes
        target = tmp_path / name
        check_folder_takes_files(tmp_path, name)
        atomic_write(target, b"data", overwrite=False)
        assert target.read_bytes() == b"data"
        with staging_folder(tmp_path / ("s" + name[1:])) as staging:
            assert len(staging.name.encode()) <= 255

    seen = []

    def made(folder, name):
        """The name of a temporary of ``name`` that atomic_write makes, found while it is being written."""
        atomic_write(folder / name, lambda f: seen.extend(p.name for p in folder.iterdir()
                                                         if p.name.endswith(f".{os.getpid()}.{p.name[-20:]}")))
        return seen.pop()

    dead_pid = 4194303  # beyond the largest pid: its writer is gone
    one, other = "x" * 250, "x" * 249 + "y"  # same first 240 bytes
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / ".a.4194303.4194303.0badcafe.tmp").write_bytes(b"a stale temporary of a.4194303, not of a")
    stale = {}
    for name in (one, other):
        live = made(folder, name)
        assert len(live.encode()) <= 255 and live.startswith(".xxxx")
        stale[name] = folder / live.replace(f".{os.getpid()}.", f".{dead_pid}.")
        stale[name].write_bytes(b"left by a killed writer")
    assert remove_stale_temporaries(folder / one) == [stale[one]]
    assert not stale[one].exists() and stale[other].exists()
    assert remove_stale_temporaries(folder / "a") == [] and (folder / ".a.4194303.4194303.0badcafe.tmp").exists()


def test_reliability_a_temporary_made_in_another_container_is_not_judged_by_its_process_id(tmp_path, monkeypatch):
    """Two runs writing one output on a shared volume, one of them in another container (another PID namespace) or
    on another machine: its writer's process id is nobody's here, so its temporary was taken for a killed run's and
    removed while it was written (that write failed: 'No such file or directory') => a temporary's name says where
    it was made; one made elsewhere is left alone until nothing has changed it for a day, one made here is judged by
    its process id as before (as is a name without that tag, from an earlier version)"""
    import time

    from moe_base import fileio

    dead_pid = 4194303  # beyond the largest pid: nobody here
    target = tmp_path / "result.json"
    other_here = fileio.here_tag()[::-1] if fileio.here_tag()[::-1] != fileio.here_tag() else "0badcafe"
    elsewhere = tmp_path / f".result.json.{dead_pid}.{other_here}12345678.tmp"
    made_here = tmp_path / f".result.json.{dead_pid}.{fileio.here_tag()}12345678.tmp"
    earlier_version = tmp_path / f".result.json.{dead_pid}.0a1b2c3d.tmp"
    for tmp in (elsewhere, made_here, earlier_version):
        tmp.write_bytes(b"being written")
    assert sorted(fileio.remove_stale_temporaries(target)) == sorted([made_here, earlier_version])
    assert elsewhere.exists()
    fileio.atomic_write(target, b"{}")  # a write of the same output beside it leaves it too
    assert elsewhere.exists() and target.read_bytes() == b"{}"
    day_ago = time.time() - fileio.FOREIGN_STALE_S - 60
    os.utime(elsewhere, (day_ago, day_ago))
    assert fileio.remove_stale_temporaries(target) == [elsewhere] and not elsewhere.exists()
    seen = []
    fileio.atomic_write(target, lambda f: seen.extend(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"))
    assert seen == [f".result.json.{os.getpid()}.{fileio.here_tag()}{seen[0][-12:-4]}.tmp"]
    monkeypatch.setattr(fileio, "_HERE", [])
    monkeypatch.setattr(fileio.os, "readlink", lambda path: "pid:[4026532999]")  # another PID namespace
    assert fileio.here_tag() != seen[0].split(".")[4][:8]


def test_a_name_too_long_for_a_file_system_is_refused_in_words(tmp_path):
    """A name over 255 bytes was a traceback (OSError 'File name too long' from looking at the path) or 'choose a
    folder you can write to'; it is said as what it is."""
    from moe_base.errors import InputError
    from moe_base.fileio import atomic_write, check_folder_takes_files, check_output_file

    name = "é" * 127 + "ab"  # 256 bytes, 129 letters
    for check in (lambda: check_output_file(tmp_path / name), lambda: atomic_write(tmp_path / name, b"x"),
                  lambda: check_folder_takes_files(tmp_path / name / "sub"), lambda: check_output_file(tmp_path / name / "x")):
        with pytest.raises(InputError, match="is 256 bytes; a file name can have at most 255 bytes"):
            check()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_existing_folder_is_filled_never_replaced(tmp_path, overwrite):
    """An existing empty output folder was replaced by the staging folder in one rename: its mode (a setgid team
    folder's group bit), owner and inode were lost, and a container that had mounted it saw a deleted folder. It is
    filled; with ``overwrite`` an old entry is replaced and the rest of the folder kept."""
    from moe_base.fileio import publish_folder, staging_folder

    target = tmp_path / "repo"
    target.mkdir()
    target.chmod(0o2750)
    before = target.stat()
    with staging_folder(target) as staging:
        (staging / "model" / "1").mkdir(parents=True)
        (staging / "model" / "1" / "m.onnx").write_text("new")
        (staging / "README.md").write_text("new")
        publish_folder(staging, target, ["model", "README.md"], overwrite)
    after = target.stat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_gid)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "model"]  # no staging folder left in it
    assert (target / "model" / "1" / "m.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_failed_move_with_overwrite_puts_the_old_model_back(tmp_path, monkeypatch):
    """With ``overwrite`` an old folder is moved aside (into the staging folder) before the new one is moved in: when
    that move fails the old one is put back, and the error says what was already replaced."""
    import moe_base.fileio
    from moe_base.errors import InputError
    from moe_base.fileio import publish_folder, staging_folder

    target = tmp_path / "repo"
    for name in ("a", "b"):
        (target / name).mkdir(parents=True)
        (target / name / "old").write_text("old")
    real = os.rename

    def fails_for_b(src, dst):
        if Path(dst) == target / "b" and Path(src).name == "b":  # the new b; the old one is put back
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(moe_base.fileio.os, "rename", fails_for_b)
    with staging_folder(target) as staging:
        for name in ("a", "b"):
            (staging / name).mkdir()
            (staging / name / "new").write_text("new")
        with pytest.raises(InputError, match=r"No space left on device\); already replaced: a; check that folder"):
            publish_folder(staging, target, ["a", "b"], overwrite=True)
    assert [p.name for p in (target / "a").iterdir()] == ["new"] and [p.name for p in (target / "b").iterdir()] == ["old"]
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]


def test_a_read_only_output_folder_is_refused_not_replaced(tmp_path):
    """An existing folder the user cannot write to (chmod 555), in a folder they can, was replaced by a writable
    folder of the new files (a rename needs only the parent to be writable). It is refused, as every command refuses
    a folder it cannot write to, and stays as it was. Run as the user nobody: root writes to read-only folders."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to run the write as another user (as root a read-only folder is "
                    "writable, and as a user the test cannot make one owned by another)")
    base = Path(tempfile.mkdtemp(prefix="moe-denoise-test-"))  # where nobody can reach it (tmp_path is root's 0700)
    try:
        base.chmod(0o755)
        parent = base / "parent"
        (parent / "repo").mkdir(parents=True)
        for folder in (parent, parent / "repo"):
            os.chown(folder, 65534, 65534)
        (parent / "repo").chmod(0o555)
        before = (parent / "repo").stat()
        code = ("from pathlib import Path\nfrom moe_base.fileio import publish_folder, staging_folder\n"
                f"target = Path({str(parent / 'repo')!r})\n"
                "with staging_folder(target) as staging:\n"
                "    (staging / 'README.md').write_text('new')\n"
                "    publish_folder(staging, target, ['README.md'], overwrite=False)\n")
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert done.returncode != 0
        assert f"cannot write to the folder '{parent / 'repo'}' (Permission denied); choose a folder you can write to" \
            in done.stderr
        after = (parent / "repo").stat()
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        assert list((parent / "repo").iterdir()) == [] and [p.name for p in parent.iterdir()] == ["repo"]
    finally:
        shutil.rmtree(base)


def test_a_loop_of_links_is_named_as_one_not_as_a_link_to_nothing(tmp_path):
    """A link that leads back to itself was said to point at a file 'which does not exist' (as output), and to be
    'no such image file' (as input): it is named as a loop of links now."""
    from moe_base.fileio import is_link_loop, refuse_dangling_link
    from runtime.images import check_input_exists

    (tmp_path / "a.png").symlink_to("b.png")
    (tmp_path / "b.png").symlink_to("a.png")
    (tmp_path / "c.png").symlink_to("nothing.png")
    assert is_link_loop(tmp_path / "a.png") and not is_link_loop(tmp_path / "c.png")
    assert not is_link_loop(tmp_path / "missing.png")
    with pytest.raises(InputError, match=r"a symbolic link to 'b.png', which leads back to itself \(a loop of links\)"):
        refuse_dangling_link(tmp_path / "a.png", overwrite=False)
    with pytest.raises(InputError, match=r"a symbolic link to 'nothing.png', which does not exist"):
        refuse_dangling_link(tmp_path / "c.png", overwrite=False)
    with pytest.raises(InputError, match=r"is a symbolic link that leads back to itself \(a loop of links\), not an image"):
        check_input_exists(tmp_path / "a.png")


def test_a_file_never_replaces_a_folder(tmp_path):
    """With ``overwrite`` an old folder was moved into the staging folder before a new *file* of its name went in, and
    removed with it: a folder named results.md in bench's --out-dir, with all it held, was gone without a word."""
    from moe_base.fileio import publish_folder, staging_folder

    target = tmp_path / "out"
    (target / "results.md").mkdir(parents=True)
    (target / "results.md" / "mine.txt").write_text("keep")
    with staging_folder(target) as staging:
        (staging / "results.json").write_text("{}")
        (staging / "results.md").write_text("new")
        with pytest.raises(InputError, match=r"results.md' is a folder, where a file of that name goes; nothing in"):
            publish_folder(staging, target, ["results.json", "results.md"], overwrite=True)
    assert (target / "results.md" / "mine.txt").read_text() == "keep" and not (target / "results.json").exists()


def test_a_long_name_that_exists_already_is_not_refused(tmp_path, monkeypatch):
    """The 255-byte limit is for names still to be made: one that exists (a folder on NTFS or exFAT, which count
    UTF-16 units, may hold 256 to 765 UTF-8 bytes) was refused as a place to write into."""
    import os

    from moe_base.fileio import refuse_long_names

    long = "日" * 90  # 270 bytes in UTF-8
    with pytest.raises(InputError, match="is 270 bytes; a file name can have at most 255"):
        refuse_long_names(tmp_path / long / "out.png")
    real = os.path.lexists
    monkeypatch.setattr(os.path, "lexists", lambda p: str(p).endswith(long) or real(p))  # as on NTFS (ext4 refuses)
    refuse_long_names(tmp_path / long / "out.png")


def test_a_stop_while_a_folder_is_published_waits_until_every_entry_is_in(tmp_path, monkeypatch):
    """A Ctrl-C between two of publish_folder's renames left a folder with one run's models beside another's; the
    renames now finish first, then the stop acts as it would have."""
    import signal

    import moe_base.fileio as fileio
    from moe_base.fileio import publish_folder, staging_folder

    target = tmp_path / "repo"
    target.mkdir()
    real = fileio._move_entry
    calls = []

    def stopped_after_the_first(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(args[1].name)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # as a Ctrl-C between the two

    monkeypatch.setattr(fileio, "_move_entry", stopped_after_the_first)
    with staging_folder(target) as staging:
        for name in ("a", "b"):
            (staging / name).mkdir()
        with pytest.raises(KeyboardInterrupt):
            publish_folder(staging, target, ["a", "b"])
    assert calls == ["a", "b"] and sorted(p.name for p in target.iterdir()) == ["a", "b"]


HOLD_SCRATCH = """import sys, time
from pathlib import Path
from moe_base.fileio import scratch_folder
with scratch_folder(sys.argv[1], sys.argv[2]) as folder:
    (folder / "graph.onnx").write_bytes(b"half a graph")
    print(folder, flush=True)
    time.sleep(60)
"""


def test_reliability_killed_commands_scratch_folder(tmp_path):
    """export, build or denoise --check-local killed (kill -9, the OOM killer) while its graph or engine under test
    was in a tempfile 'tmpXXXXXXXX' folder, which stayed for good (beside the user's engine, or in the temporary
    folder) => a named scratch folder (.NAME.PID.RANDOM.scratch) that the next run of it removes (a live run's is
    left alone), and its own goes whatever happens"""
    import signal
    import subprocess
    import sys

    from moe_base.fileio import scratch_folder

    def hold(name):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRATCH, name, str(tmp_path)], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[2])
        return proc, Path(proc.stdout.readline().strip())

    killed, left = hold("m.engine")
    live, held = hold("m.engine")
    other_killed, others = hold("n.engine")
    try:
        for proc in (killed, other_killed):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert left.is_dir() and held.is_dir() and others.is_dir()
        assert left.name.startswith(".m.engine.") and left.name.endswith(".scratch")
        with scratch_folder("m.engine", tmp_path) as mine:
            assert mine.is_dir() and not any(mine.iterdir())
            assert not left.exists()  # the killed run's
            assert held.is_dir() and (held / "graph.onnx").exists()  # a live run's
            assert others.is_dir()  # another name's: the next run of that one removes it
        assert not mine.exists()
        with pytest.raises(RuntimeError), scratch_folder("m.engine", tmp_path) as mine:
            raise RuntimeError("the parity run failed")
        assert not mine.exists()
    finally:
        for proc in (killed, live, other_killed):
            proc.kill()
            proc.wait(timeout=30)


def test_reliability_two_writers_of_one_artifact(tmp_path, monkeypatch):
    """Two exports to one path (the default export, whatever --weights; or one -o with --overwrite) at once: their
    renames interleaved, model A, model B, manifest B, manifest A, and A's model stood beside B's manifest, both
    exiting 0 => one writer at a time (a lock beside the file): the model and its manifest are always one run's,
    and no lock file is left"""
    import threading
    import time

    import moe_base.manifest as manifest_module
    from moe_base.manifest import manifest_path, write_artifact

    real = manifest_module.atomic_write_json

    def slow_for_a(path, obj, *args, **kwargs):  # the first writer is slow between its two writes (a slow disk)
        if obj["run"] == "A":
            time.sleep(0.5)
        return real(path, obj, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "atomic_write_json", slow_for_a)
    target = tmp_path / "m.onnx"
    a = threading.Thread(target=write_artifact, args=(target, b"model A", {"run": "A"}))
    a.start()
    time.sleep(0.2)  # A has written its model and waits to write its manifest
    write_artifact(target, b"model B", {"run": "B"})
    a.join()
    run = json.loads(manifest_path(target).read_text())["run"]
    assert target.read_bytes() == f"model {run}".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.manifest.json"]


def test_reliability_two_runs_publishing_into_one_folder(tmp_path, monkeypatch):
    """Two benches of one --out-dir (or visualize -o, triton-repo --overwrite) at once: their files were renamed in
    one by one, interleaved, and results.json of one run stood beside results.md of the other, both saying 'wrote'
    => one run publishes at a time (a lock beside the folder): the files there are all one run's, no lock left"""
    import threading
    import time

    import moe_base.fileio as fileio

    real = fileio._move_entry

    def slow_for_a(new, old, aside, overwrite):  # the first run is slow between its renames (a slow disk)
        real(new, old, aside, overwrite)
        if old.read_text() == "A":
            time.sleep(0.3)

    monkeypatch.setattr(fileio, "_move_entry", slow_for_a)
    out = tmp_path / "results"
    out.mkdir()
    stagings = {}
    for run in ("A", "B"):
        stagings[run] = tmp_path / f".staging-{run}"
        stagings[run].mkdir()
        for name in ("results.json", "results.md"):
            (stagings[run] / name).write_text(run)
    a = threading.Thread(target=fileio.publish_folder, args=(stagings["A"], out, ["results.json", "results.md"]))
    a.start()
    time.sleep(0.1)  # A has moved its results.json and not yet its results.md
    fileio.publish_folder(stagings["B"], out, ["results.json", "results.md"])
    a.join()
    assert len({(out / name).read_text() for name in ("results.json", "results.md")}) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".staging-")) == ["results"]


def test_reliability_links_planted_in_an_output_folder(tmp_path):
    """An output folder from elsewhere (a run folder sent as a tarball) holding a '.lock' link to another file, a
    hard link, or the write probe's name as a link: train wrote its process id over the file linked (exit 2, the
    link gone, nothing to show what happened), export's lock made the file a link named, and train --overwrite ended
    in a FileExistsError traceback on a '.replaced' link (or called the linked folder's files a stranded run) =>
    a .lock that is a link or a hard link is refused naming it (remove it); the other locks and the write probe never
    go through a link; a '.replaced' link is removed, not followed; the files linked are unchanged"""
    from moe_base.fileio import _temporary_stem, folder_lock, writer_lock
    from moe_model.train import REPLACED, check_writable_folder, existing_run, replacing

    victim = tmp_path / "victim" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(InputError, match=r"\.lock is a symbolic link, not this tool's lock file; remove it"):
        with folder_lock(run, "training run", "--out-dir"):
            pass
    (run / ".lock").unlink()
    os.link(victim, run / ".lock")
    with pytest.raises(InputError, match=r"\.lock is a second name of another file \(a hard link\)"):
        with folder_lock(run, "training run", "--out-dir"):
            pass
    (run / ".lock").unlink()

    created = tmp_path / "victim" / "created"
    target = run / "m.onnx"
    (run / f".{_temporary_stem(target.name, 7)}.lock").symlink_to(created)
    with writer_lock(target):
        target.write_bytes(b"model")
    assert not created.exists() and target.read_bytes() == b"model"

    check_writable_folder(run)  # its probe's name is new and random, made with O_EXCL (new_temporary): no link

    other = tmp_path / "other_run"
    other.mkdir()
    (other / "best.json").write_text("{}")
    (run / "best.json").write_text("{}")
    (run / REPLACED).symlink_to(other)
    assert existing_run(run, resume=False, overwrite=True) == ["best.json"]  # not 'a stranded run' of other's files
    with replacing(run, ["best.json"], run / "last.pt"):
        assert (run / REPLACED).is_dir() and not (run / REPLACED).is_symlink()
        assert (run / REPLACED / "best.json").exists()
    assert sorted(p.name for p in other.iterdir()) == ["best.json"]
    assert victim.read_text() == "precious"
