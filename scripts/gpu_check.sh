#!/usr/bin/env bash
# The CUDA checks, in one run on a GPU machine where facelab is installed (every package,
# e.g. from the wheels of `make wheels`). Each step has its own time limit; a failing step is
# reported and the next one runs. Everything goes to stdout and to OUT/gpu_check.log.
#
#   scripts/gpu_check.sh OUT [ONLY]
#
# ONLY: an extended regular expression; only the steps whose names match it run (default all).
set -u
out=${1:?usage: scripts/gpu_check.sh OUT [ONLY]}
only=${2:-.}
mkdir -p "$out"
work=$(mktemp -d)
log="$out/gpu_check.log"
: >"$log"
failed=()

step() { # step NAME LIMIT_S CMD...
    local name=$1 limit=$2 start rc
    shift 2
    [[ $name =~ $only ]] || return 0
    echo "=== $name (limit ${limit}s)" | tee -a "$log"
    start=$SECONDS
    timeout "$limit" bash -c '"$@"' _ "$@" 2>&1 | grep --line-buffered -v -E "^\s*$|it/s\]|s/it\]" | tee -a "$log"
    rc=${PIPESTATUS[0]}
    echo "=== $name: rc $rc, $((SECONDS - start)) s" | tee -a "$log"
    [ "$rc" = 0 ] || failed+=("$name")
}

step env 30 python3 -c "
import torch, facelab.core as c
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print('facelab-core', c.__version__)"

# ArcFace baseline, toy preset, bf16 on the GPU: accuracy and wall time
step core-toy-bf16 120 facelab train --preset toy --train.output-dir "$work/toy" \
    --train.mixed-precision bf16 --train.no-progress

# speed rows that have a CUDA path (each row: ours, the reference in the same run, the ratio)
rows() { # rows FUNCTION_CALL...: print the rows of facelab.benchmarks functions
    python3 -c "
import sys
from facelab.benchmarks.speed import codec_compact, iresnet50_train_step
from facelab.benchmarks.trainer_overhead import run_trainer_overhead
from facelab.benchmarks.slerpface_speed import run_slerpface_speed
for call in sys.argv[1:]:
    for r in eval(call):
        print(f\"{r['benchmark']} | {r['ours']} {r['ours/s']:,.1f}/s | {r['reference']} \"
              f\"{r['reference/s']:,.1f}/s | x{r['speedup']:.3g} | {r['note']}\", flush=True)" "$@"
}
export -f rows
step trainer-cuda 90 rows "iresnet50_train_step(False)" "run_trainer_overhead(False)"
step speed-cuda 120 rows "codec_compact()" "run_slerpface_speed(False)"

# core Trainer throughput at training batch sizes, each speed option added in turn
# (channels-last, fused SGD, torch.compile), with model FLOP utilization
step trainer-throughput 360 python3 -m facelab.benchmarks.gpu_throughput \
    --batch-sizes 128 256 512 --out "$out/throughput"

# every method's toy recipe through the CUDA path (Accelerate picks the GPU), bf16
step duetface-toy-bf16 50 facelab duetface train --preset toy --output-dir "$work/duet" \
    --client-train.mixed-precision bf16 --server-train.mixed-precision bf16 \
    --client-train.no-progress --server-train.no-progress
step partialface-toy-bf16 50 facelab partialface train --preset toy \
    --train.output-dir "$work/partial" --train.mixed-precision bf16 --train.no-progress
step minusface-toy-bf16 50 facelab minusface train --preset toy --output-dir "$work/minus" \
    --stage1.mixed-precision bf16 --stage2.mixed-precision bf16 \
    --stage1.no-progress --stage2.no-progress
step slerpface-toy 150 facelab slerpface train --preset toy --output-dir "$work/slerp" \
    --no-progress

rm -rf "$work"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" | tee -a "$log"
    exit 1
fi
echo "all steps passed" | tee -a "$log"
