"""moe-denoise build: ONNX (either flavour) -> TensorRT engine, kept only if it passes parity."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import (
    HelpFormatter,
    check_output_suffix,
    json_when_refused,
    note_stale_default,
    path_arg,
    positive_int,
    resolve_weights,
    step_log,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a TensorRT engine from an exported ONNX model (needs TensorRT + GPU)",
                       description="Parses the ONNX model (portable or plugin flavour), builds an engine with an "
                                   "optimisation profile on the batch axis, reuses a persistent timing cache and an "
                                   "engine cache (keyed by ONNX hash, plugin hash, TensorRT version, GPU model and "
                                   "compute capability, the Triton release that compiles the plugin's kernel, "
                                   "precision and profile), checks parity against PyTorch and writes the "
                                   "engine and ENGINE.manifest.json atomically. TensorRT 10 (>= 10.9) takes fp16 as a "
                                   "builder flag on the fp32 graph; TensorRT 11 is strongly typed and needs the fp16 "
                                   "graph from 'moe-denoise export --precision fp16'.",
                       formatter_class=HelpFormatter)
    p.add_argument("--onnx", type=path_arg, default=None,
                   help="the exported ONNX model (with its manifest); default: the plugin graph that 'moe-denoise "
                        "export --flavor plugin' writes, at this precision")
    p.add_argument("-o", "--output", type=path_arg, default=None,
                   help="engine path (default: next to the ONNX model, named <model>.<precision>.engine)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing engine at -o, or beside --onnx without -o (never done without it; the "
                        "default engine in the cache is replaced as needed)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="engine precision (fp16 is judged by PSNR against PyTorch)")
    p.add_argument("--min-batch", type=positive_int, default=1, help="smallest batch the engine accepts")
    p.add_argument("--opt-batch", type=positive_int, default=None,
                   help="batch TensorRT tunes its kernels for (default: 64, brought within --min-batch and "
                        "--max-batch)")
    p.add_argument("--max-batch", type=positive_int, default=1024, help="largest batch the engine accepts")
    p.add_argument("--workspace-mib", type=positive_int, default=2048,
                   help="scratch GPU memory the builder may use, MiB (>= 64)")
    p.add_argument("--cache-dir", type=path_arg, default=None, help="timing + engine cache (default: "
                                                                "$MOE_DENOISE_CACHE or ~/.cache/moe-denoise)")
    p.add_argument("--no-engine-cache", action="store_true", help="always build, never reuse a cached engine")
    p.add_argument("--weights", type=path_arg, default=None,
                   help="weights for the parity check: those the ONNX model was exported from (checked by hash "
                        "against its manifest): a file or a shipped name (blind, sigma20); default: the weights the manifest "
                        "names, else blind")
    p.add_argument("--json", action="store_true",
                   help="print the engine's manifest as JSON instead of the parity report, with the engine's path "
                        "('output', also 'engine') and whether it came from the engine cache ('cached')")
    p.set_defaults(func=run)


def default_onnx(precision: str) -> Path:
    """The plugin graph 'build' takes without --onnx: the one the installed TensorRT parses for ``precision``
    (TensorRT 11: the graph of that precision; TensorRT 10: the fp32 graph, fp16 being a builder flag). Without an
    importable TensorRT (the build then stops saying so): the graph of that precision if exported, else fp32."""
    from moe_base.optional import optional_import
    from moe_base.paths import onnx_path

    trt, _ = optional_import("tensorrt")
    if trt is not None:
        from export.engine import plan_build

        try:
            return onnx_path("plugin", precision=plan_build(trt.__version__, precision).onnx_precision)
        except Exception:  # noqa: BLE001 - a TensorRT too old: build_engine says so
            pass
    candidates = [onnx_path("plugin", precision=precision), onnx_path("plugin")]
    return next((c for c in candidates if c.exists()), candidates[0])


def run(args: argparse.Namespace) -> int:
    from export.engine import BuildOptions, build_engine
    from moe_base.manifest import ENGINE_SUFFIXES, check_artifact_output, manifest_path
    from moe_base.paths import engine_path

    onnx = args.onnx
    if onnx is None:  # the graph the installed TensorRT builds this precision from (TensorRT 10: always fp32)
        onnx = default_onnx(args.precision)
        half = "" if args.precision == "fp32" else f" --precision {args.precision}"
        note_stale_default(args, onnx, f"'moe-denoise export --flavor plugin{half}'")
    opts = BuildOptions(precision=args.precision, min_batch=args.min_batch, opt_batch=args.opt_batch,
                        max_batch=args.max_batch, workspace_mib=args.workspace_mib,
                        use_engine_cache=not args.no_engine_cache)
    if args.cache_dir is not None:
        opts.cache_dir = args.cache_dir
    check_output_suffix(args.output, ENGINE_SUFFIXES, "a TensorRT engine")
    out = args.output or engine_path(onnx, args.precision)
    # before TensorRT is even looked for; without -o and --onnx the engine goes to the cache folder
    # only an engine in the cache is this command's own to replace: one beside the user's --onnx is refused too
    in_cache = args.output is None and args.onnx is None
    check_artifact_output(out, args.overwrite or in_cache, in_cache=in_cache)
    weights = resolve_weights(args.weights) if args.weights is not None else None  # None: the ONNX model's own
    with json_when_refused(args.json, out, "build"):
        result = build_engine(onnx, out, opts, weights=weights, log=step_log(args.json),
                              overwrite=args.overwrite or in_cache)
    if args.json:
        from moe_denoise.cli import print_json

        print_json({**result.manifest, "output": str(result.path), "engine": str(result.path), "cached": result.cached})
    else:
        print(result.parity.summary())
        print(f"wrote {result.path} and {manifest_path(result.path)}" + (" (from the engine cache)" if result.cached else ""))
    return 0
