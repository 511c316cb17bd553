"""Training: the seed recipe by default, resumable, with the best checkpoint chosen on validation loss.

Layout of ``out_dir``:
    last.pt              full training state after the last finished epoch (for --resume), written atomically
    best.safetensors     weights of the epoch with the lowest validation loss
    best.json            config, training settings and command, validation metrics, history
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moe_base.config import PRESETS, ModelConfig, get_preset
from moe_base.errors import CheckpointError, InputError, Interrupted, NoGPUError, TrainingError, signals_held
from moe_base.fileio import check_folder_takes_files, first_missing, folder_lock, remove_if_empty
from moe_base.machine import library_versions
from moe_base.progress import Progress

from .checkpoint import (
    atomic_torch_save,
    origin,
    read_sidecar,
    save_weights,
    sidecar_config,
    sidecar_path,
    torch_load,
    torch_load_reason,
)
from .data import (
    DEFAULT_EVAL_SEED,
    DEFAULT_SIGMA,
    BlindNoise,
    add_noise,
    blind_noisy,
    fixed_noisy,
    load_cifar10,
    to_float,
)
from .losses import LOSSES, total_loss
from .metrics import psnr_per_image
from .model import SmallViT, count_parameters


@dataclass
class TrainConfig:
    """Every setting of a training run (saved with its weights and checked on --resume). The defaults are the seed's
    recipe; ``blind`` switches to the blind noise mixture of ``data.BlindNoise``."""
    data_dir: str
    out_dir: str = "runs/default"
    preset: str = "seed"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    aux_weight: float = 0.01
    grad_clip: float = 1.0
    sigma: float = DEFAULT_SIGMA
    seed: int = 0
    eval_seed: int = DEFAULT_EVAL_SEED
    max_train: int | None = None  # use only the first N training images (smoke tests)
    max_val: int | None = None
    device: str = "auto"
    threads: int | None = None
    init_from: str | None = None  # start from these weights (fine-tuning / a second cosine cycle)
    loss: str = "mse"  # "mse" (the seed's) or "psnr" (mean per-image log-MSE; see losses.reconstruction_loss)
    mse_floor: float = 1e-10  # psnr loss: images better than -10 log10(mse_floor) dB weigh as if at that level
    # blind=True: every image its own noise level over [0, sigma_max] (data.BlindNoise), clipped or not, a share
    # gray; validation uses the same mixture with fixed draws. blind=False: the seed's sigma, clipped.
    blind: bool = False
    sigma_max: float = 75 / 255
    zero_share: float = 0.05
    unclipped_share: float = 0.5
    gray_share: float = 0.25
    bayer_share: float = 0.0

    def noise(self) -> BlindNoise:
        return BlindNoise(self.sigma_max, self.zero_share, self.unclipped_share, self.gray_share, self.bayer_share)

    def validate(self, named: Callable[[str], str] = str) -> None:
        """InputError naming every setting out of its range; ``named`` says a setting's name as the caller's users
        know it (the command line passes '--lr' for 'lr')."""
        bad = []
        if not str(self.out_dir).strip():  # an unset $OUT: the run's files went into the current folder
            bad.append(f"{named('out_dir')} is empty; give the folder for the run's files (e.g. --out-dir runs/try)")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                bad.append(f"{named(name)} must be >= 1 (got {getattr(self, name)})")
        for name in ("lr", "sigma"):
            if not 0 < getattr(self, name) < math.inf:
                bad.append(f"{named(name)} must be a finite number > 0 (got {getattr(self, name)})")
        for name in ("weight_decay", "aux_weight", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                bad.append(f"{named(name)} must be a finite number >= 0 (got {getattr(self, name)})")
        for name in ("max_train", "max_val", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad.append(f"{named(name)} must be >= 1 when given (got {getattr(self, name)}; leave it out for all)")
        if not 0 < self.mse_floor < 1:
            bad.append(f"{named('mse_floor')} must be in (0, 1) (got {self.mse_floor})")
        if self.blind:  # named as the options (the noise's own check said 'zero_share')
            bad += BlindNoise.problems(dataclasses.asdict(self), named)
        if self.loss not in LOSSES:
            bad.append(f"{named('loss')} must be one of {LOSSES} (got {self.loss!r})")
        if bad:
            raise InputError("invalid training settings: " + "; ".join(bad))
        get_preset(self.preset)


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA if torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise InputError(f"--device {device!r} is not a device this toolkit trains on; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPUError(f"--device {device} was asked for but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}); use --device cpu")
    return torch.device(device)


def cosine_lambda(total_steps: int) -> Callable[[int], float]:
    """Cosine decay from 1 to 0 over ``total_steps`` optimizer steps (stepped per iteration)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


