"""moe_base.fileio's small helpers that have no reliability test of their own."""
import hashlib

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
