"""moe-denoise triton-repo: every generated config.pbtxt parses with Triton's own ModelConfig schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime import InputError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] (the 'serve' extra) is not installed")
from serving.repo import (  # noqa: E402
    TRT_MODEL,
    RepoSettings,
    check_with_tritonserver,
    parse_model_config,
    pytriton_available,
    write_repository,
)

IO = {"inputs": [{"name": "noisy", "dtype": "float32", "shape": ["batch", 3, 32, 32]}],
      "outputs": [{"name": "denoised", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]}


def fake_artifact(path: Path, manifest: dict) -> Path:
    """An artifact file with a manifest like the toolkit's (the bytes are copied, never parsed, by the writer; their
    size and hash are checked against the manifest, as the runners check them)."""
    import hashlib

    from moe_base.manifest import SCHEMA

    data = b"not really a model, only copied"
    path.write_bytes(data)
    artifact = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    Path(f"{path}.manifest.json").write_text(json.dumps({"schema": SCHEMA, "artifact": artifact, **manifest}))
    return path


@pytest.fixture
def onnx(tmp_path: Path) -> Path:
    return fake_artifact(tmp_path / "m.portable.onnx", {
        "kind": "onnx", "io": IO, "precision": "fp32", "onnx": {"flavor": "portable", "opset": 17},
        "model": {"weights_sha256": "ab" * 32}})


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    return fake_artifact(tmp_path / "m.engine", {
        "kind": "trt-engine", "io": IO, "precision": "fp16", "profile": {"min": 1, "opt": 32, "max": 128},
        "plugin": {"name": "moe_denoise::SparseTopKAttention", "aot": True},
        "tensorrt": {"version": "10.9.0.34", "gpu": "NVIDIA H100", "compute_capability": "9.0"}})


def load(path: Path):
    return parse_model_config(path.read_text())


def test_repository_layout_and_configs_parse_with_tritons_schema(tmp_path, onnx, engine):
    out = tmp_path / "repo"
    report = write_repository(out, onnx, engine, RepoSettings(max_batch=32, queue_delay_us=500, instances=2))
    assert (out / "moe_denoiser" / "1" / "model.onnx").read_bytes() == onnx.read_bytes()
    assert (out / TRT_MODEL / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert report["tensorrt_version"] == "10.9.0.34"

    ort = load(out / "moe_denoiser" / "config.pbtxt")
    assert isinstance(ort, model_config_pb2.ModelConfig)
    assert (ort.name, ort.backend, ort.max_batch_size) == ("moe_denoiser", "onnxruntime", 32)
    assert [(i.name, i.data_type, list(i.dims)) for i in ort.input] == [
        ("noisy", model_config_pb2.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, o.data_type, list(o.dims)) for o in ort.output] == [
        ("denoised", model_config_pb2.TYPE_FP32, [3, 32, 32])]
    assert ort.HasField("dynamic_batching") and ort.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in ort.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]

    trt = load(out / TRT_MODEL / "config.pbtxt")
    assert (trt.name, trt.backend, trt.max_batch_size) == (TRT_MODEL, "tensorrt", 32)
    assert [(g.count, g.kind) for g in trt.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert "10.9.0.34" in (out / TRT_MODEL / "config.pbtxt").read_text()
    readme = (out / "README.md").read_text()
    assert "TensorRT 10.9.0.34" in readme and "tritonserver --model-repository" in readme
    assert "docker run --rm --gpus all" in readme  # an engine needs the GPU
    cpu = write_repository(tmp_path / "cpu", onnx, None, RepoSettings())
    assert cpu["models"] and "--gpus" not in (tmp_path / "cpu" / "README.md").read_text()  # no NVIDIA runtime needed
    assert json.loads((out / TRT_MODEL / "model.plan.manifest.json").read_text())["profile"]["max"] == 128


def test_the_command_writes_the_onnx_model_only_by_default(tmp_path, onnx):
    from moe_denoise.cli import main

    out = tmp_path / "repo"
    assert main(["triton-repo", "--onnx", str(onnx), "-o", str(out), "--onnx-kind", "KIND_GPU"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser"]
    config = load(out / "moe_denoiser" / "config.pbtxt")
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert main(["triton-repo", "--onnx", str(onnx), "-o", str(out)]) == 2  # not empty, no --overwrite
    assert main(["triton-repo", "--onnx", str(onnx), "-o", str(out), "--overwrite"]) == 0


def test_refusals(tmp_path, onnx, engine):
    plugin = fake_artifact(tmp_path / "p.onnx", {"kind": "onnx", "io": IO, "onnx": {"flavor": "plugin"}})
    with pytest.raises(InputError, match="portable"):
        write_repository(tmp_path / "a", plugin)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"x")
    with pytest.raises(InputError, match="no manifest"):
        write_repository(tmp_path / "b", bare)
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    with pytest.raises(InputError, match=r"dir\.onnx' is a folder; pass the file in it"):  # it said 'does not exist'
        write_repository(tmp_path / "b2", folder)
    with pytest.raises(InputError, match="batch profile"):
        write_repository(tmp_path / "c", onnx, engine, RepoSettings(max_batch=256))
    renamed = fake_artifact(tmp_path / "r.onnx", {"kind": "onnx", "io": {"inputs": [{"name": "x"}], "outputs": [{"name": "y"}]},
                                                 "onnx": {"flavor": "portable"}})
    with pytest.raises(InputError, match="contract"):
        write_repository(tmp_path / "d", renamed)
    with pytest.raises(InputError, match="--onnx"):
        write_repository(tmp_path / "e", None, None)
    from moe_base.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"is a TensorRT engine \(its manifest says so\), not an ONNX model"):
        write_repository(tmp_path / "f", engine)  # the two given the wrong way round
    with pytest.raises(ArtifactError, match=r"is an ONNX model \(its manifest says so\), not a TensorRT engine"):
        write_repository(tmp_path / "g", None, onnx)
    described = {k: v for k, v in json.loads(Path(f"{engine}.manifest.json").read_text()).items()
                 if k not in ("schema", "artifact")}
    eight_up = fake_artifact(tmp_path / "e8.engine", {  # written with max_batch_size 64: batches of 1-7 then failed
        **described, "profile": {"min": 8, "opt": 32, "max": 128}})
    with pytest.raises(InputError, match=r"takes batches of 8 tiles or more .* 'moe-denoise build --min-batch 1'"):
        write_repository(tmp_path / "h", onnx, eight_up)
    assert not (tmp_path / "h").exists()


def test_a_model_that_is_not_the_one_its_manifest_describes_is_refused(tmp_path, onnx, engine):
    """triton-repo packaged a text file (beside a copied manifest), a model with a byte appended and an fp16 graph
    under an fp32 manifest, to fail only when Triton loaded them; parity and the runners refused them."""
    from moe_base.errors import ArtifactError

    onnx.write_bytes(onnx.read_bytes() + b"!")
    with pytest.raises(ArtifactError, match="is 32 bytes but its manifest says 31"):
        write_repository(tmp_path / "a", onnx)
    engine.write_bytes(b"X" + engine.read_bytes()[1:])
    with pytest.raises(ArtifactError, match="does not match its manifest: sha256"):
        write_repository(tmp_path / "b", None, engine)
    Path(f"{engine}.manifest.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="holds a JSON list, not an object"):
        write_repository(tmp_path / "c", None, engine)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_broken_config_is_refused_by_the_schema():
    with pytest.raises(InputError, match="does not parse"):
        parse_model_config('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(InputError, match="does not parse"):
        parse_model_config('name: "x"\nno_such_field: 1\n')


@pytest.mark.skipif(not pytriton_available(), reason="PyTriton (the 'serve' extra) is not installed: no tritonserver")
def test_tritonserver_itself_accepts_the_configs_and_rejects_a_broken_one(tmp_path, onnx, engine):
    import os

    # a folder name that is not UTF-8 (tritonserver prints it): its log was decoded strictly, a UnicodeDecodeError
    out = Path(os.fsdecode(bytes(tmp_path) + b"/repo\xff"))
    report = write_repository(out, onnx, engine, server_check=True)
    assert {k: v["verdict"] for k, v in report["tritonserver_check"].items()} == {
        "moe_denoiser": "accepted", TRT_MODEL: "accepted"}
    config = out / "moe_denoiser" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: -1"))
    verdict = check_with_tritonserver(out, ["moe_denoiser"])["moe_denoiser"]
    assert verdict["verdict"] == "rejected" and "max_batch_size" in verdict["detail"]


@pytest.mark.parametrize("argv, message", [
    (["--no-onnx", "--onnx", "m.onnx"], "--onnx m.onnx and --no-onnx contradict each other"),
    (["--trt-instances", "3"], "--trt-instances 3 is for the TensorRT model, and no --engine was given"),
])
def test_options_that_would_be_ignored_are_refused(tmp_path, capsys, argv, message):
    """The command said 'give an ONNX model (--onnx)' when one was given with --no-onnx, and wrote a repository
    without a word about --trt-instances when there was no engine for it."""
    from moe_denoise.cli import main

    assert main(["triton-repo", "-o", str(tmp_path / "repo"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "repo").exists()


def test_without_tritonclient_the_repository_is_written_and_says_it_was_not_checked(tmp_path, onnx, monkeypatch):
    """triton-repo refused to write text files without tritonclient[grpc] (the 'serve' extra, which pins NumPy < 2),
    even with --no-server-check; now the schema check runs when it can, and the report says when it did not."""
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)
    report = write_repository(tmp_path / "r", onnx, server_check=False)
    assert report["checks"] == ["not checked against Triton's schema: tritonclient[grpc] is not installed (pip install "
                                "'moe-denoise[serve]' to have it checked)"]
    assert (tmp_path / "r" / "moe_denoiser" / "config.pbtxt").is_file()
    monkeypatch.undo()
    assert load(tmp_path / "r" / "moe_denoiser" / "config.pbtxt").max_batch_size == 64  # what it wrote does parse


def test_a_queue_delay_of_years_is_refused():
    with pytest.raises(InputError, match=r"queue delay 99,999,999,999,999 us is over 10 s"):
        RepoSettings(queue_delay_us=99_999_999_999_999).validate()


def test_the_queue_delay_option_is_named_and_not_taken_where_it_would_be_ignored(capsys):
    """triton-repo --queue-delay-us -5 said 'queue_delay_us must be an integer >= 0' (serve named the option), and
    serve --no-dynamic-batching --queue-delay-us 100 took the delay, ignored it and reported it as set."""
    from moe_denoise.cli import main

    for command in ("serve", "triton-repo"):
        with pytest.raises(SystemExit):
            main([command, "--queue-delay-us", "-5"])
        assert "argument --queue-delay-us: expected microseconds from 0 to 10000000" in capsys.readouterr().err
    assert main(["serve", "--no-dynamic-batching", "--queue-delay-us", "100"]) == 2
    assert "--no-dynamic-batching turns the batcher off: give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, top", [("instances", 100_000, 64), ("trt_instances", 65, 64),
                                               ("max_batch", 3_000_000_000, 65536)])
def test_counts_beyond_what_serve_takes_are_refused(field, value, top):
    """100000 instances passed (tritonserver's own config check too), and a max_batch past int32 failed in the
    protobuf parse with the whole config text as its message; the bounds are serve's."""
    with pytest.raises(InputError, match=rf"{field} must be an integer in \[1, {top}\]; got {value}"):
        RepoSettings(**{field: value}).validate()
    RepoSettings(**{field: top}).validate()


@pytest.mark.parametrize("option, value, top", [("--max-batch", 100_000, 65536), ("--instances", 65, 64)])
def test_counts_beyond_the_limit_are_named_as_the_options(option, value, top, capsys, tmp_path, onnx):
    """The command said 'max_batch must be an integer in [1, 65536]' of --max-batch 100000."""
    from moe_denoise.cli import main

    assert main(["triton-repo", "--onnx", str(onnx), "-o", str(tmp_path / "r"), option, str(value)]) == 2
    assert f"{option} {value} is over {top}, the most it takes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_folder_another_run_fills_meanwhile_is_not_replaced_without_overwrite(tmp_path, onnx, monkeypatch):
    """Two triton-repo runs into one new folder at once: both said 'wrote', and the later one's models had replaced
    the earlier one's (or it failed with 'Directory not empty'). Without --overwrite the folder is taken in one
    rename or refused."""
    import serving.repo

    out = tmp_path / "repo"
    real = serving.repo.repository_readme

    def the_other_run_finishes_first(report, settings):
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return real(report, settings)

    monkeypatch.setattr(serving.repo, "repository_readme", the_other_run_finishes_first)
    with pytest.raises(InputError, match="was filled while this was being written .* pass --overwrite"):
        write_repository(out, onnx, server_check=False)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]  # the other run's folder, untouched
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_onnx_model_exported_without_a_weights_path_is_packaged(tmp_path):
    """export_onnx(model, path) without weights_path records weights_sha256 null in the manifest; triton-repo
    failed on it with "TypeError: 'NoneType' object is not subscriptable" (a traceback, not a message)."""
    onnx = fake_artifact(tmp_path / "api.onnx", {
        "kind": "onnx", "io": IO, "precision": "fp32", "onnx": {"flavor": "portable", "opset": 17},
        "model": {"weights_file": None, "weights_sha256": None}})
    out = tmp_path / "repo"
    write_repository(out, onnx, server_check=False)
    assert "weights sha256 ?" in (out / "moe_denoiser" / "config.pbtxt").read_text()