@torch.no_grad()
def evaluate_loss(model: SmallViT, noisy: torch.Tensor, clean: torch.Tensor, batch_size: int,
                  device: torch.device) -> dict[str, float]:
    """Pixel MSE and mean / std per-image PSNR of ``model`` on a fixed noisy set (the validation numbers).

    The std is the population std over the images, as ``evaluate`` reports it."""
    model.eval()
    se, psnrs = 0.0, []
    for i in range(0, len(clean), batch_size):
        c = clean[i : i + batch_size].to(device)
        out = model(noisy[i : i + batch_size].to(device))
        se += torch.sum((out - c) ** 2).item()
        psnrs.append(psnr_per_image(out, c).cpu())
    model.train()
    p = torch.cat(psnrs)
    return {"mse": se / clean.numel(), "psnr": p.mean().item(), "psnr_std": p.std(correction=0).item()}


def selection_loss(val: dict[str, float], kind: str) -> float:
    """The validation number the best checkpoint minimises: pixel MSE, or minus the mean PSNR for loss='psnr'."""
    return val["mse"] if kind == "mse" else -val["psnr"]


def train(cfg: TrainConfig, resume: bool = False, progress: bool | str = True, stop_after_epoch: int | None = None,
          command: str | None = None, log: Callable[[str], None] = print, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) and return the final summary. ``stop_after_epoch`` simulates an interruption. ``progress``
    within an epoch: True or 'bar', 'lines' (a line a minute, for logs), False (the epoch lines only).

    A folder that already holds a run is continued with ``resume`` or replaced with ``overwrite``, never replaced
    silently. Raises InputError for bad settings or folders, CheckpointError for an unreadable training state,
    DatasetError for bad data and TrainingError when the loss stops being finite."""
    cfg.validate()
    if resume and overwrite:
        raise InputError("--resume continues the run in --out-dir and --overwrite replaces it: give one of them")
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # recorded as used, so that --resume continues with them: 'auto' and no --threads were saved as such, and a run
    # resumed under another OMP_NUM_THREADS (or on a machine with a GPU) got other weights than the run uninterrupted
    cfg = dataclasses.replace(cfg, device=str(device), threads=torch.get_num_threads())
    out = Path(cfg.out_dir)
    state_path = out / "last.pt"
    existing_run(out, resume, overwrite)  # before the folder is made
    check_init_outside(cfg.init_from, out, overwrite)
    made = first_missing(out)  # the folders making --out-dir creates: removed again if nothing is saved in them
    check_writable_folder(out)
    try:
        # one run at a time in a folder: two at once both reported their own best weights, and the folder held the
        # other's (a run started a moment later found nothing there yet to refuse)
        with folder_lock(out, "training run", "--out-dir"):
            existing = existing_run(out, resume, overwrite)  # again: a run that held the lock may have written one
            with replacing(out, existing if overwrite else [], state_path):
                return _train(cfg, resume, progress, stop_after_epoch, command, log, device, out, state_path)
    except BaseException:
        remove_if_empty(out, made)  # refused or stopped before anything was saved: no empty folders left
        raise


def existing_run(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """The files of a run ``out`` holds; InputError when there are some and neither ``resume`` nor ``overwrite``."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    aside = out / REPLACED
    # the run an --overwrite moved aside is stranded until the new run's training state exists (its best weights
    # come first: a kill between the two left them, and the next --overwrite deleted the old run)
    saved = (out / "last.pt").exists()
    ours = aside.is_dir() and not aside.is_symlink()  # a link there (not made by train) is removed, not followed
    stranded = sorted(p.name for p in aside.iterdir()) if ours and not saved else []
    if stranded:  # a run killed (SIGKILL, out of memory) before it put them back: the next --overwrite deleted them
        partial = [n for n in existing if n != "last.pt"]
        beside = f" (the {', '.join(partial)} in {out} are that run's, without its state)" if partial else ""
        raise InputError(f"{aside} holds a training run ({', '.join(stranded)}) that an --overwrite moved aside and "
                         f"never put back: the run that replaced it was killed before its first epoch was saved"
                         f"{beside}. Move those files back into {out} to keep the old run (then --resume it), or "
                         f"delete {aside} to let it go")
    if existing and not resume and not overwrite:
        raise InputError(f"{out} already holds a training run ({', '.join(existing)}); continue it with --resume, "
                         f"replace it with --overwrite, or choose another --out-dir")
    return existing


