"""Self-describing artifacts: every ONNX file / engine has ``<file>.manifest.json`` next to it.

The manifest records what produced the artifact (model config and weights hash, opset, library versions,
precision, plugin, tolerance, parity result) so a runner can refuse an artifact that does not match its
environment, naming both sides.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ArtifactMismatchError, InputError, json_problem, signals_held
from .fileio import atomic_write, atomic_write_json, sha256_file, writer_lock

SCHEMA = "moe-denoise/manifest/1"


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def base_manifest(kind: str, artifact: str | Path, data: bytes) -> dict[str, Any]:
    """The fields every manifest has: schema, kind, creation time, the artifact's name, sha256 and size, the host."""
    return {"schema": SCHEMA, "kind": kind, "created": now_iso(),
            "artifact": {"file": Path(artifact).name, "sha256": sha256_bytes(data), "bytes": len(data)},
            "host": {"python": platform.python_version(), "platform": platform.platform()}}


def check_artifact_output(path: str | Path, overwrite: bool, option: str = "--overwrite",
                          in_cache: bool = False) -> Path:
    """Before any work: the artifact ``path`` can be written (and replaced only with ``overwrite``:
    :func:`moe_base.fileio.check_output_file`), and so can its manifest beside it, which goes with it.
    ``in_cache``: the path is the command's default, in the cache folder, which the message then names."""
    from .fileio import check_output_file

    check_manifest_place(path)
    try:
        return check_output_file(path, overwrite, option)
    except InputError as e:
        if not in_cache:
            raise
        raise InputError(f"{e} (the default output is in the cache folder: set MOE_DENOISE_CACHE to a folder you "
                         f"can write to, or pass -o)") from None


def check_manifest_place(path: str | Path) -> None:
    """InputError when a folder stands where the manifest of the artifact ``path`` goes (``path``.manifest.json), or
    when the manifest's name would be too long for a file system (the export ran, then failed on it)."""
    from .fileio import NAME_MAX, name_bytes

    mpath = manifest_path(path)
    if name_bytes(mpath.name) > NAME_MAX:
        given, whole = name_bytes(Path(path).name), name_bytes(mpath.name)
        raise InputError(f"the output name '{Path(path).name}' is {given} bytes, and its manifest, which goes with it, "
                         f"would be named '{mpath.name}' ({whole} bytes); a file name can have at most {NAME_MAX} "
                         f"bytes: choose a name of at most {NAME_MAX - (whole - given)} bytes (nothing was written)")
    if mpath.is_dir():
        raise InputError(f"'{mpath}' is a folder, where the manifest of '{path}' goes; move it away or choose another "
                         f"output path (nothing was written)")


def write_artifact(path: str | Path, data: bytes, manifest: dict[str, Any], overwrite: bool = True) -> Path:
    """Write the artifact, then its manifest, both atomically. Returns the manifest path. When the manifest cannot
    be written, an artifact that was not there before is removed again (no artifact is left without one).
    ``overwrite=False``: an artifact already at ``path``, or one that appears there while this writes, is never
    replaced (InputError; nothing is written)."""
    path = Path(path)
    check_manifest_place(path)
    mpath = manifest_path(path)
    with writer_lock(path):  # two writers' renames interleaved: one's model beside the other's manifest
        existed = path.exists()
        with signals_held():  # a Ctrl-C / SIGTERM between the two writes left a new model beside its old manifest
            _write_pair(path, data, mpath, manifest, existed, overwrite)
    return mpath


