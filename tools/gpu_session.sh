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
# On a lent GPU, through the device tool: command "tools/gpu_session.sh", timeout_s 600 (the script stops itself
# within 9.5 minutes at worst: its step limits, 10 s for each step to be killed, the 60 s check of the interpreter),
# carry ["build"] when build/trt_launch_record.json exists (see below; build/ is ignored by git, so it travels only
# when carried). The device tool sets $OUT, so everything lands there and comes back (it returns at most 8 files:
# the steps work in a temporary folder, and after each step every file so far is packed into $OUT/session.tgz,
# with six beside it: session.json, gpu_check.json, results.json, results.md, profile.json, profile.md; so a run
# stopped from outside still returns the steps it finished, and never more than 8 files). Unpack session.tgz into a new
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
#                                             the kernel, the TensorRT stream and graph tests (TensorRT if present),
#                                             from the files that hold them (GPU_TESTS below; collecting all 1,500
#                                             tests took 19 s, and one module failing to import on the GPU machine's
#                                             other versions would have cancelled them all), each named as it runs
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
# checks, so a step stopped by its limit leaves what it did. The bench's and the profile's reports go to their logs
# only (the device tool returns the last 12,000 characters of the output: the summary at the end gives each step's
# telling lines; the paths its lines name are in the work folder, removed at the end). session.tgz holds every
# step's log beside its results: gpu_check.json, gpu_check.log, pytest.log, results.json, results.md, results.png,
# bench.log, profile.json, profile.md, profile.log, and session.json (every step: exit code, seconds, limit,
# files); OUT_DIR holds session.tgz and six of them (above). Outputs of an earlier run in OUT_DIR are removed first. Time limits in whole seconds: GPU_CHECK_S (85), PYTEST_S (95), BENCH_S (230,
# its timing deadline BENCH_DEADLINE_S 190 from its start, compilations included; past half of it no more backends
# are prepared), PROFILE_S (55): 7.8 minutes of steps. Where TensorRT is installed, gpu_check builds four engines,
# which does not fit beside the other steps in one 10-minute command: give it a call of its own
# (GPU_SESSION_STEPS=gpu_check GPU_CHECK_S=480, timeout_s 600) and the other steps another
# (GPU_SESSION_STEPS=pytest,bench,profile; none runs no step). A step name or a limit that is not one stops the script before any step
# (a misspelt step was skipped in silence, and the run said 'every step passed'). GPU_SESSION_STEPS=bench,profile runs
# only those steps; BENCH_BACKENDS and BENCH_BATCHES override the bench's. In the GPU run the test step fails
# when torch sees no CUDA GPU (its tests would all skip and read as passed).
#
# --dry-run (or GPU_SESSION_DRY_RUN=1): the same steps on a CPU machine, small, to check the script before a GPU
# session (a test runs it): gpu_check --cpu-dry-run, the GPU-marked tests (they skip, each with its reason),
# bench --gpu at batches 1,2 with one round (the CUDA backends are listed unavailable with the reason; torch-masked
# is timed on the CPU), gpu_profile --cpu-dry-run. OUT_DIR defaults to ${TMPDIR:-/tmp}/gpu_session_dry_run there,
# never to benchmarks/results/gpu. PYTEST_TARGETS (default: GPU_TESTS) narrows the test step.
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
steps=${GPU_SESSION_STEPS:-gpu_check,pytest,bench,profile}
for name in ${steps//,/ }; do  # a misspelt step was skipped in silence, and the run said 'every step passed'
    case "$name" in
        gpu_check | pytest | bench | profile | none) ;;
        *) echo "gpu_session.sh: GPU_SESSION_STEPS=$steps names '$name', which is no step; give some of gpu_check," \
               "pytest, bench, profile (comma-separated), or none" >&2; exit 2 ;;
    esac
done
for var in GPU_CHECK_S PYTEST_S BENCH_S PROFILE_S BENCH_DEADLINE_S; do  # '4m' ran, then broke the summary
    value=${!var:-}
    if [ -n "$value" ] && ! [[ "$value" =~ ^[0-9]+$ ]]; then
        echo "gpu_session.sh: $var=$value is not a whole number of seconds (e.g. 240, not 4m)" >&2
        exit 2
    fi