RUN_FILES = ("last.pt", "best.safetensors", "best.json")  # a run's own files in its --out-dir


def check_init_outside(init_from: str | None, out: Path, overwrite: bool) -> None:
    """InputError when --init-from is a file of the run --overwrite replaces: moved aside before it was read, it was
    said not to exist (after the data had loaded)."""
    if not (overwrite and init_from):
        return
    init = Path(init_from)
    with contextlib.suppress(OSError):
        if init.name in RUN_FILES and init.exists() and init.resolve().parent == out.resolve():
            raise InputError(f"--init-from {init_from} is a file of the run --overwrite replaces in {out}; copy it "
                             f"elsewhere first (with its .json), then give that copy to --init-from")


REPLACED = ".replaced"  # --overwrite: the old run's files wait here until the new run has saved its first epoch


@contextlib.contextmanager
def replacing(out: Path, names: list[str], state_path: Path) -> Iterator[None]:
    """--overwrite: ``names`` (the old run's files) move aside into ``out/.replaced``, so none of them can be mistaken
    for the new run's; they are deleted once the new run has saved its training state (its first epoch), and put
    back when it stops before that (a Ctrl-C a moment after a mistaken --overwrite deleted the old run)."""
    if not names:
        yield
        return
    aside = out / REPLACED
    if aside.is_symlink() or (aside.exists() and not aside.is_dir()):
        aside.unlink()  # not train's (it makes a folder): a link is removed, never followed
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for name in names:
        os.replace(out / name, aside / name)
    try:
        yield
    except KeyboardInterrupt as e:
        if not state_path.exists():  # said: the old run's 'has finished all 3 epochs' alone read as the new run's
            raise Interrupted.said(e, "; ".join(filter(None, (str(e), f"the --overwrite did not happen: the new run "
                                                                     f"was stopped before its first epoch was saved, "
                                                                     f"and the earlier run in {out} was put back as it "
                                                                     f"was")))) from None
        raise
    finally:
        if not state_path.exists():  # nothing of the new run to continue from: the old run stays as it was
            for name in names:
                os.replace(aside / name, out / name)
        shutil.rmtree(aside, ignore_errors=True)


