"""moe-denoise triton-repo: a standard Triton model repository (ONNX Runtime and TensorRT backends)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import HelpFormatter, note_stale_default, path_arg, positive_int, queue_delay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton-repo", help="write a Triton model repository (onnxruntime / tensorrt backends)",
        description="Writes a standard Triton Inference Server model repository for a full Triton deployment "
                    "(NVIDIA's container, KServe): the portable ONNX model on the onnxruntime backend and, when "
                    "--engine is given, a TensorRT engine on the tensorrt backend, each with its config.pbtxt "
                    "(dynamic batching, instance group, inputs and outputs), checked against Triton's own config "
                    "schema. OUT/README.md says how to serve it.",
        formatter_class=HelpFormatter)
    p.add_argument("-o", "--output", type=path_arg, default=Path("triton_repo"), help="repository folder to write")
    p.add_argument("--onnx", type=path_arg, default=None,
                   help="portable ONNX model (default: the one 'moe-denoise export' writes, as for --backend ort)")
    p.add_argument("--engine", type=path_arg, default=None, help="TensorRT engine from 'moe-denoise build' (optional)")
    p.add_argument("--no-onnx", action="store_true", help="only the engine")
    p.add_argument("--max-batch", type=positive_int, default=64, help="max_batch_size of the models")
    p.add_argument("--queue-delay-us", type=queue_delay, default=500,
                   help="dynamic batcher's max queue delay (microseconds)")
    p.add_argument("--instances", type=positive_int, default=1, help="instances of the ONNX model")
    p.add_argument("--onnx-kind", choices=["KIND_CPU", "KIND_GPU"], default="KIND_CPU",
                   help="where Triton runs the ONNX model")
    p.add_argument("--trt-instances", type=positive_int, default=1, help="instances of the TensorRT model (per GPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder, replacing our models (and removing our other one, "
                        "moe_denoiser or moe_denoiser_trt, that an earlier run wrote and this one does not); other "
                        "models there stay")
    p.add_argument("--no-server-check", action="store_true",
                   help="skip having PyTriton's tritonserver read the configs (done when PyTriton is installed)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def default_onnx() -> Path:
    """Where 'moe-denoise export' writes the portable ONNX by default (the same place '--backend ort' reads)."""
    from moe_base.paths import onnx_path

    return onnx_path("portable")


def run(args: argparse.Namespace) -> int:
    from runtime import InputError
    from serving.repo import LIMITS, RepoSettings, write_repository

    if args.no_onnx and args.onnx is not None:
        raise InputError(f"--onnx {args.onnx} and --no-onnx contradict each other: leave out --no-onnx to put the ONNX "
                         f"model in the repository, or --onnx to leave it out")
    if args.engine is None and args.trt_instances != 1:
        raise InputError(f"--trt-instances {args.trt_instances} is for the TensorRT model, and no --engine was given: "
                         f"add --engine PATH, or use --instances for the ONNX model")
    onnx = None
    if not args.no_onnx:
        onnx = args.onnx or default_onnx()
        if args.onnx is None and not Path(onnx).is_file():
            raise InputError(f"no --onnx given and the default {onnx} does not exist; export it with "
                             f"'moe-denoise export' or pass --onnx PATH (or --no-onnx with --engine)")
        if args.onnx is None:  # an upgrade's stale default export went into a new repository without a word
            note_stale_default(args, onnx, "'moe-denoise export' (then this command again)")
    for name, top in LIMITS.items():  # named as the options ('max_batch must be an integer in [1, 65536]')
        if getattr(args, name) > top:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)} is over {top}, the most it takes")
    settings = RepoSettings(max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, instances=args.instances,
                            onnx_kind=args.onnx_kind, trt_instances=args.trt_instances)
    report = write_repository(args.output, onnx, args.engine, settings, overwrite=args.overwrite,
                              server_check=False if args.no_server_check else None)
    if args.json:
        from moe_denoise.cli import print_json

        print_json(report)
    else:
        for m in report["models"]:
            print(f"{m['name']:18s} {m['backend']:12s} {m['file']}")
        for gone in report["removed"]:
            print(f"removed {gone}: written by an earlier run, it is not part of this one (--overwrite)")
        if report["tensorrt_version"]:
            print(f"the TensorRT model needs a Triton server with TensorRT {report['tensorrt_version']}")
        for check in report["checks"]:
            print(f"configs {check}")
        print(f"wrote {report['repository']}; its README.md says how to serve it")
    return 0
