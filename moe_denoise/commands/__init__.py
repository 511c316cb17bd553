"""Subcommands of ``moe-denoise``; shared argument helpers."""
from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

from moe_base.errors import InputError

DEFAULT_DATA_DIR = "../shared/data/cifar-10-batches-py"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every subcommand's help formatter: an option's default follows its help, unless the help already says it
    (``default: ...``) or there is none worth showing (``None``: the help says what happens; a flag's ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text.lower():
            return text
        return super()._get_help_string(action)

    # a path is never broken across lines ('$MOE_D' / 'ENOISE_CACHE/...' could not be copied); a long one overflows
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_long_words=False, break_on_hyphens=False)


def nonempty(text: str) -> str:
    """argparse type: a path as written, refused when empty (an unset variable in a script: ``-o "$OUT"`` became
    '.', the current folder, and with --overwrite a photo was replaced by its own output)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({text!r}; an unset variable?); give a file or folder path")
    return text


def path_arg(text: str) -> Path:
    """argparse type: a path (:func:`nonempty`)."""
    return Path(nonempty(text))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, sizes, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def thread_count(text: str) -> int:
    """argparse type: CPU threads, 1 to 4x this machine's CPUs (more only wait their turn; thousands were refused by
    the OpenMP runtime or exhausted memory, and the message blamed the weights)."""
    from moe_base.machine import too_many_threads

    value = positive_int(text)
    problem = too_many_threads(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def parity_count(text: str) -> int:
    """argparse type: the images of a parity check, 1 to runtime.parity.MAX_PARITY_IMAGES."""
    from runtime.parity import MAX_PARITY_IMAGES

    value = positive_int(text)
    if value > MAX_PARITY_IMAGES:
        raise argparse.ArgumentTypeError(f"a parity check takes at most {MAX_PARITY_IMAGES:,} images (got {value:,}); "
                                         f"more adds time and memory, not confidence")
    return value


def whole_number(text: str, lo: int | None, hi: int | None, expected: str) -> int:
    """``text`` as an integer in [lo, hi] (None: no bound on that side), or ArgumentTypeError "expected
    ``expected``, got ``text``" (the words a type gives for its range)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def number(text: str) -> float:
    """argparse type: a finite number, in any form float() reads (0.7, 1e-3); its range is the command's to check,
    with the option's meaning in the message. A word was refused in argparse's terse 'invalid float value'."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number (e.g. 0.7 or 1e-3), got {text!r}")
    return value


def level_255(text: str) -> float:
    """argparse type: a noise level on the 0-255 scale (25: std 25/255 on [0, 1] pixels), as a number; its range is
    the command's to check. A fraction (25/255, as --sigma takes it) was refused as 'expected a number (e.g. 0.7 or
    1e-3)', two examples the option refuses: it gets the level to write instead."""
    num, slash, den = text.partition("/")
    if slash:
        try:
            value = float(num) / float(den) * 255
        except (ValueError, ZeroDivisionError):
            value = math.nan
        if math.isfinite(value):
            raise argparse.ArgumentTypeError(f"levels here are on the 0-255 scale: for {text} write {value:.6g}")
    try:
        return number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a noise level on the 0-255 scale (e.g. 25), got {text!r}") from None


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (photo_finetune --lr -1 reached torch's 'Invalid learning rate')."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def whole(text: str) -> int:
    """argparse type: a whole number, any sign (its range is the command's to check, as for :func:`number`)."""
    return whole_number(text, None, None, "a whole number")


SEED_MAX = 2**31 - 1  # torch and numpy take any seed up to here (beyond 2**63 torch failed with a traceback)


def seed_number(text: str) -> int:
    """argparse type: a random seed, a whole number from 0 to SEED_MAX (numpy's generators take no negative seed)."""
    return whole_number(text, 0, SEED_MAX, f"a seed, a whole number from 0 to {SEED_MAX} (e.g. 0)")


def tile_overlap(text: str) -> int:
    """argparse type: the overlap of neighbouring 32x32 tiles, 0 to 31 pixels."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels from 0 to 31, got {text!r}") from None
    if not 0 <= value < 32:
        raise argparse.ArgumentTypeError(f"expected a tile overlap from 0 to 31 pixels (tiles are 32x32; 16 is the "
                                         f"default, 8 faster, 0 plain stitching), got {value}")
    return value


def noise_std(text: str) -> float:
    """argparse type: a noise std on [0, 1] pixels, written as a number (0.1) or as levels of 255 (25/255).

    Over 1 is refused with the fraction to write instead: a level meant on the 0-255 scale (``--sigma 25``) would
    otherwise be taken as 25 times the whole range of the pixels.
    """
    num, slash, den = text.partition("/")
    try:
        value = float(num) / float(den) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected the noise std on [0, 1] pixels, >= 0, as a number (e.g. 0.1) "
                                         f"or as levels of 255 (e.g. 25/255); got {text!r}")
    if value > 1:
        meant = (f"; a level on the 0-255 scale is written {value:g}/255 (= {value / 255:.4g})" if value <= 255 else
                 ", and over 255 it is no level on the 0-255 scale either: give a std from 0 to 1 (e.g. 0.1 or "
                 "25/255)")
        raise argparse.ArgumentTypeError(f"{text} is over 1 (the noise std on [0, 1] pixels is at most 1){meant}")
    return abs(value)  # -0 is 0 (numpy refuses a negative zero scale)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: a free one, chosen when the server starts)."""
    return whole_number(text, 0, 65535, "a port number from 0 to 65535 (0: a free port)")


def queue_delay(text: str) -> int:
    """argparse type: the dynamic batcher's queue delay, 0 to 10 s in microseconds (the bound of serve and
    triton-repo, named as the option: triton-repo said 'queue_delay_us must be ...')."""
    return whole_number(text, 0, 10_000_000, "microseconds from 0 to 10000000 (10 s; default 500)")


def pixel_count(text: str) -> int:
    """argparse type: a number of pixels >= 1, written as 200000000, 2e8 or 200_000_000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels such as 200000000 or 2e8, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1, got {text!r}")
    return int(value)


def seconds(text: str) -> float:
    """argparse type: a duration in seconds, finite and > 0 (timeouts, deadlines, budgets)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 (e.g. 60), got {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: cpu, cuda or cuda:N (the torch backend's devices)."""
    if text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def add_weights_args(p: argparse.ArgumentParser, default: str = "blind") -> None:
    p.add_argument("--weights", type=path_arg, default=None,
                   help="weights: a .safetensors file with its .json, a PyTorch state dict (.pt), or the name of "
                        f"shipped weights: blind (every noise level) or sigma20 (the specialist for sigma 0.2); "
                        f"default: {default}")
    from moe_base.config import PRESETS

    p.add_argument("--preset", default=None, choices=sorted(PRESETS),  # refused by name, before any work
                   help="architecture preset for weights without a JSON sidecar (e.g. 'seed' for the seed "
                        "checkpoint); default: read from the sidecar")
    p.add_argument("--skip-weights-check", action="store_true",
                   help="use weights whose sha256 differs from the one their JSON sidecar records (damaged or "
                        "edited files are refused without it)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=path_arg, default=Path(DEFAULT_DATA_DIR),
                   help="the CIFAR-10 'cifar-10-batches-py' folder (default: ../shared/data/cifar-10-batches-py, "
                        "relative to the current folder)")


def add_split_arg(p: argparse.ArgumentParser) -> None:
    """--split: which CIFAR-10 images (moe_model.data.SPLITS; not imported here, so `--help` stays light)."""
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="CIFAR-10 images: test (the test batch), val (the last 5,000 of the training batches, which "
                        "'train' holds out) or train (the rest)")


def check_output_suffix(path: Path | None, suffixes: tuple[str, ...], what: str) -> None:
    """-o names a file of the kind the command writes (checked before any work; None: the command's own path)."""
    if path is not None and path.suffix.lower() not in suffixes:
        if path.is_dir():  # a folder, '-o .' and '-o /' included ('-o /tmp' suggested '/tmp.onnx')
            raise InputError(f"-o {path} is a folder; this writes {what}: give a file name ending in "
                             f"{' or '.join(suffixes)} (e.g. {path / ('model' + suffixes[0])})")
        base = path.name[:-len(".manifest.json")] if path.name.lower().endswith(".manifest.json") else ""
        example = (path.with_name(base) if Path(base).suffix.lower() in suffixes  # the manifest's name
                   else path.with_name("model" + suffixes[0]) if path.name.lower() in suffixes  # '.onnx' alone
                   else path.with_suffix(suffixes[0]))
        raise InputError(f"-o {path}: this writes {what}; give a name ending in {' or '.join(suffixes)} (e.g. "
                         f"{example})")


@contextlib.contextmanager
def json_when_refused(as_json: bool, out: Path, command: str) -> Iterator[None]:
    """With --json, a failed parity gate prints its report as JSON too (``written`` false), as 'parity --json' does;
    the error then goes on to stderr and the exit code as without --json (stdout was empty)."""
    from moe_base.errors import ParityError

    try:
        yield
    except ParityError as e:
        if as_json and e.report is not None:
            from moe_denoise.cli import error_document, print_json

            print_json(error_document(str(e).splitlines()[0], command, 1, written=False, output=str(out),
                                      parity=e.report.to_dict()))
        raise


def step_log(quiet: bool) -> Callable[[str], None]:
    """Where export's and build's step lines go: standard error, as every command's progress (on standard output, a
    reader gone, '| head', or a full log file stopped the export before it wrote the model); nowhere with --json."""
    return (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr))


def resolve_weights(path: Path | None) -> Path:
    """--weights: a file, the name of shipped weights ("blind", "sigma20"), or None for the default (blind)."""
    from runtime.torch_runner import resolve_weights as resolve

    return resolve(path, option="--weights")


def load_model_from_args(args: argparse.Namespace, impl: str = "masked"):
    from moe_model.checkpoint import load_model

    return load_model(resolve_weights(args.weights), preset=args.preset, impl=impl,
                      verify=not getattr(args, "skip_weights_check", False))


BACKENDS = ("torch", "ort", "trt")


IMPL_CHOICES = ("masked", "gather", "seed", "triton")
"""moe_model.attention.IMPLS and the Triton kernel's (topk_attention.torch_op.IMPL_NAME), named here without importing
torch (--help stays light); a test holds them equal. '--impl foo' was refused by the runner, after the weights had
loaded, without naming the option."""


def add_backend_args(p: argparse.ArgumentParser, required: bool = False, default_impl: str = "masked") -> None:
    p.add_argument("--backend", choices=BACKENDS, required=required, default=None if required else "torch",
                   help="torch: the PyTorch model; ort: an ONNX model in ONNX Runtime; trt: a TensorRT engine")
    p.add_argument("--artifact", type=path_arg, default=None,
                   help="ONNX model (ort) or engine (trt); defaults: for ort the portable model 'moe-denoise "
                        "export' writes ($MOE_DENOISE_CACHE/artifacts/moe_denoiser.portable.onnx), for trt the fp32 "
                        "plugin engine 'moe-denoise build' writes (.../moe_denoiser.plugin.fp32.engine)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider (cuda/tensorrt need onnxruntime-gpu)")
    p.set_defaults(impl_default=default_impl)  # for check_backend_options: was --impl given?
    p.add_argument("--impl", default=default_impl, choices=IMPL_CHOICES,
                   help="torch backend: attention implementation (masked: the definition; gather: the seed's top-k "
                        "formulation; seed: the seed's code path; triton: the Triton kernel, CUDA)")
    p.add_argument("--device", type=device_name, default="cpu", help="torch backend device (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=thread_count, default=None, help="CPU threads (torch / ONNX Runtime)")
    p.add_argument("--opt-level", default="all", choices=["disable", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level")
    p.add_argument("--cuda-graph", action="store_true",
                   help="torch (on CUDA) and trt backends: capture a CUDA graph per batch bucket, checked against the "
                        "uncaptured call before use, and replay it")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="torch backend: compute precision (inputs and outputs stay fp32); fp16/bf16 are judged by "
                        "PSNR against fp32. On CUDA they are faster; on the CPU several times slower (for checking "
                        "their numbers)")


def check_artifact_weights(args: argparse.Namespace, artifact: Path) -> None:
    """--weights given with --backend ort / trt: the artifact must have been made from them (its manifest's hash),
    else they would be ignored in silence. A missing or damaged manifest is left to the runner to refuse."""
    from moe_base.errors import ArtifactMismatchError, ToolkitError
    from moe_base.manifest import read_manifest
    from runtime.base import weights_label
    from runtime.torch_runner import artifact_weights

    if getattr(args, "weights", None) is None:
        return
    try:
        manifest = read_manifest(artifact, required=False)
    except ToolkitError:
        return
    try:
        artifact_weights(artifact, manifest, args.weights, "--weights")
    except ArtifactMismatchError as e:
        made = (manifest or {}).get("model") or {}
        source = made.get("weights_file")
        w = args.weights
        if args.artifact is None:  # the default artifact: made again from them, in its place
            remedy = (f"make the default export from them (moe-denoise export --weights {w})" if args.backend == "ort"
                      else f"make the default plugin export and engine from them (moe-denoise export --flavor plugin "
                           f"--weights {w}, then moe-denoise build)")
        else:
            remedy = (f"export them (moe-denoise export --weights {w} -o NAME.onnx) and pass --artifact NAME.onnx"
                      if args.backend == "ort" else "export them with --flavor plugin and build an engine of that "
                      "(moe-denoise build --onnx NAME.onnx), then pass --artifact NAME.engine")
        made_from = weights_label(source, made.get("weights_sha256")) if source else "another file"  # with the hash:
        # an export of 'blind' before an upgrade replaced them was 'made from other weights (blind)'
        raise InputError(f"--weights {w} was given, but --backend {args.backend} runs {artifact}, which was made from "
                         f"other weights ({made_from}); to run {w}, {remedy}; or leave --weights out") from e


def note_stale_default(args: argparse.Namespace, artifact: Path, remake: str) -> None:
    """A note (once a command) when the default artifact was exported from the default weights as they were then,
    and those have changed since (an upgrade: the blind weights became the default, where the sigma20 specialist
    had been): it runs the old model, and ``remake`` (the commands) makes it again from the weights of today."""
    from moe_base.fileio import holds
    from runtime.base import artifact_made_from, weights_label
    from weights import DEFAULT_WEIGHTS

    if getattr(args, "said_stale_default", False):  # said once: serve makes a runner per model instance
        return
    made = artifact_made_from(artifact)
    if not made.get("weights_sha256"):
        return
    if Path(made["weights"]).resolve() != DEFAULT_WEIGHTS.resolve() or holds(DEFAULT_WEIGHTS, made["weights_sha256"]):
        return
    args.said_stale_default = True
    print(f"note: {artifact} was exported from the default weights as they were then "
          f"({weights_label(made['weights'], made['weights_sha256'])}); the default weights have changed since (an "
          f"upgrade), and this runs the old model: {remake} makes it from today's", file=sys.stderr)


def runner_options_given(args: argparse.Namespace) -> list[str]:
    """The options of add_backend_args (and --preset) given at other than their defaults: those that choose how a
    photo is denoised here (one list for the checks of what a backend, or --server, would ignore)."""
    given = {"--backend": args.backend != "torch", "--artifact": args.artifact is not None,
             "--provider": args.provider != "cpu", "--opt-level": args.opt_level != "all",
             "--impl": args.impl != getattr(args, "impl_default", args.impl), "--device": args.device != "cpu",
             "--threads": args.threads is not None, "--precision": args.precision != "fp32",
             "--cuda-graph": args.cuda_graph, "--preset": getattr(args, "preset", None) is not None}
    return [option for option, yes in given.items() if yes]


def check_backend_options(args: argparse.Namespace, reads_preset: bool = False) -> None:
    """denoise / serve / parity: an option another backend reads would be ignored in silence; refused instead, naming
    what to do (--artifact without --backend ort would run the PyTorch default; --precision with ort the fp32 model).
    ``reads_preset``: the command reads --preset whatever the backend (parity's PyTorch reference)."""
    given = runner_options_given(args)
    if args.backend == "torch":
        for option, backends in (("--artifact", "ort or trt"), ("--provider", "ort"), ("--opt-level", "ort")):
            if option in given:
                raise InputError(f"{option} applies to --backend {backends}, but the backend is torch, "
                                 f"which runs --weights in PyTorch: add --backend {backends.split()[0]}, or leave "
                                 f"{option} out")
        return
    ignored = {
        "--preset": (not reads_preset, "an ONNX model or engine carries its own architecture"),
        "--precision": (True, "an ONNX model or engine keeps the precision it was made with ('moe-denoise export "
                        "--precision fp16', 'moe-denoise build --precision fp16')"),
        "--device": (True, "ONNX Runtime runs where --provider says; an engine runs on the GPU"),
        "--cuda-graph": (args.backend == "ort", "ONNX Runtime is not captured here; --backend torch (on CUDA) and "
                         "trt take it"),
        "--impl": (True, "an ONNX model or engine computes the attention as it was exported ('moe-denoise export "
                   "--flavor plugin' for the TensorRT plugin)"),
    }
    for option, (ignores, why) in ignored.items():
        if ignores and option in given:
            raise InputError(f"{option} applies to --backend torch, not to --backend {args.backend}: {why}. Leave "
                             f"{option} out")


def make_runner(args: argparse.Namespace, weights: Path | None, verify_outputs: bool = True):
    """The runner chosen by --backend and its options (``verify_outputs``: an ONNX model's or engine's self-check at
    load, which 'parity' leaves to its own full comparison)."""
    if args.backend == "ort":
        from moe_base.paths import onnx_path
        from runtime.ort_runner import OrtRunner

        artifact = args.artifact or onnx_path("portable")
        check_artifact_weights(args, artifact)
        if args.artifact is None:
            note_stale_default(args, artifact, "'moe-denoise export'")
        return OrtRunner(artifact, provider=args.provider, threads=args.threads, opt_level=args.opt_level,
                         verify_outputs=verify_outputs)
    if args.backend == "torch":
        from runtime.torch_runner import TorchRunner

        if args.impl == "triton":
            if not args.device.startswith("cuda"):  # the op would run the reference there, named 'torch-triton'
                raise InputError(f"--impl triton runs the Triton kernel on CUDA only; on --device {args.device} its "
                                 f"op runs the reference attention, so nothing of the kernel would be run or "
                                 f"checked. Use --impl masked here (the same numbers), or --device cuda on a GPU")
            import topk_attention.torch_op  # noqa: F401 - registers the Triton implementation

        if args.cuda_graph and not args.device.startswith("cuda"):  # said in the command's words, not TorchRunner's
            raise InputError(f"--cuda-graph captures GPU work and needs --device cuda; got --device {args.device}. "
                             f"Leave --cuda-graph out on a CPU")
        if args.precision != "fp32" and not args.device.startswith("cuda") and not getattr(args, "said_cpu_half", False):
            args.said_cpu_half = True  # once a command: serve makes a runner per model instance
            print(f"note: --precision {args.precision} on the CPU is for checking half precision's numbers: it runs "
                  f"several times slower than fp32 here (about 5x on a 2-core CPU; a CPU has no fast half-precision "
                  f"arithmetic)", file=sys.stderr)
        return TorchRunner(resolve_weights(weights), preset=args.preset, device=args.device, impl=args.impl,
                           threads=args.threads, verify_weights=not getattr(args, "skip_weights_check", False),
                           precision=args.precision, cuda_graph=args.cuda_graph)
    from moe_base.paths import engine_path, onnx_path
    from runtime.trt_runner import TensorRTRunner

    # default: the engine 'moe-denoise build' writes for the fp32 plugin graph
    artifact = args.artifact or engine_path(onnx_path("plugin"), "fp32")
    check_artifact_weights(args, artifact)
    if args.artifact is None:
        note_stale_default(args, artifact, "'moe-denoise export --flavor plugin' then 'moe-denoise build'")
    return TensorRTRunner(artifact, cuda_graph=args.cuda_graph, verify_outputs=verify_outputs)