def _train(cfg: TrainConfig, resume: bool, progress: bool | str, stop_after_epoch: int | None, command: str | None,
           log: Callable[[str], None], device: Any, out: Path, state_path: Path) -> dict[str, Any]:
    st = _state_to_resume(cfg, state_path) if resume else None  # before the data: a wrong folder fails at once
    check_stop_after(stop_after_epoch, cfg.epochs, st["epoch"] if st else 0, out)

    train_u8 = torch.from_numpy(load_cifar10(cfg.data_dir, "train"))[: cfg.max_train]
    val_clean = to_float(load_cifar10(cfg.data_dir, "val")[: cfg.max_val])
    if cfg.blind:
        val_noisy, val_clean, _ = blind_noisy(val_clean, cfg.noise(), torch.Generator().manual_seed(cfg.eval_seed))
    else:
        val_noisy = fixed_noisy(val_clean, cfg.sigma, "clip", cfg.eval_seed)

    torch.manual_seed(cfg.seed)
    model = SmallViT(get_preset(cfg.preset)).to(device)
    if cfg.init_from and not resume:
        warm_start(model, cfg.init_from, log)
    record = run_record(cfg, st, out, command or " ".join(sys.argv))  # what best.json says of the run's making
    with signals_held():  # its first use imports torch._dynamo and triton, whose native code aborted the process
        # (SIGABRT, 'terminate called after throwing nanobind::python_error') when a Ctrl-C arrived during the import
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_u8) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps_per_epoch * cfg.epochs))
    start_epoch, best_loss, history = 0, float("inf"), []

    if resume:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        start_epoch, best_loss, history = st["epoch"], st["best_loss"], st["history"]
        if start_epoch >= cfg.epochs:
            log(f"the run in {out} has finished all {cfg.epochs} epochs; nothing to continue (best val loss "
                f"{best_loss:.6f})")
        else:
            log(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs} (best val loss so far {best_loss:.6f}; "
                f"device {device}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''})")
    else:
        log(f"training preset '{cfg.preset}' ({count_parameters(model):,} parameters) on {len(train_u8):,} images, "
            f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} of {steps_per_epoch} "
            f"step{'s' if steps_per_epoch != 1 else ''}, device {device}, {torch.get_num_threads()} "
            f"thread{'s' if torch.get_num_threads() != 1 else ''}")

    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # data order + noise of this epoch
        perm = torch.randperm(len(train_u8), generator=gen)
        t0, seen, run_loss = time.perf_counter(), 0, 0.0
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", "step", progress, every_s=PROGRESS_LINE_S)
        step = 0
        try:
            for step in range(steps_per_epoch):
                clean = to_float(train_u8[perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]])
                if cfg.blind:
                    noisy, clean, _ = blind_noisy(clean, cfg.noise(), gen)
                else:
                    noisy = add_noise(clean, cfg.sigma, "clip", gen)
                clean, noisy = clean.to(device), noisy.to(device)
                output, routing = model(noisy, return_routing=True)
                loss, mse, aux = total_loss(output, clean, routing, cfg.aux_weight, cfg.loss, cfg.mse_floor)
                if not math.isfinite(loss.item()):
                    kept = (f"the best weights so far are in {out / 'best.safetensors'}" if history
                            else "no weights were written")
                    raise TrainingError(f"training stopped: the loss became {loss.item()} at epoch {epoch + 1}, step "
                                        f"{step + 1} (learning rate {sched.get_last_lr()[0]:.3g}); {kept}. Lower --lr, "
                                        f"or keep --grad-clip on{_raised(cfg)}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                seen += len(clean)
                run_loss += (loss.item() - run_loss) * (0.05 if step else 1.0)
                bar.step(f"loss {run_loss:.5f}, {seen / (time.perf_counter() - t0):.0f} img/s")
        except KeyboardInterrupt as e:  # the partial epoch is lost: said, with what --resume does
            bar.close()
            again = "which --resume does again" if resume or epoch > start_epoch else "lost with it"
            raise Interrupted.said(e, f"epoch {epoch + 1}/{cfg.epochs} had done {step} of {steps_per_epoch} steps, "
                                      f"{again}") from None
        bar.close()
        val = evaluate_loss(model, val_noisy, val_clean, 256, device)
        val["loss"] = selection_loss(val, cfg.loss)
        rec = {"epoch": epoch + 1, "train_loss": run_loss, "val_loss": val["loss"], "val_mse": val["mse"],
               "val_psnr": val["psnr"],
               "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        history.append(rec)
        improved = val["loss"] < best_loss
        with signals_held():  # the weights, their JSON and the state are written whole, or as they were
            if improved:
                best_loss = val["loss"]
                save_weights(model, out / "best.safetensors", {
                    "training": {"settings": dataclasses.asdict(cfg), **record, "epoch": epoch + 1,
                                 "torch": torch.__version__, "versions": library_versions(("torch", "numpy"))},
                    "metrics": {"val_loss": val["loss"], "val_mse": val["mse"], "val_psnr": val["psnr"],
                                "val_psnr_std": val["psnr_std"], "val_loss_is": "mse" if cfg.loss == "mse" else "-psnr",
                                "val_protocol": "blind" if cfg.blind else "clip", "sigma": cfg.sigma,
                                "eval_seed": cfg.eval_seed},
                    "parameters": count_parameters(model),
                    "history": history,
                })
            first = not state_path.exists()
            try:
                atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                                   "epoch": epoch + 1, "best_loss": best_loss, "history": history,
                                   "train_config": dataclasses.asdict(cfg), "record": record}, state_path)
            except InputError as e:  # a full disk: in the first epoch, best weights alone made a run no command
                # could continue (--resume found no state, a new run found a run there)
                if not first:
                    raise _state_not_written(e, state_path, epoch + 1, improved) from e
                for name in ("best.safetensors", "best.json"):
                    (out / name).unlink(missing_ok=True)
                raise InputError(f"{e}; the epoch's best weights were removed again, so nothing of this run is left "
                                 f"in {out} (a run an --overwrite set aside is put back): free space there and start "
                                 f"again") from e
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {run_loss:.5f}  val MSE {val['mse']:.6f}  "
            f"val PSNR {val['psnr']:.2f} dB  {rec['seconds']:.0f}s{'  (best)' if improved else ''}")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            log(f"stopping after epoch {epoch + 1} as asked; continue with --resume")
            break
    return {"out_dir": str(out), "best_val_loss": best_loss, "history": history, "model": model}


