#!/usr/bin/env bash
# One more training cycle on a lent GPU, sized to the time it has. The CPU here gives ~3 minutes an epoch; a
# GPU does an epoch in seconds, so a few minutes of device time buy what a whole session of CPU cannot.
#
#   tools/gpu_train.sh [OUT_DIR]          # default: $OUT if set, else runs/gpu
#
# A relative OUT_DIR ($OUT), DATA or INIT given is taken from the folder the script is started in (it then works
# from the repository root, where the defaults are). PYTHON (default python3) is the interpreter it runs.
#
# The CIFAR-10 training files (5 x 29.3 MiB, and the 2.9 MiB test batch) are more than one device call carries
# (64 MiB, the ~8 MiB working tree included), and a warm machine keeps ignored files between calls, so they
# travel in five calls made one right after the other (the machine stays warm 30 s: make each call as soon as the
# last one answers). Here, once:
#     mkdir -p .gpu_data && cp -r ../shared/data/cifar-10-batches-py .gpu_data/     # .gpu_data/ is git-ignored
# then five `run` calls, carry paths relative to the repository root (B = .gpu_data/cifar-10-batches-py):
#     carry [B/data_batch_1]  command: true        (one data batch a call: two, 58.6 MiB, and the tree are over 64)
#     carry [B/data_batch_2]  command: true
#     carry [B/data_batch_3]  command: true
#     carry [B/data_batch_4]  command: true
#     carry [B/data_batch_5, B/test_batch, B/batches.meta]  command: tools/gpu_train.sh   timeout_s: 540
# (the last call trains for TRAIN_S = 360 s after a probe epoch, then evaluates: about 7 minutes in all).
# If the machine went back between calls the loader says which files are missing; start again from the first.
# A task's device time (15 minutes, start-ups included) holds this or tools/gpu_session.sh, not both: choose one.
#
# What it does: a probe epoch on 4,000 images times the GPU, the cycle gets as many epochs as fit in TRAIN_S
# (cosine schedule over them, best checkpoint by validation), then `moe-denoise evaluate` scores the best
# weights on the test split. Written to OUT_DIR: best.safetensors, best.json, last.pt (to resume or go on
# here), train.log, evaluate.json. Settings (environment): PRESET (residual_refine_wide), INIT (the shipped
# weights), LR (3e-4), LOSS (psnr), SEED (5), TRAIN_S (360), MAX_EPOCHS (200), DATA (.gpu_data/cifar-10-batches-py),
# DEVICE (cuda), MAX_TRAIN (unset: all), BLIND (1: the blind recipe, every image
# its own noise level over [0, 75/255], clipped or not, a gray share (train --blind --mse-floor 1e-5 --zero-share
# 0.1); 0: the sigma-0.2 specialist's recipe), BAYER_SHARE (0; with BLIND=1: the share of colour images given
# demosaicked raw noise, train --bayer-share; docs/training.md says why and what a CPU try of 0.3 gave).
#
# Dry run on the CPU first (a minute; the GPU machine has the Python packages this script needs):
#     DEVICE=cpu DATA=../shared/data/cifar-10-batches-py MAX_TRAIN=64 PROBE_IMAGES=64 TRAIN_S=20 \
#         tools/gpu_train.sh "${TMPDIR:-/tmp}/gpu_train_dry_run"
set -u -o pipefail
from_caller() {  # a path the caller gave, from the caller's folder (the script moves to the repository root)
    case "$1" in
        /*) printf '%s' "$1" ;;
        *) printf '%s' "$PWD/$1" ;;
    esac
}
out=${1:-${OUT:-}}
[ -n "$out" ] && out=$(from_caller "$out")
data=${DATA:+$(from_caller "$DATA")}
init=${INIT:+$(from_caller "$INIT")}
cd "$(dirname "$0")/.."
out=${out:-runs/gpu}
data=${data:-.gpu_data/cifar-10-batches-py}
init=${init:-weights/moe_denoiser.safetensors}
mkdir -p "$out"
echo "gpu_train: writing to $(cd "$out" && pwd)"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
preset=${PRESET:-residual_refine_wide}
device=${DEVICE:-cuda}
budget=${TRAIN_S:-360}
limit=()
[ -n "${MAX_TRAIN:-}" ] && limit=(--max-train "$MAX_TRAIN" --max-val "$MAX_TRAIN")
recipe=()
[ "${BLIND:-1}" = "1" ] && recipe=(--blind --mse-floor 1e-5 --zero-share 0.1 --bayer-share "${BAYER_SHARE:-0}")
log="$out/train.log"
train() {  # train OUT_DIR EPOCHS [extra args]
    local dir=$1 epochs=$2
    shift 2
    "$py" -m moe_denoise train --data-dir "$data" --preset "$preset" --init-from "$init" --device "$device" \
        --lr "${LR:-3e-4}" --loss "${LOSS:-psnr}" --seed "${SEED:-5}" --epochs "$epochs" --out-dir "$dir" \
        --no-progress "${recipe[@]}" "$@"
}

{ date -u; "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and
torch.cuda.get_device_name())"; } 2>&1 | tee "$log"

if [[ $device == cuda* ]] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    # train's own message names its flag (--device cpu), not this script's setting
    echo "gpu_train: DEVICE=$device, but torch sees no CUDA GPU here; for a dry run on the CPU set DEVICE=cpu" \
        "(see the header)" | tee -a "$log" >&2
    exit 1
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT  # a failed probe left its folder in the temporary folder, one a try
t0=$(date +%s.%N)
train "$probe" 1 --max-train "${PROBE_IMAGES:-4000}" --max-val 1000 2>&1 | tee -a "$log" || exit 1
t1=$(date +%s.%N)
epochs=$("$py" - "$t0" "$t1" "$budget" "${MAX_EPOCHS:-200}" "${MAX_TRAIN:-45000}" "${PROBE_IMAGES:-4000}" \
    "$probe/best.json" <<'EOF'
import json, sys
t0, t1, budget, cap, images, probe = map(float, sys.argv[1:7])
try:  # the probe epoch's own time (training and validation) as train recorded it, without the process start-up
    seconds = json.load(open(sys.argv[7]))["history"][-1]["seconds"]
except (OSError, ValueError, KeyError, IndexError):  # no record: the whole probe, start-up included (too few epochs)
    seconds = t1 - t0
per_epoch = max(seconds * images / probe, 1e-3)  # its first-epoch warm-up is counted: errs on the short side, a little
print(max(1, min(int(cap), int(budget / per_epoch))))
EOF
)
rm -rf "$probe"
echo "== probe: $("$py" -c "print(round($t1 - $t0, 1))") s for ${PROBE_IMAGES:-4000} images; training $epochs epochs in ~${budget} s" | tee -a "$log"
train "$out/run" "$epochs" "${limit[@]}" 2>&1 | tee -a "$log" || exit 1
cp "$out/run/best.safetensors" "$out/run/best.json" "$out/run/last.pt" "$out/" && rm -rf "$out/run"
"$py" -m moe_denoise evaluate --weights "$out/best.safetensors" --data-dir "$data" --sigma 0.2 --json \
    > "$out/evaluate.json" 2>>"$log"
rc=$?
"$py" -c "import json, sys; r = json.load(open(sys.argv[1]))['protocols']['clip']['model']['psnr']; print(
f\"test, seed protocol: {r['mean']:.3f} +- {r['std']:.3f} dB\")" "$out/evaluate.json" 2>&1 | tee -a "$log"
exit $rc
