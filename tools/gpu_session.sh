#!/usr/bin/env bash
# Every GPU check of the project in one command, for a GPU machine lent for a few minutes (no install needed:
# it runs from the repository root with PYTHONPATH, on whatever torch / triton / onnxruntime the machine has).
#
#   tools/gpu_session.sh [--dry-run] [OUT_DIR]   # OUT_DIR default: $OUT if set, else ${TMPDIR:-/tmp}/gpu_session
#   tools/gpu_session.sh --help                  # this text
#
# A relative OUT_DIR (or $OUT) is taken from the folder the script is started in (it then works from the
# repository root); the summary names the absolute path, and a relative PYTHON path is the caller's too. PYTHON
# (default python3) is the interpreter every step runs with: it must import torch, safetensors, PIL, tqdm and
# pytest, which is checked first (a few seconds); what is missing is named and nothing runs (each step failed on
# its own with a traceback, each costing its start-up).
#
# On a lent GPU, through the device tool: command "tools/gpu_session.sh", timeout_s 540 (the script stops itself
# within about 8 minutes), carry ["build"] when build/trt_launch_record.json exists (see below; build/ is ignored
# by git, so it travels only when carried). The device tool sets $OUT, so everything lands there and comes back
# (it returns at most 8 files: every file of the session is packed into session.tgz, and six stay beside it:
# session.json, gpu_check.json, results.json, results.md, profile.json, profile.md). Unpack session.tgz into a new
# folder per session, benchmarks/results/gpu-YYYY-MM-DD/ (benchmarks/results/gpu/ holds the first session's
# results, which the docs quote), and commit it. No rerun fits a 15-minute device budget: check the dry run first
# (below).
#
# Before it, on a machine with the package index (the GPU machine has none), let TensorRT's own plugin layer
# compute the launch parameters our plugin asks for, and carry the record with the run (carry: ["build"]):
#   python -m tools.trt_layer.drive --version 11.4.0.106 --target cuda:90 -o build/trt_launch_record.json
#
# 1. gpu_check  python -m tools.gpu_check     kernel correctness on the GPU, kernel timings, the AOT artifact launched
#                                             through the CUDA driver (and CuPy), the kernels launched as TensorRT's
#                                             plugin layer says (the record), TensorRT if importable
# 2. pytest     pytest -m "gpu or trt"        the GPU-marked tests: CUDA-graph capture and replay, fp16/bf16 parity,
#                                             the kernel, the TensorRT stream and graph tests (TensorRT if present)
# 3. bench      moe-denoise bench --gpu       benchmarks.backends.SESSION_BACKENDS (eager, torch.compile and Triton,
#                                             with and without CUDA graphs, fp16/bf16 graphs), parity-checked, CUDA
#                                             events, compute-only and end-to-end; batches 1 and 4096 first (the
#                                             targets), then 64, 1024, 8, 256 while the deadline allows
# 4. profile    python -m tools.gpu_profile   torch.profiler of eager and graph-replayed calls at batch 1 and 4096:
#                                             launches vs memory traffic vs the top-k kernel, and issue 17's targets
#                                             judged from step 3's results with what bounds a missed one
#
# Each step has its own time limit (killed 10 s after it, if it does not stop) and the next one runs whatever the
# last one did, so one failure costs one step, not the session; gpu_check saves its report after each of its
# checks, so a step stopped by its limit leaves what it did. Each step's log goes beside its results:
# gpu_check.json, gpu_check.log, pytest.log, results.json, results.md, results.png, bench.log, profile.json,
# profile.md, profile.log, and session.json (every step: exit code, seconds, limit, files); outputs of an earlier
# run in OUT_DIR are removed first. Time limits in seconds: GPU_CHECK_S (85), PYTEST_S (95), BENCH_S (230, its
# timing deadline BENCH_DEADLINE_S 190 from its start, compilations included), PROFILE_S (55): at most 7.8
# minutes. Where TensorRT is installed, gpu_check builds four engines, which does not fit beside the other steps
# in one 10-minute command: give it a call of its own (GPU_SESSION_STEPS=gpu_check GPU_CHECK_S=480, timeout_s
# 540) and the other steps another (GPU_SESSION_STEPS=pytest,bench,profile). GPU_SESSION_STEPS=bench,profile runs
# only those steps; BENCH_BACKENDS and BENCH_BATCHES override the bench's. In the GPU run the test step fails
# when torch sees no CUDA GPU (its tests would all skip and read as passed).
#
# --dry-run (or GPU_SESSION_DRY_RUN=1): the same steps on a CPU machine, small, to check the script before a GPU
# session (a test runs it): gpu_check --cpu-dry-run, the GPU-marked tests (they skip, each with its reason),
# bench --gpu at batches 1,2 with one round (the CUDA backends are listed unavailable with the reason; torch-masked
# is timed on the CPU), gpu_profile --cpu-dry-run. OUT_DIR defaults to ${TMPDIR:-/tmp}/gpu_session_dry_run there,
# never to benchmarks/results/gpu. PYTEST_TARGETS (default: tests) narrows the test step.
set -u -o pipefail
usage() {  # the header above, without its comment marks
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
dry=${GPU_SESSION_DRY_RUN:-0}
for arg in "$@"; do  # --help anywhere; an unknown option was taken as OUT_DIR ('--help/gpu_check.log'), steps ran
    case "$arg" in
        -h | --help) usage; exit 0 ;;
    esac
