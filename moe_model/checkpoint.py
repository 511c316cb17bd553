"""Weights on disk: safetensors + a JSON sidecar (config, training settings, metrics), written atomically."""
from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from moe_base.config import PRESETS, ModelConfig, get_preset
from moe_base.errors import CheckpointError, InputError, json_problem, path_error_message, signals_held
from moe_base.fileio import atomic_write, atomic_write_json, sha256_file
from moe_base.manifest import ENGINE_SUFFIXES, read_manifest

from .model import SmallViT


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: SmallViT, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """``path`` (.safetensors) + ``path.json`` with the model config and ``meta``. A Ctrl-C or SIGTERM waits until
    both are written (weights beside the JSON of the weights before them are refused when loaded)."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    with signals_held():
        atomic_write(path, data)
        atomic_write_json(sidecar_path(path), {"config": model.config.to_dict(), "sha256": sha256_file(path), **(meta or {})})


def origin(path: str | Path) -> dict[str, Any]:
    """Where weights came from: their hash, and (from their JSON) the training that made them and its own origin,
    so a warm-started run's JSON carries the whole chain of commands that reproduces it."""
    side = read_sidecar(path) or {}
    out: dict[str, Any] = {"path": str(path), "sha256": sha256_file(path)}
    if "training" in side:
        out["training"] = {k: side["training"][k] for k in ("command", "settings", "epoch") if k in side["training"]}
    if "init_from" in side.get("training", {}):
        out["init_from"] = side["training"]["init_from"]
    return out


ARTIFACT_SUFFIXES = {".onnx": ("an ONNX model", "ort", "OrtRunner"),  # not weights: said, not handed to torch.load
                     **dict.fromkeys(ENGINE_SUFFIXES, ("a TensorRT engine", "trt", "TensorRTRunner"))}


# the option that skips the check, on the command line and in Python (a runner's, and load_model's)
SKIP_CHECK = "--skip-weights-check (verify_weights=False for a runner, verify=False for load_model, in Python)"


def check_not_sidecar(path: str | Path) -> None:
    """CheckpointError when ``path`` is the JSON sidecar of weights beside it (it was called damaged weights)."""
    path = Path(path)
    if path.suffix.lower() == ".json" and path.is_file():
        weights = next((path.with_suffix(s) for s in (".safetensors", ".pt") if path.with_suffix(s).is_file()), None)
        beside = f"pass {weights}" if weights else "pass the .safetensors file it describes"
        raise CheckpointError(f"{path} is the JSON sidecar of weights (their config and record), not the weights: "
                              f"{beside}")


