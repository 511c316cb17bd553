"""The results document: its schema (checked before anything is written), a Markdown report, and a plot.

Schema ``moe-denoise/bench`` version 1 (``SCHEMA`` below is the machine-checked form). Top level:

- ``schema`` (str), ``schema_version`` (int), ``created_utc`` (str), ``command`` (str|null), ``mode`` (str:
  quick / full / gpu / custom), ``settings`` (BenchSettings as a dict), ``environment`` (fingerprint: platform,
  cpu, threads, libraries, gpu|null, load averages), ``model`` ({flops_per_image: {total, convention, parts}|null,
  config|null, weights|null}), ``reference`` ({name, backend, device, precision, parity_images}),
  ``baseline`` (str|null), ``compute_peak`` ({device: {gflops, gflops_median, shape, dtype, ...} or {error}}),
  ``schedule`` ({batch: [[cell, ...] per round]}), ``best`` ({mode: {batch: {backend, throughput_ips, p50_ms,
  throughput_ratio, latency_ratio}}}), ``targets`` (dict), ``notes`` ([str]).
- ``backends``: one per backend asked for: name, device, precision, baseline (bool), tolerance_key ([backend,
  precision]), status (ok | unavailable | failed-parity | error), reason (str|null), notes ([str]), describe
  (dict|null), parity (ParityReport dict|null), cold_start ({activate_ms, first_infer_ms, second_infer_ms,
  first_batch}|null), memory ({rss_after_load_mb, load_rss_delta_mb}|null), modes ([str]), timer (str|null).
- ``results``: one per (backend, mode, batch) timed or skipped: backend, mode (e2e | compute), batch, device,
  status (ok | error | skipped), reason, n_samples, calls_per_turn, latency_ms ({n, mean, std, min, p50, p90, p99,
  max}|null), throughput_ips (images/s|null), ratio_vs_baseline ({throughput, latency_p50}|null), gflops,
  fraction_of_peak, memory ({peak_rss_mb, peak_rss_delta_mb, rss_window, [gpu_torch_peak_mb, gpu_used_mb,
  gpu_used_delta_mb]}|null); an ok row also has samples_ms (every timed call, ms, in order) and turns_ms (the mean
  call of each round's turn, ms; what ``paired`` compares), absent in documents written before they were kept.
- ``paired`` (optional; absent in documents written before it existed): one per (backend, mode, batch) whose backend
  is compared round by round with another (``BackendSpec.versus``): backend, versus, mode, batch, n (rounds), ratio
  (median over rounds of the backend's time / the other's in the same round), low, high (bootstrap interval of
  that median), confidence, wins (rounds the backend was faster), verdict (faster | slower | no difference shown).
"""
from __future__ import annotations

import io
import math
from typing import Any

from moe_base.errors import InputError
from moe_base.optional import require

from .harness import SCHEMA_NAME, SCHEMA_VERSION
from .stats import paired_text

NUM = (int, float)