done
if [ "${1:-}" = "--dry-run" ]; then
    dry=1
    shift
fi
case "${1:-}" in
    -*) echo "gpu_session.sh: unknown option '$1'; expected [--dry-run] [OUT_DIR] (--help says more)" >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then
    echo "gpu_session.sh: one OUT_DIR expected, got $#: $* (--help says more)" >&2
    exit 2
fi
if [ "$dry" = 1 ]; then
    out=${1:-${TMPDIR:-/tmp}/gpu_session_dry_run}
else
    out=${1:-${OUT:-${TMPDIR:-/tmp}/gpu_session}}
fi
case "$out" in  # the caller's folder, not the repository root the script moves to (an unignored folder there)
    /*) ;;
    *) out="$PWD/$out" ;;
esac
py=${PYTHON:-python3}
case "$py" in  # a relative path with a folder (.venv/bin/python) is the caller's, as OUT_DIR is; a bare name is
    /* | "") ;;  # looked up on PATH
    */*) py="$PWD/$py" ;;
esac
cd "$(dirname "$0")/.."
needed="torch safetensors PIL tqdm"
[[ ",${GPU_SESSION_STEPS:-pytest}," == *",pytest,"* ]] && needed="$needed pytest"
# shellcheck disable=SC2086  # the module names are words
if ! timeout 60 "$py" - $needed <<'PREFLIGHT'
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:  # a broken install is as missing as an absent one
        missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
    sys.exit(f"{sys.executable} cannot import: " + "; ".join(missing))
PREFLIGHT
then
    echo "gpu_session.sh: stopped before any step: the interpreter '$py' lacks what the steps need (above, or it" \
        "cannot be run); set PYTHON to one that has them, e.g. PYTHON=.venv/bin/python" >&2
    exit 2
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
steps=${GPU_SESSION_STEPS:-gpu_check,pytest,bench,profile}
status=0
started=$(date +%s)
record="$out/.session_steps.tsv"
# an earlier run's outputs would be listed (and judged) as this run's
rm -f "$record" "$out"/{gpu_check.json,gpu_check.log,pytest.log,results.json,results.md,results.png,bench.log} \
    "$out"/{profile.json,profile.md,profile.log,session.json,session.tgz}

step() {  # step NAME LOG SECONDS COMMAND...
    local name=$1 log=$2 limit=$3
    shift 3
    if [[ ",$steps," != *",$name,"* ]]; then
        echo "== $name: skipped (not in GPU_SESSION_STEPS=$steps)"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "$limit" "$log" >> "$record"
        return
    fi
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=$?
    echo "== $name: exit $rc $(date -u +%H:%M:%S)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" "$log" >> "$record"
    [ "$rc" -eq 0 ] || status=1
}

