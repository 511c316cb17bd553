"""A/B of the export rewrites in ONNX Runtime CPU: the plain graph, the default (optimised) one, every rewrite
alone, the default with each of its rewrites left out, and any sets asked for, timed interleaved in one process at
one batch size.

The full harness (``moe-denoise bench``) compares only the two graphs users get (optimised and
``--no-optimize``); this asks which rewrite pays where. Example::

    python -m tools.rewrites_ab --batch 64 --rounds 24

Each round times every graph on a **fresh session** (two untimed calls first). A session keeps its speed for
life and that speed varies from session to session: on the 2-core development machine a rewritten graph's
session came out 5% faster than the plain one's in some processes and 12-20% slower in others, each steady for
its whole life; with the memory arena off the ranking was the same in every process (so, apparently, where the
arena lands). Timing one long-lived session per graph compared that luck, not graphs; fresh sessions average it
out (``--keep-sessions`` restores the old behaviour, to see the effect).

Every graph is also compared with the plain one **round by round** (its time over the plain graph's in the same
round): the median ratio, a 95% bootstrap interval of it, and in how many rounds it was faster. "faster" is printed
only when the whole interval lies below 1 and an exact sign test on the rounds won agrees; a difference smaller
than the session-to-session spread needs many rounds to show (``--rounds``). ``--json PATH`` keeps every round's timing.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.harness import round_order
from benchmarks.stats import paired_comparison, paired_text
from export.onnx_export import DEFAULT_REWRITES, REWRITES, ExportOptions, build_onnx
from moe_denoise.commands import HelpFormatter, positive_int
from tools import run_tool
from weights import DEFAULT_WEIGHTS


def variants(names: list[str], sets: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {"none (--no-optimize)": (), "default": DEFAULT_REWRITES}
    for s in sets:
        rw = tuple(r for r in s.split(",") if r)
        unknown = sorted(set(rw) - set(REWRITES))
        if unknown:
            raise SystemExit(f"--set {s!r}: unknown rewrites {unknown}; known: {sorted(REWRITES)}")
        out[s] = rw
    for r in names:
        out[f"only {r}"] = (r,)
        if r in DEFAULT_REWRITES:
            out[f"default but {r}"] = tuple(x for x in DEFAULT_REWRITES if x != r)
    return out


def session(onnx_model, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session on an in-memory graph (a ModelProto or its bytes), with OrtRunner's options
    (threads stop spinning when a run returns, so the idle sessions of an A/B do not steal the timed one's cores)."""
    import onnxruntime as ort

    from runtime.ort_runner import session_options

    so = session_options(ort, threads)
    if profile_prefix:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    data = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def print_profile(name: str, onnx_model, x: np.ndarray, threads: int, calls: int = 20) -> None:
    """Run ``calls`` times under ONNX Runtime's profiler and print the kernel time per operator type
    (averaged over all calls; the first, with its one-off allocations, is one of ``calls``)."""
    import json
    import os
    import tempfile
    from collections import Counter

    with tempfile.TemporaryDirectory() as tmp:
        sess = session(onnx_model, threads, os.path.join(tmp, "profile"))
        for _ in range(calls):
            sess.run(None, {"noisy": x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    by_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    print(f"{name}: batch {x.shape[0]}, kernel time per call {total / calls / 1e3:.2f} ms")
    for op, us in by_op.most_common(12):
        print(f"  {op:20s} {us / calls / 1e3:8.3f} ms  {100 * us / total:5.1f}%")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),  # the shipped file wherever the tool is run from
                   help="weights to export (default: the shipped blind weights)")
    p.add_argument("--batch", type=positive_int, default=64)  # 0 timed empty batches and printed them as results
    p.add_argument("--rounds", type=positive_int, default=24, help="interleaved rounds (order rotated and reversed)")
    p.add_argument("--inner", type=positive_int, default=None, help="calls per turn (default: about 0.2 s worth)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--rewrites", default=",".join(REWRITES),
                   help="rewrites to try alone and (those in the default) left out ('' for none)")
    p.add_argument("--keep-sessions", action="store_true",
                   help="one session per graph for the whole run instead of a fresh one each round")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: ONNX Runtime's profiler, time per operator type, default graph and plain")
    p.add_argument("--set", action="append", default=[], metavar="R1,R2", help="also this set of rewrites (repeatable)")
    p.add_argument("--json", metavar="PATH", help="also write every round's timings and the comparisons here")
    a = p.parse_args(argv)
    if a.json:  # a folder or an unwritable place was found after every round had been timed
        from moe_base.errors import InputError
        from moe_base.fileio import check_output_file

        try:
            check_output_file(a.json, overwrite=True)
        except InputError as e:
            p.error(f"--json: {e}")
    from moe_model.checkpoint import load_model  # torch: not for --help and argument errors

    model = load_model(a.weights).eval()
    x = np.random.default_rng(0).random((a.batch, 3, 32, 32), dtype=np.float32)
    if a.profile:
        for name, rw in variants([], []).items():
            print_profile(name, build_onnx(model, ExportOptions(rewrites=rw)), x, a.threads)
        return
    chosen = variants([r for r in a.rewrites.split(",") if r], a.set)
    graphs = {name: build_onnx(model, ExportOptions(rewrites=rw)).SerializeToString() for name, rw in chosen.items()}
    names = list(graphs)
    live: dict[str, object] = {}

    def fresh(name: str):
        if a.keep_sessions and name in live:
            return live[name]
        live.pop(name, None)  # the old session goes before the new one is made
        s = live[name] = session(graphs[name], a.threads)
        for _ in range(2):  # first-run allocations and memory planning, untimed
            s.run(None, {"noisy": x})
        return s

    first = fresh(names[0])  # made and warmed before the clock starts: the estimate is one call, not a session
    t0 = time.perf_counter()
    first.run(None, {"noisy": x})
    inner = a.inner or max(1, int(0.2 / max(time.perf_counter() - t0, 1e-6)))
    ms: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        for n in round_order(names, r):
            s = fresh(n)
            t0 = time.perf_counter()
            for _ in range(inner):
                s.run(None, {"noisy": x})
            ms[n].append((time.perf_counter() - t0) / inner * 1e3)
    how = "one session per graph" if a.keep_sessions else "a fresh session per graph and round"
    print(f"batch {a.batch}, {a.threads} threads, {a.rounds} interleaved rounds of {inner} calls, {how}; "
          "ms per call")
    base = names[0]
    print(f"{'graph':32s} {'p50':>8s} {'min':>8s} {'p90':>8s}   time / plain's, same round: median [95% CI]")
    rows = []
    for n in names:
        v = np.asarray(ms[n])
        row = {"graph": n, "rewrites": list(chosen[n]), "p50_ms": float(np.median(v)), "min_ms": float(v.min()),
               "p90_ms": float(np.percentile(v, 90)), "round_ms": [float(t) for t in v]}
        line = f"{n:32s} {row['p50_ms']:8.3f} {row['min_ms']:8.3f} {row['p90_ms']:8.3f}"
        if n != base:
            row["vs_plain"] = paired_comparison(ms[n], ms[base]).to_dict()
            line += f"   {paired_text(row['vs_plain'])}"
        rows.append(row)
        print(line)
    if a.json:
        from moe_base.fileio import atomic_write_json

        atomic_write_json(a.json, {"batch": a.batch, "threads": a.threads, "rounds": a.rounds,
                                   "calls_per_turn": inner, "sessions": how, "graphs": rows})
        print(f"wrote {a.json}")


if __name__ == "__main__":
    run_tool(main)
