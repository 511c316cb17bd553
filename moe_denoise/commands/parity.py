"""moe-denoise parity: compare a backend with the PyTorch model; non-zero exit on failure."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_weights_args, resolve_weights

BACKENDS = ("ort", "torch", "trt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="check a backend against the PyTorch model",
                       description="Runs N fixed inputs through the backend and through the PyTorch model (CPU, "
                                   "masked attention) and reports max / mean / p99 absolute error, the PSNR of the "
                                   "backend's output against PyTorch's and the fraction of pixels beyond tolerance. "
                                   "Tolerances come from runtime/tolerances.py, keyed by (backend, precision). "
                                   "Exit code 1 when out of tolerance.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--artifact", type=Path, default=None,
                   help="ONNX model (ort) or engine (trt); default: artifacts/moe_denoiser.portable.onnx for ort")
    add_weights_args(p)
    p.add_argument("-n", "--num-images", type=int, default=64)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="optionally add noisy CIFAR-10 test images from this folder to the synthetic batch")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"], help="ONNX Runtime provider")
    p.add_argument("--impl", default="gather", help="torch backend: attention implementation to check "
                                                    "(gather, masked, triton)")
    p.add_argument("--device", default="cpu", help="torch backend device")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def build_runner(args: argparse.Namespace, weights: Path):
    """The runner under test, from the parsed arguments."""
    if args.backend == "ort":
        from runtime.ort_runner import OrtRunner

        from .export import default_output

        return OrtRunner(args.artifact or default_output("portable", True), provider=args.provider,
                         threads=args.threads)
    if args.backend == "torch":
        from runtime.torch_runner import TorchRunner

        if args.impl == "triton":
            import export.plugins.torch_op  # noqa: F401 - registers the Triton implementation

        return TorchRunner(weights, preset=args.preset, device=args.device, impl=args.impl, threads=args.threads)
    from runtime.trt_runner import TensorRTRunner

    if args.artifact is None:
        raise ValueError("--backend trt needs --artifact ENGINE (build one with 'moe-denoise build')")
    return TensorRTRunner(args.artifact)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from moe_denoise.fileio import sha256_file
    from runtime.manifest import check_equal
    from runtime.parity import compare, parity_inputs
    from runtime.tolerances import get_tolerance
    from runtime.torch_runner import TorchRunner

    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1 (got {args.num_images})")
    weights = resolve_weights(args.weights)
    x = parity_inputs(args.num_images)
    if args.data_dir is not None:
        from moe_model.data import fixed_noisy, load_cifar10, to_float

        x = np.concatenate([x, fixed_noisy(to_float(load_cifar10(args.data_dir, "test")[: args.num_images])).numpy()])
    runner = build_runner(args, weights)
    with runner:
        manifest = getattr(runner, "manifest", None)
        if manifest and manifest.get("model", {}).get("weights_sha256"):
            check_equal("weights", manifest["model"]["weights_sha256"][:16], sha256_file(weights)[:16],
                        f"The artifact was exported from {manifest['model'].get('weights_file')}, not {weights}; pass "
                        f"--weights with the same file, or re-export")
        out = runner(x)
        precision = runner.precision
    with TorchRunner(weights, preset=args.preset, impl="masked", threads=args.threads) as ref_runner:
        ref = ref_runner(x)
    report = compare(ref, out, get_tolerance(args.backend, precision), args.backend, precision)
    if args.json:
        from moe_denoise.cli import print_json

        print_json({"runner": runner.describe(), **report.to_dict()})
    else:
        print(f"runner: {runner.describe()}")
        print(report.summary())
    return 0 if report.passed else 1