def test_overwrite_removes_the_toolkit_model_an_earlier_run_wrote_and_this_one_does_not(tmp_path, onnx, engine):
    """A repository written with --onnx and --engine, then again with --overwrite and --onnx alone, kept the old
    moe_denoiser_trt: Triton served it beside the new model (with the old weights, maybe) while the new README named
    only moe_denoiser. It is removed now (and said); a model of someone else's in the folder stays."""
    out = tmp_path / "repo"
    write_repository(out, onnx, engine, server_check=False)
    (out / "theirs" / "1").mkdir(parents=True)
    report = write_repository(out, onnx, None, overwrite=True, server_check=False)
    assert report["removed"] == [str(out / TRT_MODEL)]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser", "theirs"]
    assert write_repository(out, onnx, None, overwrite=True, server_check=False)["removed"] == []


def test_an_artifact_given_for_the_other_kind_is_told_which_option_takes_it(tmp_path, onnx, engine):
    """An engine given to --onnx (or an ONNX model to --engine) was told the runners' advice, 'run it with
    --backend trt' / 'build an engine from it ... or run it with --backend ort', options triton-repo does not have."""
    from moe_base.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"is a TensorRT engine \(its manifest says so\), not an ONNX model: pass it "
                                         r"with --engine$"):
        write_repository(tmp_path / "a", engine, None, server_check=False)
    with pytest.raises(ArtifactError, match=r"is an ONNX model \(its manifest says so\), not a TensorRT engine: pass it "
                                         r"with --onnx$"):
        write_repository(tmp_path / "b", None, onnx, server_check=False)