{
    date -u
    echo "gpu_session: $([ "$dry" = 1 ] && echo 'DRY RUN on the CPU' || echo 'GPU run') -> $out; steps: $steps"
    { command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1; } || echo "nvidia-smi: not found or failed"
    "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee "$out/gpu_check.log"

session_backends=$("$py" -c "from benchmarks.backends import SESSION_BACKENDS; print(','.join(SESSION_BACKENDS))")
if [ "$dry" = 1 ]; then
    step "gpu_check" "$out/gpu_check.log" "${GPU_CHECK_S:-240}" "$py" -m tools.gpu_check --cpu-dry-run \
        --out "$out/gpu_check.json"
    step "pytest" "$out/pytest.log" "${PYTEST_S:-300}" "$py" -m pytest -q -p no:cacheprovider -rs -m "gpu or trt" \
        ${PYTEST_TARGETS:-tests}
    step "bench" "$out/bench.log" "${BENCH_S:-120}" "$py" -m moe_denoise bench --gpu \
        --backends "${BENCH_BACKENDS:-torch-masked,$session_backends}" --batches "${BENCH_BATCHES:-1,2}" \
        --repeats 1 --warmup 1 --parity-images 2 --deadline 60 --batch-budget 5 --threads 2 --no-build-engines \
        --out-dir "$out" --cache-dir "$out/bench-cache"
    step "profile" "$out/profile.log" "${PROFILE_S:-120}" "$py" -m tools.gpu_profile --cpu-dry-run \
        --batches "${PROFILE_BATCHES:-1,4}" --out-dir "$out"
else
    step "gpu_check" "$out/gpu_check.log" "${GPU_CHECK_S:-85}" "$py" -m tools.gpu_check --out "$out/gpu_check.json"
    step "pytest" "$out/pytest.log" "${PYTEST_S:-95}" bash -c '"$0" -c "import sys, torch; sys.exit(0 if
torch.cuda.is_available() else \"torch sees no CUDA GPU: every GPU test would skip and read as passed\")" &&
exec "$0" -m pytest -q -p no:cacheprovider -rs -m "gpu or trt" $1' "$py" "${PYTEST_TARGETS:-tests}"
    step "bench" "$out/bench.log" "${BENCH_S:-230}" "$py" -m moe_denoise bench --gpu \
        --backends "${BENCH_BACKENDS:-$session_backends}" --batches "${BENCH_BATCHES:-1,4096,64,1024,8,256}" \
        --repeats 6 --batch-budget 10 --deadline "${BENCH_DEADLINE_S:-190}" --out-dir "$out" \
        --cache-dir "${TMPDIR:-/tmp}/moe-bench-cache"
    step "profile" "$out/profile.log" "${PROFILE_S:-55}" "$py" -m tools.gpu_profile --deadline 35 --out-dir "$out"
fi

"$py" - "$out" "$record" "$dry" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys
from pathlib import Path

out, record, dry, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
files = {"gpu_check": ["gpu_check.json", "gpu_check.log"], "pytest": ["pytest.log"],
         "bench": ["results.json", "results.md", "results.png", "bench.log"],
         "profile": ["profile.json", "profile.md", "profile.log"]}
steps = []
for line in record.read_text().splitlines():
    name, rc, secs, limit, log = line.split("\t")
    steps.append({"name": name, "exit_code": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                  "seconds": int(secs), "limit_s": int(limit), "log": Path(log).name,
                  "files": [f for f in files.get(name, []) if (out / f).is_file()]})
doc = {"mode": "cpu-dry-run" if dry else "gpu", "out_dir": str(out), "seconds": seconds, "steps": steps,
       "ok": all(s["skipped"] or s["exit_code"] == 0 for s in steps)}
(out / "session.json").write_text(json.dumps(doc, indent=2) + "\n")
record.unlink()
# the device tool returns at most 8 files: every file in one archive, the six most read beside it
import tarfile
names = sorted({f for fs in files.values() for f in fs} | {"session.json"})
with tarfile.open(out / "session.tgz", "w:gz") as tar:
    for name in names:
        if (out / name).is_file():
            tar.add(out / name, arcname=name)
kept = {"session.json", "gpu_check.json", "results.json", "results.md", "profile.json", "profile.md"}
for name in names:
    if name not in kept:
        (out / name).unlink(missing_ok=True)
for s in steps:
    state = "skipped" if s["skipped"] else f"exit {s['exit_code']} in {s['seconds']} s (limit {s['limit_s']} s)"
    print(f"gpu_session: {s['name']}: {state}; files: {', '.join(s['files']) or '-'}")
EOF
echo "gpu_session: $([ $status -eq 0 ] && echo 'every step passed' || echo 'a step failed: see its log') ($out, $(( $(date +%s) - started )) s; every file in session.tgz)"
exit $status