def _state_not_written(e: InputError, state_path: Path, epoch: int, improved: bool) -> InputError:
    """The error for a last.pt that could not be written after ``epoch`` (not the first): its write says "nothing was
    changed there", which was false when the epoch had improved, since best.safetensors and best.json had already
    been replaced with its weights. They are kept (they are whole, and the best weights so far); last.pt still holds
    the state after the epoch before, so --resume trains ``epoch`` again, and said so."""
    cause = e.__cause__
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e)
    out = state_path.parent
    if improved:
        done = (f"best.safetensors and best.json in {out} were already written and hold epoch {epoch}'s weights (the "
                f"best so far), but last.pt still holds the state after epoch {epoch - 1}")
    else:
        done = f"nothing in {out} was changed: last.pt still holds the state after epoch {epoch - 1}"
    return InputError(f"writing {state_path} failed ({reason}) after epoch {epoch}; {done}. Free space there (or fix "
                      f"what stopped the write), then --resume --out-dir {out} trains epoch {epoch} again")


def check_stop_after(stop_after_epoch: int | None, epochs: int, done: int, out: Path) -> None:
    """InputError for a --stop-after-epoch the run cannot stop at: past its last epoch (it was ignored in silence),
    or an epoch a resumed run has done already (it ran one more epoch and said it stopped 'as asked')."""
    if stop_after_epoch is None:
        return
    if stop_after_epoch > epochs:
        raise InputError(f"--stop-after-epoch {stop_after_epoch} is past the run's last epoch ({epochs}); leave it out "
                         f"(the run ends there), or give an epoch up to {epochs}")
    if stop_after_epoch <= done < epochs:
        raise InputError(f"the run in {out} has done {done} epoch{'s' if done != 1 else ''} already; "
                         f"--stop-after-epoch {stop_after_epoch} is behind it: give an epoch after {done}, or leave it "
                         f"out to go on to epoch {epochs}")