class Opt:
    """A schema node that may also be null."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


LATENCY = {"n": int, "mean": NUM, "std": NUM, "min": NUM, "p50": NUM, "p90": NUM, "p99": NUM, "max": NUM}
ROW = {
    "backend": str, "mode": str, "batch": int, "device": str, "status": str, "reason": Opt(str),
    "n_samples": int, "calls_per_turn": int, "latency_ms": Opt(LATENCY), "throughput_ips": Opt(NUM),
    "ratio_vs_baseline": Opt({"throughput": NUM, "latency_p50": NUM}), "gflops": Opt(NUM),
    "fraction_of_peak": Opt(NUM), "memory": Opt(dict),
}
BACKEND = {
    "name": str, "device": str, "precision": str, "baseline": bool, "tolerance_key": [str], "status": str,
    "reason": Opt(str), "notes": [str], "describe": Opt(dict), "parity": Opt(dict),
    "cold_start": Opt({"activate_ms": NUM, "first_infer_ms": NUM, "second_infer_ms": NUM, "first_batch": int}),
    "memory": Opt(dict), "modes": [str], "timer": Opt(str),
}
SCHEMA = {
    "schema": str, "schema_version": int, "created_utc": str, "command": Opt(str), "mode": str,
    "settings": {"batches": [int], "warmup": int, "repeats": int, "modes": [str], "parity_images": int,
                 "threads": Opt(int)},
    "environment": {"platform": str, "cpu": {"model": Opt(str), "usable_cores": Opt(int)}, "threads": dict,
                    "libraries": dict, "gpu": Opt(dict)},
    "model": {"flops_per_image": Opt({"total": int, "convention": str, "parts": dict})},
    "reference": {"name": str, "device": str, "precision": str, "parity_images": int},
    "baseline": Opt(str), "compute_peak": dict, "backends": [BACKEND], "results": [ROW], "schedule": dict,
    "best": dict, "targets": dict, "notes": [str],
}
PAIRED = {"backend": str, "versus": str, "mode": str, "batch": int, "n": int, "ratio": NUM, "low": NUM, "high": NUM,
          "confidence": NUM, "wins": int, "verdict": str}
BACKEND_STATUSES = ("ok", "unavailable", "failed-parity", "error")
ROW_STATUSES = ("ok", "error", "skipped")


def _check(value: Any, spec: Any, where: str, problems: list[str]) -> None:
    """Structural check of ``value`` against ``spec``: a type / tuple of types, {key: spec}, [spec] or Opt(spec)."""
    if isinstance(spec, Opt):
        if value is not None:
            _check(value, spec.spec, where, problems)
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        for key, sub in spec.items():
            if key not in value:
                problems.append(f"{where}.{key}: missing")
            else:
                _check(value[key], sub, f"{where}.{key}", problems)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", problems)
        return
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types:  # bool is an int subclass: not a number here
        problems.append(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool")
    elif not isinstance(value, types):
        problems.append(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}")
    elif isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{where}: {value} is not a finite number (JSON has no NaN/Inf)")


def validate_results(doc: Any) -> None:
    """Raise ValueError listing every way ``doc`` departs from schema version 1 (types, keys, enumerations)."""
    problems: list[str] = []
    _check(doc, SCHEMA, "results", problems)
    if isinstance(doc, dict) and "paired" in doc:
        _check(doc["paired"], [PAIRED], "results.paired", problems)
    if isinstance(doc, dict):
        if doc.get("schema") != SCHEMA_NAME or doc.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"schema is {doc.get('schema')!r} v{doc.get('schema_version')}, expected "
                            f"{SCHEMA_NAME!r} v{SCHEMA_VERSION}")
        for i, b in enumerate(doc.get("backends") or []):
            if isinstance(b, dict) and b.get("status") not in BACKEND_STATUSES:
                problems.append(f"results.backends[{i}].status: {b.get('status')!r} not in {BACKEND_STATUSES}")
            if isinstance(b, dict) and b.get("status") != "ok" and not b.get("reason"):
                problems.append(f"results.backends[{i}] ({b.get('name')}): status {b.get('status')} needs a reason")
        timed_ok = {b.get("name") for b in doc.get("backends") or [] if isinstance(b, dict) and b.get("status") == "ok"}
        for i, r in enumerate(doc.get("results") or []):
            if not isinstance(r, dict):
                continue
            if r.get("status") not in ROW_STATUSES:
                problems.append(f"results.results[{i}].status: {r.get('status')!r} not in {ROW_STATUSES}")
            if r.get("backend") not in timed_ok:
                problems.append(f"results.results[{i}]: backend {r.get('backend')!r} has timings but did not pass "
                                f"parity (only backends with status ok may be timed)")
            if r.get("status") == "ok" and r.get("latency_ms") is None:
                problems.append(f"results.results[{i}]: status ok without latency_ms")
    if problems:
        raise InputError(f"benchmark results do not match schema {SCHEMA_NAME} v{SCHEMA_VERSION}:\n  "
                         + "\n  ".join(problems))


# --- Markdown ------------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    return f"{x:.{max(0, digits - 1 - mag)}f}"


def _cell_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return row["status"]
    ratio = row["ratio_vs_baseline"]
    text = f"{_fmt(row['latency_ms']['p50'])} ms · {_fmt(row['throughput_ips'])}/s"
    return text + (f" · {ratio['throughput']:.2f}x" if ratio else "")


def markdown_report(doc: dict[str, Any]) -> str:
    """The human-readable report: the backends x batch sizes table per mode, then status, cold start, memory."""
    env = doc["environment"]
    cpu = env["cpu"]
    lines = [f"# moe-denoise benchmark ({doc['mode']})", ""]
    gpu = env.get("gpu")
    lines.append(f"- machine: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores)"
                 + (f"; GPU {gpu['name']} (compute {gpu['compute_capability']})" if gpu else "; no GPU"))
    lines.append(f"- threads: {env['threads'].get('requested')}; load average at start {env.get('load_average_start')}"
                 f", at end {env.get('load_average_end')}")
    contention = env.get("contention") or {}
    if contention.get("other_processes_cpu_fraction") is not None:
        lines.append(f"- other processes used {100 * contention['other_processes_cpu_fraction']:.0f}% of the machine's "
                     f"CPU time during the run (this run: {100 * contention['own_cpu_fraction']:.0f}%)")
    libs = env["libraries"]
    lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if v))
    if doc.get("command"):
        lines.append(f"- command: `{doc['command']}`")
    s = doc["settings"]
    lines.append(f"- method: {s['warmup']} warm-up calls, then up to {s['repeats']} interleaved rounds per batch size "
                 f"({s.get('order', 'rotating order')}); parity on {s['parity_images']} images before any timing; created "
                 f"{doc['created_utc']}")
    flops = doc["model"]["flops_per_image"]
    if flops:
        peaks = [(dev, p) for dev, p in (doc.get("compute_peak") or {}).items() if "gflops" in p]
        lines.append(f"- model: {flops['total'] / 1e6:.2f} MFLOP per image ({flops['convention']} count)"
                     + "".join(f"; measured fp32 GEMM peak {p['gflops']:.1f} GFLOP/s on {dev.upper()} "
                               f"({'x'.join(map(str, p['shape']))}) -> compute limit "
                               f"{p['gflops'] * 1e9 / flops['total']:.0f} images/s" for dev, p in peaks))
    baseline = doc.get("baseline")
    for mode in doc["settings"]["modes"]:
        rows = [r for r in doc["results"] if r["mode"] == mode]
        if not rows:
            continue
        batches = sorted({r["batch"] for r in rows})
        title = {"e2e": "end to end (host arrays in and out)", "compute": "compute only (device-resident I/O)"}[mode]
        lines += ["", f"## Latency and throughput: {title}", "",
                  f"p50 latency · throughput (images/s) · throughput vs the baseline ({baseline or 'none'})", ""]
        lines.append("| backend | " + " | ".join(f"batch {b}" for b in batches) + " |")
        lines.append("|---|" + "---|" * len(batches))
        for name in dict.fromkeys(r["backend"] for r in rows):
            by_batch = {r["batch"]: r for r in rows if r["backend"] == name}
            label = f"{name} (baseline)" if name == baseline else name
            lines.append(f"| {label} | " + " | ".join(_cell_text(by_batch.get(b)) for b in batches) + " |")
    if doc.get("paired"):
        lines += ["", "## Round by round", "",
                  "Time of a backend over its counterpart's in the same round (median over rounds, 95% bootstrap "
                  "interval); \"faster\" only when the whole interval is below 1 and a sign test on the rounds won "
                  "agrees (at least 6 rounds).", ""]
        lines += [f"- {c['backend']} vs {c['versus']}, batch {c['batch']} ({c['mode']}): {paired_text(c)}"
                  for c in doc["paired"]]
    header = ("| backend | status | parity (max abs, PSNR dB) | load ms | first inference ms | RSS after load MiB "
              "| peak RSS delta MiB | GFLOP/s (% of peak) |")
    lines += ["", "## Backends", "", header, "|---|---|---|---|---|---|---|---|"]
    for b in doc["backends"]:
        lines.append(_backend_line(b, doc["results"]))
    lines += _targets_lines(doc.get("targets") or {})
    out_of_play = [b for b in doc["backends"] if b["status"] != "ok"]
    if out_of_play or doc.get("notes"):
        lines += ["", "## Not timed, and notes", ""]
        lines += [f"- **{b['name']}**: {b['status']}: {b['reason']}" for b in out_of_play]
        lines += [f"- {n}" for n in doc.get("notes", [])]
    return "\n".join(lines) + "\n"


def _backend_line(b: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    p, cs, mem = b.get("parity"), b.get("cold_start"), b.get("memory") or {}
    parity = "-"
    if p:
        psnr = "inf" if p.get("psnr") is None else f"{p['psnr']:.0f}"
        parity = f"{'pass' if p['passed'] else 'FAIL'} ({p['max_abs']:.1e}, {psnr})"
    mine = [r for r in rows if r["backend"] == b["name"] and r["status"] == "ok"]
    largest = max(mine, key=lambda r: (r["mode"] == "e2e", r["batch"]), default=None)
    peak_delta = max((r["memory"].get("peak_rss_delta_mb") or 0 for r in mine if r.get("memory")), default=None)
    compute = "-"
    if largest and largest.get("gflops") is not None:
        frac = largest.get("fraction_of_peak")
        compute = f"{largest['gflops']:.1f}" + (f" ({100 * frac:.0f}%)" if frac is not None else "") + \
                  f" @ b{largest['batch']}"
    return (f"| {b['name']} | {b['status']} | {parity} | {_fmt(cs['activate_ms']) if cs else '-'} | "
            f"{_fmt(cs['first_infer_ms']) if cs else '-'} | {_fmt(mem.get('rss_after_load_mb'))} | "
            f"{_fmt(peak_delta)} | {compute} |")


def _targets_lines(t: dict[str, Any]) -> list[str]:
    if not t:
        return []
    lines = ["", "## Targets (CPU, this run)", ""]

    def verdict(x: dict[str, Any]) -> str:
        if x.get("met") is None:
            return f"not judged: {x.get('not_judged') or 'no verdict'}; rerun on a quiet machine"
        return "met" if x["met"] else "NOT met"

    if "batch64_throughput_ratio" in t:
        x = t["batch64_throughput_ratio"]
        lines.append(f"- batch 64, best throughput >= 10x the baseline: {x['value']:.2f}x ({x['backend']}) -> "
                     f"{verdict(x)}")
    if "batch1_latency_ratio" in t:
        x = t["batch1_latency_ratio"]
        lines.append(f"- batch 1, lowest p50 latency <= 1/8 of the baseline's: {x['value']:.3f} = 1/{1 / x['value']:.1f} "
                     f"({x['backend']}) -> {verdict(x)}")
    if "compute_limit_ips" in t:
        frac = t.get("batch64_fraction_of_limit")
        lines.append(f"- compute limit at the measured GEMM peak: {t['compute_limit_ips']:.0f} images/s"
                     + (f"; best at batch 64 reaches {100 * frac:.0f}% of it" if frac is not None else ""))
    return lines


# --- plot ----------------------------------------------------------------------------------------------------
def render_plot(doc: dict[str, Any]) -> bytes:
    """PNG bytes: p50 latency and throughput vs batch size per backend (and mode), log axes.

    Raises MissingBackendError when matplotlib is missing (the caller skips the plot with a message).
    """
    matplotlib = require("matplotlib", "the benchmark plot")

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(12, 4.8))
    modes = doc["settings"]["modes"]
    for name in dict.fromkeys(r["backend"] for r in doc["results"]):
        for mode in modes:
            rows = sorted((r for r in doc["results"] if r["backend"] == name and r["mode"] == mode
                           and r["status"] == "ok"), key=lambda r: r["batch"])
            if not rows:
                continue
            label = name if len(modes) == 1 else f"{name} ({mode})"
            style = "-" if mode == "e2e" else "--"
            xs = [r["batch"] for r in rows]
            width = 2.5 if name == doc.get("baseline") else 1.5
            ax_lat.plot(xs, [r["latency_ms"]["p50"] for r in rows], style, marker="o", lw=width, label=label)
            ax_tput.plot(xs, [r["throughput_ips"] for r in rows], style, marker="o", lw=width, label=label)
    limit = (doc.get("targets") or {}).get("compute_limit_ips")
    if limit:
        ax_tput.axhline(limit, color="grey", ls=":", label="CPU compute limit (measured GEMM peak)")
    batches = sorted({r["batch"] for r in doc["results"] if r["status"] == "ok"})
    for ax, ylabel in ((ax_lat, "p50 latency (ms)"), (ax_tput, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        if batches:
            ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_tput.legend(fontsize=8, loc="best")
    cpu = doc["environment"]["cpu"]
    gpu = doc["environment"].get("gpu")
    fig.suptitle(f"moe-denoise benchmark ({doc['mode']}): {gpu['name'] if gpu else cpu.get('model')}, "
                 f"{doc['settings'].get('threads')} threads", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