def _write_pair(path: Path, data: bytes, mpath: Path, manifest: dict[str, Any], existed: bool,
                overwrite: bool = True) -> None:
    atomic_write(path, data, overwrite)
    try:
        atomic_write_json(mpath, manifest)
    except BaseException as e:
        if not existed:
            path.unlink(missing_ok=True)
        elif isinstance(e, InputError):  # the new artifact stays, beside the old manifest: said, not hidden
            raise InputError(f"{e}; but {path} was already replaced, and its old manifest does not describe it: the "
                             f"runners will refuse it until it is written again ({remake(path, manifest)})") from e
        raise


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def remake(artifact: str | Path, manifest: Any = None) -> str:
    """How to make ``artifact`` again, as a command to copy: an engine is rebuilt, an ONNX model re-exported, to the
    same path (plain 'moe-denoise export' rewrote the cache's default model alone, and a model of one's own kept
    failing). The settings come from the file's default name or its ``manifest``; where neither tells them, the
    command says which options to add."""
    path = Path(artifact)
    m = manifest if isinstance(manifest, dict) else {}
    made = m.get("model") if isinstance(m.get("model"), dict) else {}
    weights = made.get("weights_file") if isinstance(made.get("weights_file"), str) else None
    precision = m.get("precision") if m.get("precision") in ("fp32", "fp16") else None
    source = m.get("onnx") if isinstance(m.get("onnx"), dict) else {}
    engine = path.suffix.lower() in ENGINE_SUFFIXES
    flags = _default_name_flags(path, engine)
    if flags is not None:  # the cache's default file: the command without -o writes it (and may replace it)
        args = ["build" if engine else "export", *flags]
    elif engine:
        onnx = source.get("file") if isinstance(source.get("file"), str) else None
        args = ["build", "--onnx", onnx or "MODEL.onnx", *(["--precision", precision] if precision else []),
                "-o", str(path), "--overwrite"]
        missing = [said for known, said in ((onnx, "MODEL.onnx being the ONNX model it was built from"),
                                            (precision, "with the --precision it was built with")) if not known]
        if missing:
            return f"rebuild it with: {_command(args)} ({'; '.join(missing)})"
    elif source.get("flavor") in ("portable", "plugin") and precision:
        rewrites = source.get("rewrites")
        chosen = (["--no-optimize"] if rewrites == [] else ["--rewrites", ",".join(map(str, rewrites))]
                  if isinstance(rewrites, list) else [])
        args = ["export", *(["--weights", weights] if weights else []), "--flavor", source["flavor"],
                *(["--precision", precision] if precision != "fp32" else []), *chosen, "-o", str(path), "--overwrite"]
    else:  # no manifest to read the settings from
        return (f"re-export it with: {_command(['export', '-o', str(path), '--overwrite'])} (adding the --weights, "
                f"--flavor and --precision it was made with)")
    if flags is not None and weights and not engine:
        args[1:1] = ["--weights", weights]
    return f"{'rebuild' if engine else 're-export'} it with: {_command(args)}"


def make_it(artifact: str | Path) -> str:
    """How to make a missing ``artifact`` at its path, as a command to copy (an engine missing at its default path
    was told to run 'moe-denoise build --onnx MODEL.onnx', which writes beside MODEL.onnx, and the error came back)."""
    path = Path(artifact)
    engine = path.suffix.lower() in ENGINE_SUFFIXES
    flags = _default_name_flags(path, engine)
    if engine and flags is not None:
        return (f"make it with: moe-denoise export --flavor plugin && {_command(['build', *flags])} (on a machine "
                f"with TensorRT and a GPU)")
    if engine:
        return (f"make it with: {_command(['build', '--onnx', 'MODEL.onnx', '-o', str(path)])} (MODEL.onnx: a graph "
                f"'moe-denoise export --flavor plugin' wrote; on a machine with TensorRT and a GPU)")
    if flags is not None:
        return f"make it with: {_command(['export', *flags])}"
    return (f"make it with: {_command(['export', '-o', str(path)])} (adding the --weights, --flavor and --precision "
            f"you want)")


def _command(args: list[str]) -> str:
    import shlex

    return shlex.join(["moe-denoise", *args])


def _default_name_flags(path: Path, engine: bool) -> list[str] | None:
    """The options of 'moe-denoise export' (or 'build') that write ``path`` without -o, when ``path`` is one of the
    cache's default names (:func:`moe_base.paths.onnx_path`, :func:`moe_base.paths.engine_path`); else None."""
    import re

    from .paths import artifacts_dir

    try:
        if path.resolve().parent != artifacts_dir().resolve():
            return None
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        return None
    if engine:
        found = re.fullmatch(r"moe_denoiser\.plugin\.(fp32|fp16)\.engine", path.name)
        return None if found is None else (["--precision", "fp16"] if found[1] == "fp16" else [])
    found = re.fullmatch(r"moe_denoiser\.(portable|plugin)"
                         r"(?:\.(noopt)|\.(?!fp16\.onnx$)([a-z0-9_]+(?:\+[a-z0-9_]+)*))?(\.fp16)?\.onnx",
                         path.name)
    if found is None:
        return None
    flavor, noopt, rewrites, fp16 = found.groups()
    return ([*(["--flavor", flavor] if flavor != "portable" else []), *(["--precision", "fp16"] if fp16 else []),
             *(["--no-optimize"] if noopt else []), *(["--rewrites", rewrites.replace("+", ",")] if rewrites else [])])