def artifact_source(path: str | Path) -> str | None:
    """The weights file an ONNX model's or engine's manifest names, or None (no manifest, or a damaged one)."""
    try:
        return ((read_manifest(path, required=False) or {}).get("model") or {}).get("weights_file")
    except Exception:  # noqa: BLE001 - a damaged manifest only loses the hint
        return None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a PyTorch state dict (a training state's ``model`` entry is taken).

    Raises CheckpointError for a missing or unreadable file (``.pt`` files are read with ``weights_only``)."""
    path = Path(path)
    check_not_sidecar(path)
    if not path.is_file():
        what = ("is a folder, not a file" if path.is_dir()  # a run folder: its best.safetensors
                else "is not a regular file" if path.exists() else "does not exist")  # /dev/null 'did not exist'
        inside = f" (e.g. {path / 'best.safetensors'})" if (path / "best.safetensors").is_file() else ""
        raise CheckpointError(f"weights file {path} {what}; pass a .safetensors file written by 'moe-denoise "
                              f"train'{inside} or a PyTorch state dict (.pt)")
    if path.suffix.lower() in ARTIFACT_SUFFIXES:
        kind, backend, runner = ARTIFACT_SUFFIXES[path.suffix.lower()]
        source = artifact_source(path)
        made = f"; it was made from {source}: pass that with --weights" if source else ""
        raise CheckpointError(f"{path} is {kind}, not weights (.safetensors or .pt){made}. To run the model itself: "
                              f"--backend {backend} --artifact {path} (denoise, parity, serve; in Python "
                              f"runtime.{runner}('{path}'))")
    try:  # opened here first: safetensors said 'No such file or directory' of a file this user may not read
        path.open("rb").close()
    except OSError as e:
        raise CheckpointError(f"could not read weights {path}: {path_error_message(e, named=False) or e.strerror or e}") from e
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch_load(path)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        reason = torch_load_reason(e) if path.suffix != ".safetensors" else f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError), path.open("rb") as f:
            if path.suffix == ".safetensors" and f.read(2) == b"PK":  # a zip: what torch.save writes
                reason = "it is a PyTorch file (torch.save), not safetensors: rename it to .pt"
        raise CheckpointError(f"could not read weights {path}: {reason}. Pass a .safetensors file "
                              f"written by 'moe-denoise train' or a state dict of tensors saved with torch.save") from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # a training-state checkpoint
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, expected a state dict")
    return sd


class ExpandsTooFar(ValueError):
    """A zip archive whose records would expand far beyond the file (compressed; torch.save stores them as they are)."""


def torch_load(path: str | Path) -> Any:
    """``torch.load`` of a file from anywhere: on the CPU, tensors, numbers and containers only (``weights_only``: a
    pickle that names code is refused, never run), and an archive whose records expand to more than 4 times the file
    (plus 64 MiB) refused before any is read (:class:`ExpandsTooFar`): torch.save stores its records uncompressed,
    and a 3 MB archive of deflated zeros took 3.4 GB before it was found not to fit."""
    import zipfile

    size, expanded = Path(path).stat().st_size, 0
    with contextlib.suppress(zipfile.BadZipFile, OSError):  # not a zip (an older torch.save), or a damaged one:
        with zipfile.ZipFile(path) as archive:  # torch says what is wrong with it
            expanded = sum(info.file_size for info in archive.infolist())
    if expanded > 4 * size + 64 * 2**20:
        raise ExpandsTooFar(f"its records expand to {expanded / 2**30:.1f} GiB from a file of {size / 2**20:.1f} MiB "
                            f"(compressed: torch.save stores them as they are); refused before reading them")
    return torch.load(path, map_location="cpu", weights_only=True)


def torch_load_reason(e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a line. torch's own text for a pickle that names
    other objects advises weights_only=False, i.e. running the file's code: that advice is not passed on."""
    text = str(e)
    if isinstance(e, ExpandsTooFar):
        return text
    if isinstance(e, (KeyError, EOFError)) or (type(e).__name__ == "UnpicklingError"
                                               and "Weights only load failed" not in text):  # bytes that are no pickle
        return f"it is not a file torch.save wrote ({type(e).__name__}: {text[:100] or 'empty'})"
    if "failed finding central directory" in text or "failed reading zip archive" in text:
        return "the file is cut short or damaged (not a whole zip archive, which torch.save writes)"
    if "Weights only load failed" not in text:
        return f"{type(e).__name__}: {textwrap.shorten(text, 300, placeholder=' ...')}"
    if "can still be loaded" in text:
        return "it holds objects other than tensors, and loading those could run code (refused)"
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1]
    else:  # torch >= 2.6 words it as advice to load with weights_only=False, then the reason, a blank line apart
        detail = text.split("trusted source.", 1)[-1] if "trusted source." in text else ""
    detail = detail.split("Check the documentation", 1)[0].strip()
    if "weights_only" in detail:  # never pass on the advice to run the file's code
        detail = ""
    if "GLOBAL" in detail:
        return f"it holds objects other than tensors, and loading those could run code (refused: {detail[:200]})"
    return f"it is not a file torch.save wrote ({detail[:200] or 'unreadable'})"


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The JSON sidecar of ``path`` (config, sha256, training record), None when there is none; CheckpointError
    when it is not valid JSON."""
    side = sidecar_path(path)
    try:
        if not side.is_file():
            return None
        data = json.loads(side.read_text())
    except (ValueError, RecursionError) as e:  # ValueError: not JSON, or a number of 5,000 digits
        raise CheckpointError(f"sidecar {side} is not valid JSON: {json_problem(e)}; restore it, or move it away and "
                              f"pass --preset (preset= in Python)") from e
    except OSError as e:  # no read permission: a traceback before
        raise CheckpointError(f"sidecar {side} cannot be read ({e.strerror or e}); make it readable") from None
    # a list, text or number (hand-edited, or another file under that name) ended in an AttributeError traceback
    if data is not None and not isinstance(data, dict):
        raise CheckpointError(f"sidecar {side} holds a JSON {type(data).__name__}, not the object 'moe-denoise "
                              f"train' writes (config, sha256, training); restore it, or move it away and pass "
                              f"--preset (preset= in Python)")
    return data


def verify_weights(path: str | Path, side: dict[str, Any] | None, skip: str | None = SKIP_CHECK) -> None:
    """The weights file must have the sha256 its sidecar records (when it records one): damaged or replaced
    tensors would otherwise denoise into garbage without a word. ``skip``: the option that takes them anyway, named
    in the refusal (None for a caller that has none, such as train's --init-from)."""
    expected = (side or {}).get("sha256")
    if not expected:
        return
    if not isinstance(expected, str):  # compared as text: a number ended in a TypeError traceback
        raise CheckpointError(f"{sidecar_path(path).name} records sha256 {expected!r}, not a hash (hex text): it "
                              f"was edited or damaged. Restore it"
                              + (f", or pass {skip} to use {path} anyway" if skip else ""))
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"weights {path} do not match the sha256 recorded in {sidecar_path(path).name} "
                              f"({actual[:16]}... instead of {expected[:16]}...): the file is damaged or was replaced, "
                              f"or a training run was killed between writing it and its JSON (--resume that run "
                              f"writes both again). Use the original file (reinstall, or retrain)"
                              + (f", or pass {skip} to use it anyway, knowingly" if skip else ""))


