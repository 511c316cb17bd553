#!/usr/bin/env bash
# Every GPU check of the project in one command, for a GPU machine lent for a few minutes (no install needed:
# it runs from the repository root with PYTHONPATH, on whatever torch / triton / onnxruntime the machine has).
#
#   tools/gpu_session.sh [OUT_DIR]        # default: $OUT if set, else benchmarks/results/gpu
#
# Before it, on a machine with the package index (the GPU machine has none), let TensorRT's own plugin layer
# compute the launch parameters our plugin asks for, and carry the record with the run (carry: ["build"]):
#   python -m tools.trt_layer.drive --version 11.4.0.106 --target cuda:90 -o build/trt_launch_record.json
#
# 1. python -m tools.gpu_check           kernel correctness on the GPU, kernel timings, the AOT artifact
#                                              launched through the CUDA driver (and CuPy), the kernels launched
#                                              as TensorRT's plugin layer says (the record), TensorRT if importable
# 2. pytest                                    the whole suite, so the GPU-marked tests run instead of skipping
# 3. moe-denoise bench --gpu                  the GPU backends, parity-checked, CUDA events, batch sweep
#
# Each step has its own time limit and the next one runs whatever the last one did, so one failure costs one
# step, not the session. Written to OUT_DIR (7 files, each step's log beside its results): gpu_check.json,
# gpu_check.log, pytest.log, results.json, results.md, results.png, bench.log. About 8 minutes in all.
# Time limits (seconds) can be shortened with GPU_CHECK_S, PYTEST_S, BENCH_S and BENCH_DEADLINE_S.
set -u -o pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
status=0
rm -f "$out/pytest.log" "$out/bench.log"

step() {  # step NAME LOG SECONDS COMMAND...
    local name=$1 log=$2 limit=$3
    shift 3
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=$?
    echo "== $name: exit $rc $(date -u +%H:%M:%S)"
    [ "$rc" -eq 0 ] || status=1
}

{
    date -u
    nvidia-smi -L 2>&1 || echo "nvidia-smi: not found"
    "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee "$out/gpu_check.log"

step "gpu_check" "$out/gpu_check.log" "${GPU_CHECK_S:-240}" "$py" -m tools.gpu_check \
    --out "$out/gpu_check.json"
step "pytest" "$out/pytest.log" "${PYTEST_S:-150}" "$py" -m pytest -q -p no:cacheprovider tests
step "bench --gpu" "$out/bench.log" "${BENCH_S:-330}" "$py" -m moe_denoise bench --gpu \
    --deadline "${BENCH_DEADLINE_S:-220}" --batch-budget 25 --out-dir "$out" --cache-dir "${TMPDIR:-/tmp}/moe-bench-cache"
echo "gpu_session: $([ $status -eq 0 ] && echo 'every step passed' || echo 'a step failed: see its log') ($out)"
exit $status
