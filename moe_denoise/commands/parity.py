"""moe-denoise parity: compare a backend with the PyTorch model; non-zero exit on failure."""
from __future__ import annotations

import argparse

from runtime.base import runner_label, weights_label

from . import (
    HelpFormatter,
    add_backend_args,
    add_weights_args,
    check_backend_options,
    make_runner,
    parity_count,
    path_arg,
    resolve_weights,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="check a backend against the PyTorch model",
                       description="Runs N fixed inputs through the backend and through the PyTorch model (CPU, "
                                   "masked attention) and reports max / mean / p99 absolute error, the PSNR of the "
                                   "backend's output against PyTorch's and the fraction of pixels beyond tolerance. "
                                   "Tolerances come from moe_base/tolerances.py, keyed by (backend, precision). "
                                   "Exit code 1 when out of tolerance.",
                       formatter_class=HelpFormatter)
    add_backend_args(p, required=True, default_impl="gather")
    add_weights_args(p, default="the weights an ONNX model's or engine's manifest names, else blind")
    p.add_argument("-n", "--num-images", type=parity_count, default=64,
                   help="synthetic 32x32 inputs (fixed); --data-dir adds as many CIFAR-10 test images")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="optionally add noisy CIFAR-10 test images from this folder to the synthetic batch")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from moe_base.tolerances import get_tolerance
    from runtime.parity import compare, in_chunks, parity_inputs
    from runtime.torch_runner import TorchRunner, artifact_architecture, artifact_weights

    check_backend_options(args, reads_preset=True)  # before any work: an option the backend ignores is refused
    weights = resolve_weights(args.weights)
    x = parity_inputs(args.num_images)
    if args.data_dir is not None:
        from moe_model.data import fixed_noisy, load_cifar10, to_float

        x = np.concatenate([x, fixed_noisy(to_float(load_cifar10(args.data_dir, "test")[: args.num_images])).numpy()])
    # an artifact that computes another model is what this reports, with its numbers and exit code 1: the self-check
    # at load refused it before (exit 2, no numbers) when it was far off, and only a near one got the report
    runner = make_runner(args, weights, verify_outputs=False)
    with runner:
        manifest = getattr(runner, "manifest", None)
        if manifest:  # the reference is the model the artifact was made from (its weights checked by their hash)
            described = runner.describe()
            weights = artifact_weights(described.get("model") or described.get("engine"), manifest, args.weights,
                                       "--weights")
        out = in_chunks(runner, x)
        precision = runner.precision
    with TorchRunner(weights, preset=args.preset, impl="masked", threads=args.threads,
                     verify_weights=not args.skip_weights_check,
                     architecture=artifact_architecture(manifest)) as ref_runner:  # weights without a sidecar
        ref = in_chunks(ref_runner, x)
    report = compare(ref, out, get_tolerance(args.backend, precision), args.backend, precision)
    if args.json:
        from moe_denoise.cli import print_json

        print_json({"runner": runner.describe(), **report.to_dict()})
    else:
        label = runner_label(runner)  # an artifact's names its weights: they were said twice
        print(f"{label} against PyTorch" + ("" if "(weights " in label else
                                            f" with the weights {weights_label(str(weights))}"))
        described = runner.describe()
        settings = {k: v for k, v in described.items() if k not in ("name", "weights", "weights_sha256", "plugin_nodes")
                    and v not in (None, False)}
        print("  " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in settings.items()))  # as the options are named
        if described.get("plugin_nodes"):  # a sentence, printed after its key
            print(f"  note: {described['plugin_nodes']}")
        print(report.summary())
    return 0 if report.passed else 1