def run_record(cfg: TrainConfig, st: dict[str, Any] | None, out: Path, command: str) -> dict[str, Any]:
    """How the run was made, for best.json: its first ``command``, the commands that resumed it (``resumed_with``)
    and the weights it started from (``init_from``: checkpoint.origin, hash and chain), taken once when the run
    starts and kept in last.pt. Read again at every best epoch, the start file was hashed as it was then: moved, it
    ended a resumed run after a whole epoch; replaced, the record named the other weights and their chain."""
    if st is not None and "record" in st:
        kept = dict(st["record"])
        kept["resumed_with"] = [*kept.get("resumed_with", []), command]
        return kept
    first = command
    if st is not None:  # a last.pt of an older version: its best.json holds the first command, when there is one
        earlier = read_sidecar(out / "best.safetensors") or {}
        first = (earlier.get("training") or {}).get("command") or command
    made: dict[str, Any] = {"command": first}
    if st is not None and first != command:
        made["resumed_with"] = [command]
    if cfg.init_from:
        try:
            made["init_from"] = origin(cfg.init_from)
        except OSError as e:
            raise CheckpointError(f"the run started from {cfg.init_from}, which cannot be read now ({e.strerror or e}); "
                                  f"its record names that file's hash: put it back, or start a new run") from None
    return made


PROGRESS_LINE_S = 60.0  # in a log, a line within an epoch at most this often
STATE_KEYS = ("model", "optimizer", "scheduler", "torch_rng", "epoch", "best_loss", "history", "train_config")


def _raised(cfg: TrainConfig) -> str:
    """The loss weights set above their defaults, named as suspects of a diverged run (--weight-decay 1e30 was
    answered 'Lower --lr')."""
    defaults = TrainConfig(data_dir="", out_dir="")
    raised = [f"--{n.replace('_', '-')} {getattr(cfg, n):g}" for n in ("weight_decay", "aux_weight")
              if getattr(cfg, n) > getattr(defaults, n)]
    return f"; and this run raised {' and '.join(raised)} above the default" if raised else ""


def _same_file(a: str, b: str) -> bool:
    """Two paths of one file (a run recorded --init-from as typed before it recorded it whole)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _state_to_resume(cfg: TrainConfig, state_path: Path) -> dict[str, Any]:
    """The training state in ``state_path``, after checking that ``cfg`` continues its run unchanged."""
    if not state_path.is_file():
        what = "is not a file (a folder?)" if state_path.exists() else "does not exist"
        raise CheckpointError(f"--resume was given but {state_path} {what}; run without --resume "
                              f"to start, or point --out-dir at the run to continue")
    st = load_training_state(state_path)
    saved = _with_defaults(st["train_config"])
    changed = {k: (saved[k], v) for k, v in dataclasses.asdict(cfg).items()
               if k not in ("out_dir", "data_dir", "device", "threads") and saved[k] != v
               and not (k == "init_from" and saved[k] and v and _same_file(saved[k], v))}
    if changed:
        out = state_path.parent
        longer = (" (the learning-rate schedule spans the run's epochs, so a run continues with its own; to train "
                  f"longer, start a new run with --init-from {out / 'best.safetensors'})") if "epochs" in changed else ""
        raise InputError(f"--resume with different settings than the run in {out}: "
                         + ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in changed.items())
                         + f"{longer}. Leave out what should stay as it was: --resume --out-dir {out} alone "
                           "continues the run with its own settings")
    return st


def saved_settings(out_dir: str | Path) -> dict[str, Any]:
    """The settings the run in ``out_dir`` was started with (from its last.pt; a setting added since has its
    default), for continuing it with only some settings given; {} when there is no last.pt (``train`` then says
    that --resume has nothing to continue)."""
    state_path = Path(out_dir) / "last.pt"
    return _with_defaults(load_training_state(state_path)["train_config"]) if state_path.is_file() else {}


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ``train_config`` with the settings added since the save at their defaults."""
    return {f.name: saved.get(f.name, f.default) for f in dataclasses.fields(TrainConfig)
            if f.name in saved or f.default is not dataclasses.MISSING}