def test_an_earlier_model_that_cannot_be_removed_is_said(tmp_path, onnx, engine, monkeypatch):
    """Its removal was rmtree(ignore_errors=True) after the fact: the command printed 'removed' while the model
    stayed, and Triton served it on."""
    import os

    import serving.repo

    out = tmp_path / "repo"
    write_repository(out, onnx, engine, server_check=False)
    real = os.rename

    def refusing(src, dst):
        if ".removed." in str(dst):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(serving.repo.os, "rename", refusing)
    with pytest.raises(InputError, match=rf"the earlier run's {TRT_MODEL} there could not be removed \(Permission "
                                         rf"denied\): Triton would serve it too; remove .*{TRT_MODEL} by hand"):
        write_repository(out, onnx, None, overwrite=True, server_check=False)
    assert (out / TRT_MODEL).is_dir()


def test_numpy_integers_are_taken_as_counts(tmp_path, onnx):
    """np.int64 counts (from a config read with numpy) were refused with 'must be an integer ...; got 2'."""
    import numpy as np

    write_repository(tmp_path / "r", onnx, settings=RepoSettings(max_batch=np.int64(32), instances=np.int64(2)),
                     server_check=False)
    config = load(tmp_path / "r" / "moe_denoiser" / "config.pbtxt")
    assert config.max_batch_size == 32 and config.instance_group[0].count == 2


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_link_to_nothing_given_as_the_repository_is_refused_before_the_work(tmp_path, onnx, overwrite):
    """-o naming a symbolic link to a folder that does not exist failed after the work, as a move that went wrong:
    'No such file or directory' (or 'Not a directory' with --overwrite)."""
    link = tmp_path / "repo"
    link.symlink_to(tmp_path / "nowhere" / "repo")
    with pytest.raises(InputError, match=r"is a symbolic link to '.*nowhere/repo', which does not exist; make that "
                                         r"folder, remove the link"):
        write_repository(link, onnx, overwrite=overwrite)
    assert not (tmp_path / "nowhere").exists() and not list(tmp_path.glob(".repo.*"))  # no folder, no staging