KINDS = {"onnx": "an ONNX model", "trt-engine": "a TensorRT engine"}  # what base_manifest's ``kind`` says
_OTHER_KIND_HINTS = {("onnx", "trt-engine"): "run it with --backend trt",
                     ("trt-engine", "onnx"): "build an engine from it with 'moe-denoise build --onnx {artifact}', or "
                                             "run it as it is with --backend ort"}


def read_manifest(artifact: str | Path, required: bool = True, kind: str | None = None,
                  other_kind_hint: str | None = None) -> dict[str, Any] | None:
    """The manifest next to ``artifact``, validated (a mapping of this schema with a valid artifact entry; with
    ``kind`` ("onnx", "trt-engine"), of that kind: an engine given for an ONNX model is told so, with
    ``other_kind_hint`` as the advice when given (the runners' otherwise: another --backend).

    Raises ArtifactError when it is missing (unless ``required`` is False: then None), unreadable, malformed or
    of another kind."""
    mpath = manifest_path(artifact)
    if not mpath.is_file():
        if required:
            if Path(artifact).name.endswith(".manifest.json"):  # it said "X.manifest.json.manifest.json is missing"
                model = Path(artifact).with_name(Path(artifact).name[:-len(".manifest.json")])
                raise ArtifactError(f"{artifact} is the manifest of {model.name}, not the model itself: pass {model}")
            if Path(artifact).suffix.lower() in (".safetensors", ".pt", ".pth"):
                raise ArtifactError(f"{artifact} is a weights file, not an ONNX model or a TensorRT engine: export "
                                    f"it with 'moe-denoise export --weights {artifact}', or run it with --backend "
                                    f"torch (--weights {artifact}; in Python runtime.TorchRunner('{artifact}'))")
            raise ArtifactError(f"{artifact} has no manifest ({mpath} is missing). Artifacts written by "
                                f"'moe-denoise export' / 'moe-denoise build' always have one; {remake(artifact)}")
        return None
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, or a number of 5,000 digits
        reason = e if isinstance(e, OSError) else json_problem(e)
        raise ArtifactError(f"manifest {mpath} is unreadable: {reason}; {remake(artifact)}") from e
    if not isinstance(m, dict):
        raise ArtifactError(f"manifest {mpath} holds a JSON {type(m).__name__}, not an object; {remake(artifact)}")
    if m.get("schema") != SCHEMA:  # after an upgrade, an artifact of an older version: what to run was not said
        found = f"schema {m['schema']!r}" if "schema" in m else "no 'schema' field"
        raise ArtifactError(f"manifest {mpath} has {found}, and this version of moe-denoise reads {SCHEMA!r}: it was "
                            f"written by another version; {remake(artifact, m)} (with this version)")
    art = m.get("artifact")
    if not (isinstance(art, dict) and isinstance(art.get("sha256"), str) and isinstance(art.get("bytes"), int)):
        raise ArtifactError(f"manifest {mpath} lacks a valid 'artifact' entry (sha256 and bytes of the file it "
                            f"describes); {remake(artifact, m)}")
    problem = _field_problem(m)
    if problem:
        raise ArtifactError(f"manifest {mpath} has {problem}; {remake(artifact, m)} (a manifest edited by hand must "
                            f"keep the fields the toolkit writes)")
    if kind is not None and m.get("kind") != kind:
        found = KINDS.get(m.get("kind"), f"an artifact of kind {m.get('kind')!r}")
        pair = (kind, m.get("kind"))  # remake's text is no template: a '{' in its path was a KeyError
        hint = other_kind_hint or (_OTHER_KIND_HINTS[pair].format(artifact=artifact) if pair in _OTHER_KIND_HINTS
                                   else remake(artifact, m))
        raise ArtifactError(f"{artifact} is {found} (its manifest says so), not {KINDS.get(kind, kind)}: {hint}")
    return m


