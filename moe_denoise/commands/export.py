"""moe-denoise export: weights -> checked ONNX + manifest, behind a parity gate."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moe_base.errors import InputError
from runtime.base import artifact_made_from, weights_label

from . import (
    HelpFormatter,
    add_weights_args,
    check_output_suffix,
    json_when_refused,
    parity_count,
    path_arg,
    resolve_weights,
    step_log,
    thread_count,
    whole,
)


def register(sub: argparse._SubParsersAction) -> None:
    from export.onnx_export import REWRITES

    p = sub.add_parser("export", help="export weights to ONNX (portable or TensorRT-plugin flavour)",
                       description="Writes an ONNX model and OUT.manifest.json. Before the file is kept, it is run in "
                                   "ONNX Runtime against the PyTorch model on a fixed batch; out of tolerance, nothing "
                                   "is written and the parity report is printed (exit code 1).",
                       formatter_class=HelpFormatter)
    add_weights_args(p)
    p.add_argument("-o", "--output", type=path_arg, default=None,
                   help="output .onnx path (default: $MOE_DENOISE_CACHE/artifacts/moe_denoiser.<flavor>[.noopt | "
                        ".<r1>+<r2> with --rewrites][.fp16].onnx; the cache is ~/.cache/moe-denoise unless set)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at -o (never done without it)")
    p.add_argument("--flavor", choices=["portable", "plugin"], default="portable",
                   help="portable: standard ONNX operators only; plugin: sparse attention as TensorRT plugin nodes")
    opt = p.add_mutually_exclusive_group()
    opt.add_argument("--no-optimize", action="store_true",
                     help="skip the exact algebraic rewrites (the default set: merge_proj, the scale and the key / "
                          "value biases folded) for comparison")
    opt.add_argument("--rewrites", default=None, metavar="R1,R2",
                     help="exactly these rewrites instead of the default set ('all' for every one; e.g. add fuse_qkv "
                          "and rows2d for one Q/K/V GEMM on a GPU). Known: " + ", ".join(REWRITES))
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: fp16 weights/activations with fp32 I/O, LayerNorm and softmax in fp32 (for strongly "
                        "typed TensorRT 11 engines); judged by PSNR against the fp32 model")
    p.add_argument("--opset", type=whole, default=17, help="ONNX opset of the graph, 17 to 21")
    p.add_argument("--parity-images", type=parity_count, default=32, help="size of the fixed parity batch")
    p.add_argument("--threads", type=thread_count, default=None, help="ONNX Runtime threads for the parity run")
    p.add_argument("--json", action="store_true",
                   help="print the manifest as JSON, with the model's path ('output') and the manifest's ('manifest')")
    p.set_defaults(func=run)


def parse_rewrites(text: str | None) -> tuple[str, ...] | None:
    """--rewrites: None (the default set), 'all', or a comma-separated list of known rewrite names, returned once
    each in their canonical order (the order they are applied in), so that one graph has one default file name."""
    if text is None:
        return None
    from export.onnx_export import REWRITES

    names = tuple(REWRITES) if text.strip() == "all" else tuple(r.strip() for r in text.split(",") if r.strip())
    if not names:  # an unset variable ('--rewrites "$R"') meant no rewrites in silence
        raise InputError(f"--rewrites {text!r} names no rewrite; give some of {', '.join(REWRITES)} (or 'all'), or "
                         f"--no-optimize for none")
    unknown = [r for r in names if r not in REWRITES]
    if unknown:
        raise InputError(f"--rewrites: unknown {unknown}; known: {', '.join(REWRITES)} (or 'all')")
    return tuple(r for r in REWRITES if r in names)


def run(args: argparse.Namespace) -> int:
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_base.manifest import check_artifact_output
    from moe_base.paths import onnx_path
    from moe_model.checkpoint import load_model

    rewrites = parse_rewrites(args.rewrites)
    check_output_suffix(args.output, (".onnx",), "an ONNX model")
    out = args.output or onnx_path(args.flavor, not args.no_optimize, args.precision, rewrites)
    # the default path (in the cache folder) is the export's own to replace
    check_artifact_output(out, args.overwrite or args.output is None, in_cache=args.output is None)
    opts = ExportOptions(flavor=args.flavor, optimize=not args.no_optimize, rewrites=rewrites, opset=args.opset,
                         precision=args.precision)
    opts.validate()  # a bad --opset before the weights are read
    weights = resolve_weights(args.weights)
    model = load_model(weights, preset=args.preset, verify=not args.skip_weights_check)
    from moe_base.contract import TILE_SHAPE, tile_shape

    if tile_shape(model.config) != TILE_SHAPE:  # the parity gate, runners, engines and Triton configs are 3x32x32
        raise InputError(f"weights {weights} are for {'x'.join(map(str, tile_shape(model.config)))} tiles; export "
                         f"(its parity gate, the ONNX / TensorRT runners and Triton) supports "
                         f"{'x'.join(map(str, TILE_SHAPE))} tiles only. Use --backend torch for these weights")
    earlier = replaced_default(out) if args.output is None else None
    with json_when_refused(args.json, out, "export"):
        result = export_onnx(model, out, opts, weights_path=weights, parity_images=args.parity_images,
                             threads=args.threads, log=step_log(args.json), overwrite=args.overwrite or args.output is None)
    if args.json:
        from moe_denoise.cli import print_json

        print_json({**result.manifest, "output": str(result.path), "manifest": str(result.manifest_path)})
    else:
        print(result.parity.summary())
        print(f"wrote {result.path} and {result.manifest_path}")
    now = (result.manifest.get("model") or {}).get("weights_sha256")
    if earlier is not None and earlier[1] != now:  # the default path is shared: say whose model it held
        print(f"note: this replaced the default export made from the weights {earlier[0]}; --backend ort now runs "
              f"{weights_label(str(weights))}", file=sys.stderr)
    return 0


def replaced_default(path: Path) -> tuple[str, str | None] | None:
    """(label, sha256) of the weights the model at the default ``path`` was made from, before it is replaced; None
    when there is none (or its manifest cannot say)."""
    made = artifact_made_from(path)
    sha256 = made.get("weights_sha256") or None
    return (weights_label(made["weights"], sha256), sha256) if made else None