done
# the files holding the GPU- and TensorRT-marked tests (a test keeps the list in step)
GPU_TESTS="tests/export/test_trt_engines.py tests/moe_model/test_train.py tests/runtime/test_cuda_graphs_gpu.py
tests/runtime/test_trt_graphs.py tests/runtime/test_trt_stream.py tests/topk_attention/test_triton_kernel.py"
needed="torch safetensors PIL tqdm"
[[ ",$steps," == *",pytest,"* ]] && needed="$needed pytest"
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
status=0
started=$(date +%s)
# the steps work here; $out gets session.tgz and six files after each step (never more than 8 files)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session_work.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
record="$work/steps.tsv"
# an earlier run's outputs would be listed (and judged) as this run's
rm -f "$out"/{gpu_check.json,gpu_check.log,pytest.log,results.json,results.md,results.png,bench.log} \
    "$out"/{profile.json,profile.md,profile.log,session.json,session.tgz,.session_steps.tsv}

pack() {  # pack FINAL: session.json and session.tgz of every file so far, and the six most read, into $out
    "$py" - "$work" "$out" "$record" "$dry" "$(( $(date +%s) - started ))" "$1" <<'EOF'
import json, os, re, shutil, sys, tarfile
from pathlib import Path

work, out, record = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
dry, seconds, final = sys.argv[4] == "1", int(sys.argv[5]), sys.argv[6] == "1"
files = {"gpu_check": ["gpu_check.json", "gpu_check.log"], "pytest": ["pytest.log"],
         "bench": ["results.json", "results.md", "results.png", "bench.log"],
         "profile": ["profile.json", "profile.md", "profile.log"]}
steps = []
for line in record.read_text().splitlines() if record.is_file() else []:
    name, rc, secs, limit, log = line.split("\t")
    steps.append({"name": name, "exit_code": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                  "seconds": int(secs), "limit_s": int(limit), "log": Path(log).name,
                  "files": [f for f in files.get(name, []) if (work / f).is_file()]})
doc = {"mode": "cpu-dry-run" if dry else "gpu", "out_dir": str(out), "seconds": seconds, "steps": steps,
       "complete": final, "ok": all(s["skipped"] or s["exit_code"] == 0 for s in steps)}
(work / "session.json").write_text(json.dumps(doc, indent=2) + "\n")
names = sorted({f for fs in files.values() for f in fs} | {"session.json"})
with tarfile.open(out / ".session.tgz.tmp", "w:gz") as tar:  # replaced whole: a stop from outside leaves the last
    for name in names:
        if (work / name).is_file():
            tar.add(work / name, arcname=name)
os.replace(out / ".session.tgz.tmp", out / "session.tgz")
for name in ("session.json", "gpu_check.json", "results.json", "results.md", "profile.json", "profile.md"):
    if (work / name).is_file():
        shutil.copyfile(work / name, out / f".{name}.tmp")
        os.replace(out / f".{name}.tmp", out / name)
if final:  # each step's state and its telling lines: the output's tail is all the device tool returns
    telling = re.compile(r"ERROR|overall|passed|failed|skipped in|error|Traceback|timed out|Killed|wrote|met|missed")
    for s in steps:
        state = "skipped" if s["skipped"] else f"exit {s['exit_code']} in {s['seconds']} s (limit {s['limit_s']} s)"
        print(f"gpu_session: {s['name']}: {state}; files: {', '.join(s['files']) or '-'}")
        log = work / s["log"]
        lines = log.read_text(errors="replace").splitlines() if log.is_file() and not s["skipped"] else []
        for line in [ln for ln in lines if telling.search(ln)][-3:]:
            print(f"    {line[:300]}")
EOF
}

