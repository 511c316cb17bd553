"""moe_base.fileio's small helpers that have no reliability test of their own."""
import hashlib

import pytest

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


def test_a_folder_lock_refuses_a_second_writer_and_takes_over_a_dead_ones(tmp_path):
    """Two `train` runs into one --out-dir both ran and reported their own weights, and the folder held the other's:
    folder_lock lets one process write a folder; a lock whose process has died is taken over."""
    import os
    import subprocess
    import sys

    from moe_base.errors import InputError
    from moe_base.fileio import LOCK_NAME, folder_lock

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{other.pid}\n")
        with pytest.raises(InputError, match=rf"another training run \(process {other.pid}\) is writing {tmp_path} "
                                             rf"now; wait for it to end \(or stop it\), or choose another --out-dir"):
            with folder_lock(tmp_path, "training run", "--out-dir"):
                pass
        assert (tmp_path / LOCK_NAME).read_text() == f"{other.pid}\n"  # theirs, left alone
    finally:
        other.kill()
        other.wait()
    with folder_lock(tmp_path, "training run", "--out-dir") as lock:  # its process is gone: taken over
        assert lock.read_text() == f"{os.getpid()}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the lock and its temporary are gone


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