def fitting_presets(sd: dict[str, torch.Tensor]) -> list[str]:
    """Presets whose parameter names and shapes are exactly those of ``sd``."""
    fits = []
    for name, config in PRESETS.items():
        own = SmallViT(config).state_dict()
        if set(own) == set(sd) and all(tuple(own[k].shape) == tuple(sd[k].shape) for k in own):
            fits.append(name)
    return fits


def presets_hint(sd: dict[str, torch.Tensor]) -> str:
    """What to pass for weights whose architecture is not known: the presets their tensors fit, or that none does."""
    fits = fitting_presets(sd)
    if not fits:
        return f"their tensors fit none of the presets ({', '.join(sorted(PRESETS))}): they are not weights of this model"
    if len(fits) == 1:
        return f"their tensors fit the preset {fits[0]}: pass --preset {fits[0]} (preset='{fits[0]}' in Python)"
    return (f"their tensors fit the presets {', '.join(fits)}: pass {' or '.join(f'--preset {n}' for n in fits)} "
            f"(preset= in Python), the one they were trained as (the same tensors, computed differently)"
            f"{'; the seed checkpoint is --preset seed' if 'seed' in fits else ''}")


def sidecar_config(path: str | Path, saved: Any) -> ModelConfig:
    """The architecture a weights file's sidecar records (``saved``: its ``config``); CheckpointError naming the
    sidecar when it is damaged or edited."""
    try:
        return ModelConfig.from_dict(saved)
    except InputError as e:  # said with the file it is in
        raise CheckpointError(f"the config in {sidecar_path(path)} is damaged or edited: {e}; restore it, or move it "
                              f"away and pass --preset (preset= in Python)") from None


def load_model(path: str | Path, preset: str | None = None, impl: str = "masked", verify: bool = True,
               architecture: Mapping[str, Any] | None = None) -> SmallViT:
    """Rebuild a model from weights. The architecture comes from ``preset`` if given, else the JSON sidecar, else
    ``architecture`` (a ModelConfig dict recorded elsewhere: the ``model.config`` of the manifest of an ONNX model or engine
    exported from these weights, whose hash it checked).

    The sha256 the sidecar records is checked unless ``verify`` is False. Raises CheckpointError for a missing,
    unreadable, damaged or misfitting file, naming the presets the tensors fit when the architecture is unknown."""
    sd = load_state_dict(path)
    side = read_sidecar(path)
    if verify:
        verify_weights(path, side)
    if preset is not None:
        config = get_preset(preset)
        own = (side or {}).get("config")
        if own and sidecar_config(path, own).to_dict() != config.to_dict():  # tensors that fit are not enough
            raise CheckpointError(f"weights {path} were made for the '{own.get('name')}' architecture (their "
                                  f"{sidecar_path(path).name} says so), and --preset {preset} is another one: its "
                                  f"network would take their tensors and compute something else. Leave --preset out "
                                  f"(preset=None in Python) to use theirs")
        if not own and architecture is not None and ModelConfig.from_dict(dict(architecture)).to_dict() != config.to_dict():
            raise CheckpointError(f"the model exported from weights {path} was made for the "
                                  f"'{architecture.get('name')}' architecture (its manifest says so), and --preset "
                                  f"{preset} is another one: the reference would compute something else. Leave "
                                  f"--preset out (preset=None in Python) to use the manifest's")
    elif side and "config" in side:
        config = sidecar_config(path, side["config"])
    elif architecture is not None:
        config = ModelConfig.from_dict(dict(architecture))
    else:
        raise CheckpointError(f"weights {path} come without {sidecar_path(path).name}, which names their "
                              f"architecture; {presets_hint(sd)}")
    try:
        with torch.device("meta"):  # names and shapes first, in no memory: a sidecar's config of dim 40000 (hostile,
            # or damaged) had 6.5 GB allocated for its model, ending in a traceback, before any tensor was compared
            SmallViT(config, impl=impl).load_state_dict(sd, strict=True, assign=True)  # assigned: nothing copied
    except RuntimeError as e:  # a sidecar's own architecture was checked above: no sidecar, or a damaged one
        hint = presets_hint(sd)
        lines = str(e).strip().splitlines()  # torch's: a heading, then one line per mismatched tensor
        detail = lines[1].strip() if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise CheckpointError(f"weights {path} do not fit the '{config.name}' architecture ({detail[:200]}); "
                              f"{hint}") from e
    with torch.random.fork_rng(devices=[]):  # its random start, overwritten at once, drew from the caller's seeded
        model = SmallViT(config, impl=impl)  # torch generator: a script's random numbers changed by loading weights
    model.load_state_dict(sd, strict=True)
    return model.eval()