def _field_problem(m: dict[str, Any]) -> str | None:
    """What is wrong with the fields the runners read (precision, io, model config, tolerance), or None; without this
    a hand-edited value reached the user as a Python traceback. The self-check record is checked where it is used
    (:func:`runtime.parity.self_check`)."""
    if "precision" in m and m["precision"] not in ("fp32", "fp16"):  # what export and build write (no bf16 graph)
        return f"precision {m['precision']!r} (expected fp32 or fp16)"
    for key in ("io", "model", "tolerance", "self_check", "onnx", "plugin", "tensorrt", "profile"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            return f"a {type(m[key]).__name__} as its {key!r} entry (expected an object)"
    for side in ("inputs", "outputs"):
        entries = (m.get("io") or {}).get(side, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                    for e in entries):
            return f"io {side} {entries!r} (expected a list of tensors, each with its name)"
    for key in ("weights_sha256", "weights_file"):
        value = (m.get("model") or {}).get(key)
        if value is not None and not isinstance(value, str):
            return f"model {key} {value!r} (expected text)"
    config = (m.get("model") or {}).get("config")
    if config is not None:
        from .config import ModelConfig

        try:
            ModelConfig.from_dict(config)
        except Exception as e:  # noqa: BLE001 - any value ModelConfig cannot take
            return f"a model config that is not one ({type(e).__name__}: {e})"
    for name, value in (m.get("tolerance") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return f"tolerance {name} {value!r} (expected a number >= 0)"
    return None


def check_artifact_file(artifact: str | Path, manifest: dict[str, Any], data: bytes | None = None) -> None:
    """The file on disk is the one the manifest describes (size and sha256); with ``data`` (the file's contents, read
    once by the caller, who then uses those bytes), ``data`` is."""
    path = Path(artifact)
    if data is None and not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    want = manifest["artifact"]
    size = path.stat().st_size if data is None else len(data)
    if size != want["bytes"]:
        raise ArtifactError(f"{path} is {size} bytes but its manifest says {want['bytes']}: the file is truncated "
                            f"or was replaced; {remake(path, manifest)}")
    got = sha256_file(path) if data is None else sha256_bytes(data)
    if got != want["sha256"]:
        raise ArtifactMismatchError(f"{path} does not match its manifest: sha256 on disk {got[:16]}..., manifest "
                                    f"{want['sha256'][:16]}...; {remake(path, manifest)} (or fix the manifest if you edited the "
                                    f"file on purpose)")


def read_checked(artifact: str | Path, kind: str | None = None, settle_s: float = 0.5,
                 other_kind_hint: str | None = None) -> dict[str, Any]:
    """:func:`read_manifest` and :func:`check_artifact_file` together, for an artifact that is checked and not loaded
    here (:func:`read_checked_data` for one that is loaded): a file and a manifest that do not match are read once
    more after ``settle_s`` seconds, since an export writing the same path puts the model and then its manifest in
    place (two atomic writes, a moment apart); a real mismatch is raised."""
    return _read_checked(artifact, kind, settle_s, other_kind_hint, with_data=False)[0]


def read_checked_data(artifact: str | Path, kind: str | None = None,
                      settle_s: float = 0.5) -> tuple[dict[str, Any], bytes]:
    """:func:`read_checked` for loading an artifact: its manifest and its contents, read once and checked against the
    manifest. Checking the file and then reading it again to load it could load another export's model (written in
    between) under this manifest, and its self-check then failed with 're-export it'."""
    manifest, data = _read_checked(artifact, kind, settle_s, None, with_data=True)
    assert data is not None
    return manifest, data


def _read_checked(artifact: str | Path, kind: str | None, settle_s: float, other_kind_hint: str | None,
                  with_data: bool) -> tuple[dict[str, Any], bytes | None]:
    import time

    def attempt() -> tuple[dict[str, Any], bytes | None]:
        manifest = read_manifest(artifact, kind=kind, other_kind_hint=other_kind_hint)
        data = Path(artifact).read_bytes() if with_data and Path(artifact).is_file() else None
        check_artifact_file(artifact, manifest, data)
        return manifest, data

    try:
        return attempt()
    except ArtifactError:
        time.sleep(settle_s)
        return attempt()


def check_equal(what: str, artifact_value: Any, env_value: Any, hint: str) -> None:
    """Raise ArtifactMismatchError naming both sides (and ``hint``) when the artifact's value differs from this
    environment's."""
    if artifact_value != env_value:
        raise ArtifactMismatchError(f"{what} mismatch: the artifact was built for {artifact_value!r}, this "
                                    f"environment has {env_value!r}. {hint}")