def load_training_state(path: Path) -> dict[str, Any]:
    """A training state saved by ``train``: tensors, numbers, lists and dicts only (``weights_only``: a pickle that
    names code is refused, never run). Raises CheckpointError for anything else."""
    try:
        # on the CPU: the RNG state must stay a CPU ByteTensor; load_state_dict moves the rest to the device
        st = torch_load(path)
    except IsADirectoryError as e:
        raise CheckpointError(f"the training state {path} is a folder, not a file written by 'moe-denoise train'; "
                              f"nothing was changed: move that folder away, or choose another --out-dir") from e
    except OSError as e:  # the file could not be read (permissions, an I/O error): the run in it may be fine, so
        # the advice is to make it readable, not to start again (--overwrite would throw the run away)
        raise CheckpointError(f"cannot read the training state {path}: {e.strerror or e}. Nothing was changed; make "
                              f"it readable (check its permissions and the disk), then run again") from e
    except Exception as e:  # noqa: BLE001 - truncated, random or hostile files all raise something different
        raise CheckpointError(f"cannot read the training state {path}: {torch_load_reason(e)}. It is "
                              f"not a state written by 'moe-denoise train' (or it is damaged); start the run again "
                              f"without --resume (with --overwrite), or choose another --out-dir") from e
    missing = [k for k in STATE_KEYS if not isinstance(st, dict) or k not in st]
    if missing:
        found = f"it lacks {', '.join(missing)}" if isinstance(st, dict) else f"it holds a {type(st).__name__}"
        raise CheckpointError(f"{path} is not a training state written by 'moe-denoise train': {found}; start the "
                              f"run again without --resume (with --overwrite)")
    return st


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed once it is known to take files (:func:`check_folder_takes_files`: its probe never
    goes through a link), before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out-dir {folder} is a file; the run's files go into a folder: give a folder path")
    check_folder_takes_files(folder, "best.safetensors.json")  # the longest name a run writes there
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write to the folder '{folder}' ({e.strerror or e}); choose a folder you can write "
                         f"to") from e


def warm_start(model: SmallViT, path: str, log: Callable[[str], None]) -> None:
    """Start ``model`` from the weights in ``path``, also when ``model`` is a grown version of their architecture.

    A tensor of the same shape is copied. A tensor the model has larger (more output channels of the
    un-embedding, more channels in the head) gets the old values in its leading slice and keeps its fresh
    initialisation elsewhere, except that the old outputs' weights on new inputs are zero (new outputs are read
    only by new inputs of the next layer, which are zero there), so the grown model computes what the file did.
    Tensors the file lacks keep their fresh initialisation (e.g. a new refinement head, whose last layer starts at
    zero so the model first computes what the file did).
    """
    from .checkpoint import ARTIFACT_SUFFIXES, artifact_source, check_not_sidecar, load_state_dict, read_sidecar, verify_weights

    if Path(path).suffix.lower() in ARTIFACT_SUFFIXES:  # it was told to 'pass that with --weights' and how to run it
        source = artifact_source(path)
        raise CheckpointError(f"--init-from {path} is {ARTIFACT_SUFFIXES[Path(path).suffix.lower()][0]}, not weights; "
                              f"training starts from weights (.safetensors or .pt)"
                              + (f": it was made from {source}, give that to --init-from" if source else ""))
    try:  # checked as every other command checks weights (a damaged file was trained from without a word)
        check_not_sidecar(path)
        verify_weights(path, read_sidecar(path), skip=None)  # train has no --skip-weights-check to name
    except CheckpointError as e:
        raise CheckpointError(f"--init-from: {e}") from None
    sd = load_state_dict(path)
    # the architecture first: weights of a larger preset were told their tensors do not fit, not the preset to pass
    check_grows_from(model.config, path)
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k not in own or own[k].ndim != v.ndim
           or any(a < b for a, b in zip(own[k].shape, v.shape))]
    if bad:
        raise CheckpointError(f"--init-from {path}: {len(bad)} tensors do not fit preset '{model.config.name}' "
                              f"(e.g. {bad[:3]}); use weights of the same (or a smaller) architecture")
    grown = []
    with torch.no_grad():
        for k, v in sd.items():
            if own[k].shape == v.shape:
                own[k].copy_(v)
            else:
                own[k][tuple(slice(0, n) for n in v.shape)].copy_(v)
                if _grows_inputs(model, k, v.shape):  # the old outputs do not read the new inputs: same function
                    own[k][: v.shape[0], v.shape[1] :].zero_()  # (new outputs keep their fresh weights)
                grown.append(k)
    missing = sorted(set(own) - set(sd))
    log(f"initialised from {path}" + (f"; grown: {', '.join(grown)}" if grown else "")
        + (f"; newly initialised: {', '.join(missing)}" if missing else ""))