step() {  # step NAME LOG SECONDS shown|quiet COMMAND...: quiet, its output goes to its log alone (a report)
    local name=$1 log=$2 limit=$3 shown=$4
    shift 4
    if [[ ",$steps," != *",$name,"* ]]; then
        echo "== $name: skipped (not in GPU_SESSION_STEPS=$steps)"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "$limit" "$log" >> "$record"
        return
    fi
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local t0=$SECONDS rc
    if [ "$shown" = shown ]; then
        timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
        rc=$?
    else
        timeout -k 10 "$limit" "$@" >> "$log" 2>&1
        rc=$?
        tail -n 4 "$log"
    fi
    echo "== $name: exit $rc $(date -u +%H:%M:%S)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" "$log" >> "$record"
    [ "$rc" -eq 0 ] || status=1
    pack 0 || echo "gpu_session: packing after $name failed (above)" >&2
}

{
    date -u
    echo "gpu_session: $([ "$dry" = 1 ] && echo 'DRY RUN on the CPU' || echo 'GPU run') -> $out; steps: $steps"
    echo "gpu_session: the steps work in $work (their lines name it); after each, all is packed into $out/session.tgz"
    { command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1; } || echo "nvidia-smi: not found or failed"
    "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee "$work/gpu_check.log"

session_backends=$("$py" -c "from benchmarks.backends import SESSION_BACKENDS; print(','.join(SESSION_BACKENDS))")
if [ "$dry" = 1 ]; then
    step "gpu_check" "$work/gpu_check.log" "${GPU_CHECK_S:-240}" shown "$py" -m tools.gpu_check --cpu-dry-run \
        --out "$work/gpu_check.json"
    # shellcheck disable=SC2086  # the test files are words
    step "pytest" "$work/pytest.log" "${PYTEST_S:-300}" shown "$py" -m pytest -v -p no:cacheprovider -rs \
        --continue-on-collection-errors --durations=10 -m "gpu or trt" ${PYTEST_TARGETS:-$GPU_TESTS}
    step "bench" "$work/bench.log" "${BENCH_S:-120}" quiet "$py" -m moe_denoise bench --gpu \
        --backends "${BENCH_BACKENDS:-torch-masked,$session_backends}" --batches "${BENCH_BATCHES:-1,2}" \
        --repeats 1 --warmup 1 --parity-images 2 --deadline 60 --batch-budget 5 --threads 2 --no-build-engines \
        --out-dir "$work" --cache-dir "$work/bench-cache"
    step "profile" "$work/profile.log" "${PROFILE_S:-120}" quiet "$py" -m tools.gpu_profile --cpu-dry-run \
        --batches "${PROFILE_BATCHES:-1,4}" --out-dir "$work"
else
    step "gpu_check" "$work/gpu_check.log" "${GPU_CHECK_S:-85}" shown "$py" -m tools.gpu_check \
        --out "$work/gpu_check.json"
    step "pytest" "$work/pytest.log" "${PYTEST_S:-95}" shown bash -c '"$0" -c "import sys, torch; sys.exit(0 if
torch.cuda.is_available() else \"torch sees no CUDA GPU: every GPU test would skip and read as passed\")" &&
exec "$0" -m pytest -v -p no:cacheprovider -rs --continue-on-collection-errors --durations=10 -m "gpu or trt" $1' \
        "$py" "${PYTEST_TARGETS:-$GPU_TESTS}"
    step "bench" "$work/bench.log" "${BENCH_S:-230}" quiet "$py" -m moe_denoise bench --gpu \
        --backends "${BENCH_BACKENDS:-$session_backends}" --batches "${BENCH_BATCHES:-1,4096,64,1024,8,256}" \
        --repeats 6 --batch-budget 10 --deadline "${BENCH_DEADLINE_S:-190}" --out-dir "$work" \
        --cache-dir "${TMPDIR:-/tmp}/moe-bench-cache"
    step "profile" "$work/profile.log" "${PROFILE_S:-55}" quiet "$py" -m tools.gpu_profile --deadline 35 \
        --out-dir "$work"
fi

if ! pack 1; then
    echo "gpu_session: the summary failed (above): session.json and session.tgz in $out may hold the steps before" \
        "the last one only" >&2
    status=1
fi
echo "gpu_session: $([ $status -eq 0 ] && echo 'every step passed' || echo 'a step failed: see its log') ($out, $(( $(date +%s) - started )) s; every file in session.tgz)"
exit $status