def mount_point(monkeypatch, mount: Path, seen_as_one: bool = True) -> None:
    """``mount`` behaves as a mount point (a docker volume, a Kubernetes volume at /models): it cannot be renamed or
    removed (EBUSY), and nothing is renamed or linked across it (EXDEV)."""
    import errno
    import os

    def inside(p) -> bool:
        p = Path(p).absolute()
        return p == mount or mount in p.parents

    def guard(real):
        def call(src, dst, *args, **kwargs):
            if mount in (Path(src).absolute(), Path(dst).absolute()):
                raise OSError(errno.EBUSY, "Device or resource busy", str(src), None, str(dst))
            if inside(src) != inside(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
            return real(src, dst, *args, **kwargs)
        return call

    real_rmdir = os.rmdir

    def rmdir(path, *args, **kwargs):
        if Path(path).absolute() == mount:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return real_rmdir(path, *args, **kwargs)

    for name in ("rename", "replace", "link"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(os, "rmdir", rmdir)
    if seen_as_one:  # a bind mount of the same file system is not (os.path.ismount compares devices)
        real_ismount = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda p: Path(p).absolute() == mount or real_ismount(p))


@pytest.mark.parametrize("seen_as_one", [True, False])
def test_a_mount_point_is_written_into(tmp_path, onnx, engine, monkeypatch, seen_as_one):
    """The staging folder was made beside the output, so a mount point given as -o (a docker volume, a Kubernetes
    volume at /models) failed after all the work: 'Device or resource busy' when empty, 'Invalid cross-device link'
    with --overwrite. It is staged inside the folder and its entries are renamed in; a bind mount of the same file
    system, which os.path.ismount does not see, is found by a rename that fails across it."""
    out = tmp_path / "models"
    out.mkdir()
    mount_point(monkeypatch, out, seen_as_one)  # not seen as one: found by a rename that fails across it
    write_repository(out, onnx, engine, server_check=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser", TRT_MODEL]
    (out / "my_model").mkdir()
    write_repository(out, onnx, None, RepoSettings(max_batch=8), overwrite=True, server_check=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser", "my_model"]
    assert load(out / "moe_denoiser" / "config.pbtxt").max_batch_size == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["models", onnx.name, f"{onnx.name}.manifest.json",
                                                                 engine.name, f"{engine.name}.manifest.json"])


def test_no_staging_folder_is_made_inside_a_folder_triton_serves_unless_it_is_a_mount_point(tmp_path, onnx,
                                                                                          monkeypatch):
    """Triton takes every folder of its model repository for a model, a hidden one too ('failed to load model
    .moe-denoise...'; with --exit-on-error, the default, the server does not start), so a staging folder left inside
    by a killed run stopped it. An ordinary output folder is staged beside; only a mount point, where nothing else
    can be renamed in, is staged inside."""
    import contextlib

    import moe_base.fileio as fileio

    out = tmp_path / "models"
    out.mkdir()
    seen = []
    real = fileio.staging_folder

    @contextlib.contextmanager
    def spy(target):
        with real(target) as staging:
            seen.append(staging.parent)
            yield staging

    monkeypatch.setattr("serving.repo.staging_folder", spy)
    write_repository(out, onnx, None, server_check=False)
    mount_point(monkeypatch, out)
    write_repository(out, onnx, None, overwrite=True, server_check=False)
    assert seen == [tmp_path, out] and sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser"]


def test_a_real_mount_point_is_written_into(tmp_path, onnx):
    """As test_a_mount_point_is_written_into, on a tmpfs mounted for the test (root only)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    out = tmp_path / "models"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(out)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs (a container without CAP_SYS_ADMIN)")
    try:
        write_repository(out, onnx, None, server_check=False)
        write_repository(out, onnx, None, RepoSettings(max_batch=8), overwrite=True, server_check=False)
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser"]
        assert load(out / "moe_denoiser" / "config.pbtxt").max_batch_size == 8
    finally:
        subprocess.run(["umount", str(out)], check=True)