GROWABLE = ("ffn_hidden", "refine_channels", "refine_features", "router_hidden")
"""Architecture fields a warm start may widen (the grown model starts as the function of the file); every other
field must be the file's own."""


def _state_preset(path: str) -> str | None:
    """The preset a training state written by 'moe-denoise train' records, or None (another file, a preset unknown)."""
    if Path(path).suffix.lower() not in (".pt", ".pth"):
        return None
    try:
        preset = load_training_state(Path(path))["train_config"].get("preset")
    except (CheckpointError, AttributeError):  # not a training state: its shapes decide, as before
        return None
    return preset if preset in PRESETS else None


def check_grows_from(config: ModelConfig, path: str) -> None:
    """CheckpointError when the architecture ``path``'s JSON sidecar records is not ``config`` or a widening of it.

    Tensor shapes alone do not tell: the 'seed' and 'residual' presets have the same tensors and compute different
    functions (residual predicts the noise), so --init-from a residual run into the default preset (seed) started
    from weights that computed something else, without a word. A run's training state (last.pt) names its preset
    (it was taken on its shapes); other weights without a sidecar are taken on their shapes."""
    saved = (read_sidecar(path) or {}).get("config")
    says = f"their {sidecar_path(path).name} says so"
    if isinstance(saved, dict):
        theirs = sidecar_config(path, saved)
    else:
        preset = _state_preset(path)
        if preset is None:
            return
        theirs, says = get_preset(preset), "the training state says so"
    differ = [f"{f.name} {getattr(theirs, f.name)!r} (preset '{config.name}': {getattr(config, f.name)!r})"
              for f in dataclasses.fields(ModelConfig) if f.name != "name"
              and (getattr(config, f.name) < getattr(theirs, f.name) if f.name in GROWABLE
                   else getattr(config, f.name) != getattr(theirs, f.name))]
    if differ:
        raise CheckpointError(f"--init-from {path}: these weights were made for the '{theirs.name}' architecture "
                              f"({says}), which preset "
                              f"'{config.name}' neither is nor grows ({'; '.join(differ)}): the model would start "
                              f"from their tensors computing something else. Pass --preset {theirs.name}, or a "
                              f"preset that only widens {', '.join(GROWABLE)}")


def _grows_inputs(model: torch.nn.Module, name: str, old_shape: torch.Size) -> bool:
    """True for the weight of a Linear / Conv (not transposed) whose input dimension (dim 1) grew."""
    module = model.get_submodule(name.rsplit(".", 1)[0])
    transposed = isinstance(module, torch.nn.ConvTranspose2d)
    return (name.endswith("weight") and not transposed and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
            and model.state_dict()[name].shape[1] > old_shape[1])
