#!/usr/bin/env bash
# The CUDA checks, in one run on a GPU machine where facelab is installed (every package,
# e.g. from the wheels of `make wheels`): every package's CUDA path once at a tiny but real
# size, bf16 where the package trains with mixed precision, and the GPU rows of every
# benchmark. Each step has its own time limit; a failing step is reported and the next one
# runs. Everything goes to stdout and to OUT/gpu_check.log, which ends with one line per step
# (status, wall seconds, CPU seconds of the step's processes).
#
#   scripts/gpu_check.sh OUT [ONLY]
#
# ONLY: an extended regular expression; only the steps whose names match it run (default all).
# A step that samples uses the generator the step before it trained, so pick both with ONLY
# (e.g. 'synth-' or 'glotok').
#
# The budget is 10 minutes on one H100: the comment above each step gives its estimated GPU
# wall time (imports and CUDA start-up included), from its CPU time in the smoke mode below and
# its model size; they add up to about 600 s, right at the budget (README: "On a GPU"; the
# four privacy / template method steps were measured on an H100, the others are estimates).
#
# Environment:
#   GPU_CHECK_SMOKE=1  the CPU smoke mode: every step shrunk to a handful of steps / tiny sizes
#                      on the CPU (one time limit, GPU_CHECK_SMOKE_LIMIT s, default 240), the
#                      steps that only mean something on CUDA say "skipped (no CUDA)" and only
#                      check that their code imports. It checks the script, not the GPU: the log
#                      says so, and a run without CUDA outside this mode stops at once.
#   GPU_CHECK_LIST=1   print each step's name and command line (as run in this mode), run
#                      nothing; GPU_CHECK_LIST=nul: the same, \0-separated (for
#                      tests/test_gpu_check.py, which parses every command without running it).
set -u
out=${1:?usage: scripts/gpu_check.sh OUT [ONLY]}
only=${2:-.}
smoke=${GPU_CHECK_SMOKE:-0}
list=${GPU_CHECK_LIST:-0}
[ "$smoke" = 0 ] || smoke=1
case $list in 0 | nul) ;; *) list=1 ;; esac

# s GPU SMOKE: the value for this mode
s() { if [ "$smoke" = 1 ]; then echo "$2"; else echo "$1"; fi; }

if [ "$list" = 0 ]; then # (any GPU_CHECK_LIST value but 0 and nul: 1)
    mkdir -p "$out"
    work=$(mktemp -d)
    log="$out/gpu_check.log"
    : >"$log"
    if [ "$smoke" = 0 ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "no CUDA device: this is the GPU check (GPU_CHECK_SMOKE=1 runs the CPU smoke mode)" \
            | tee -a "$log"
        exit 2
    fi
    if [ "$smoke" = 1 ]; then
        echo "SMOKE MODE (CPU, tiny sizes): checks that every step's command runs; not a GPU check" \
            | tee -a "$log"
    fi
else
    work=WORK
fi
dev=$(s cuda cpu)          # for the commands that take --device
mp=$(s bf16 no)            # Accelerate mixed precision (the Trainer moves to the GPU by itself)
dtype=$(s bfloat16 float32) # sampling dtype
failed=()
summary=()

cpu_now=0
cpu_ticks() { # sets cpu_now: user + sys CPU seconds of this shell's finished children. `times`
    # must run in this shell (a $(...) subshell would count its own children only)
    times >"$work/.times"
    cpu_now=$(tail -1 "$work/.times" | awk '{
        split($1, a, /[ms]/); split($2, b, /[ms]/)
        printf "%.1f", a[1] * 60 + a[2] + b[1] * 60 + b[2] }')
}

step() { # step NAME LIMIT_S CMD...
    local name=$1 limit=$2 start c0 rc status
    shift 2
    [[ $name =~ $only ]] || return 0
    if [ "$list" = nul ]; then # for tests/test_gpu_check.py: STEP, name, argc, argv, each \0-ended
        printf '%s\0' STEP "$name" $# "$@"
        return 0
    elif [ "$list" = 1 ]; then
        printf 'STEP %s' "$name"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    [ "$smoke" = 1 ] && limit=${GPU_CHECK_SMOKE_LIMIT:-240}
    echo "=== $name (limit ${limit}s)" | tee -a "$log"
    start=$SECONDS
    cpu_ticks
    c0=$cpu_now
    timeout "$limit" bash -c '"$@"' _ "$@" 2>&1 | grep --line-buffered -v -E "^\s*$|it/s\]|s/it\]" | tee -a "$log"
    rc=${PIPESTATUS[0]}
    cpu_ticks
    cpu=$(awk -v a="$c0" -v b="$cpu_now" 'BEGIN { printf "%.0f", b - a }')
    echo "=== $name: rc $rc, $((SECONDS - start)) s wall, ${cpu} s CPU" | tee -a "$log"
    status=ok
    [ "$rc" = 0 ] || { status="FAILED (rc $rc)"; failed+=("$name"); }
    summary+=("$(printf '%-24s %-16s %5s s wall %5s s CPU' "$name" "$status" $((SECONDS - start)) "$cpu")")
}

# skipped NAME WHY: in the smoke mode, a step that only means something on CUDA is logged as
# "skipped (no CUDA)" after its --resolve form (run as step NAME) has checked that its code
# imports; its summary line says both
skipped() {
    [[ $1 =~ $only ]] || return 0
    [ "$list" = 0 ] || return 0
    echo "=== $1: skipped (no CUDA): $2" | tee -a "$log"
    local last=$((${#summary[@]} - 1)) resolved="(resolve step missing)"
    if [ "$last" -ge 0 ] && [[ ${summary[$last]} == "$1 "* ]]; then
        [[ ${summary[$last]} == *" ok "* ]] && resolved="imports resolved" || resolved="imports FAILED"
        unset "summary[$last]"
    fi
    summary+=("$(printf '%-24s %s' "$1" "skipped (no CUDA); $resolved")")
}

# short PREFIX N: N steps for the TrainConfig at --PREFIX, without the preset's LR milestones
# (given in epochs, they would fall outside the shortened run)
short() { echo "--${1}max-steps $2 --${1}milestones"; }
# smoke sizes: tiny PREFIX: 2 steps at batch 4 without warm-up; toy_data: 8 toyfaces people x 4
# images, 8 held-out people, 20 pairs
tiny() { echo "$(short "$1" 2) --${1}batch-size 4 --${1}warmup 0"; }
toy_data="--data.toy-identities 8 --data.toy-images-per-identity 4 --data.eval-identities 8 --data.eval-pairs 20"

# ---------------------------------------------------------------------------------------------
# core
# ~8 s: imports + CUDA start-up (every later step pays about 4 s of this too)
step env 30 python3 -c "
import torch, facelab.core as c
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (smoke mode)'
print('torch', torch.__version__, 'cuda', torch.version.cuda, name)
print('facelab-core', c.__version__)"

# ArcFace baseline, toy preset (IResNet-18 width 16, 56 px, 4,000 images, 6 epochs = 375 steps),
# bf16 on the GPU: accuracy and wall time. ~50 s (measured 89 s at the 12 epochs of an earlier
# preset, the data rendered on the CPU)
step core-toy-bf16 120 facelab train --preset toy --train.output-dir "$work/toy" \
    --train.mixed-precision "$mp" --train.no-progress \
    $(s "" "$(tiny train.) $toy_data")

# speed rows that have a CUDA path (each row: ours, the reference in the same run, the ratio)
if [ "$smoke" = 1 ]; then
    # the CPU forms of these rows take minutes at full size: import them, run nothing
    step trainer-cuda 90 python3 -m facelab.benchmarks.gpu_rows --resolve \
        --only "iresnet50 training step" "trainer overhead"
    skipped trainer-cuda "rows resolved above, not run"
    step speed-cuda 120 python3 -m facelab.benchmarks.gpu_rows --resolve --only codec slerpface
    skipped speed-cuda "rows resolved above, not run"
else
    # ~35 s: iresnet50 10 steps at batch 32 + the trainer-overhead pairs (20 steps x 3, bf16)
    step trainer-cuda 90 python3 -m facelab.benchmarks.gpu_rows \
        --only "iresnet50 training step" "trainer overhead"
    # ~60 s: codec at 256 images; SlerpFace protect / match / 1:N search over 1 M templates
    # (the gallery is built on the CPU) and its BioHashing / IronMask rows
    step speed-cuda 120 python3 -m facelab.benchmarks.gpu_rows --only codec slerpface
fi

# core Trainer throughput, iresnet50 + ArcFace head at 112 px, bf16, 40 steps per row, each
# speed option added in turn (channels-last, fused SGD, torch.compile), with model FLOP
# utilization, 5 warm-up + 20 timed steps per row. ~80 s at batch 512 (four rows of ~5 s;
# torch.compile about 50-60 s); the sweep over 128 256 512 is
# `python -m facelab.benchmarks.gpu_throughput` with its defaults (about 4 minutes)
step trainer-throughput 200 python3 -m facelab.benchmarks.gpu_throughput \
    --batch-sizes $(s "512" "2") --out "$out/throughput" \
    $(s "--steps 20 --warmup 5" "--variants baseline --backbone r18 --input-size 32 --classes 10 --steps 1 --warmup 1")

# ---------------------------------------------------------------------------------------------
# privacy-preserving recognition and templates: every method's toy recipe through the CUDA path
# (Accelerate picks the GPU), bf16
# ~35 s (measured 35 s on an H100)
step duetface-toy-bf16 60 facelab duetface train --preset toy --output-dir "$work/duet" \
    --client-train.mixed-precision "$mp" --server-train.mixed-precision "$mp" \
    --client-train.no-progress --server-train.no-progress \
    $(s "" "$(tiny client-train.) $(tiny server-train.) $toy_data")
# ~21 s (measured)
step partialface-toy-bf16 60 facelab partialface train --preset toy \
    --train.output-dir "$work/partial" --train.mixed-precision "$mp" --train.no-progress \
    $(s "" "$(tiny train.) $toy_data")
# ~23 s (measured)
step minusface-toy-bf16 60 facelab minusface train --preset toy --output-dir "$work/minus" \
    --stage1.mixed-precision "$mp" --stage2.mixed-precision "$mp" \
    --stage1.no-progress --stage2.no-progress \
    $(s "" "$(tiny stage1.) $(tiny stage2.) $toy_data")
# ~53 s (measured; fp32: the recipe has no mixed-precision flag)
step slerpface-toy 120 facelab slerpface train --preset toy --output-dir "$work/slerp" \
    --no-progress $(s "" "--max-steps 21 --num-identities 8 --images-per-identity 4 --batch-size 4")

# ---------------------------------------------------------------------------------------------
# synthetic faces: each generator's toy preset (pixel space, 32 px, the toy reference UNet)
# trained for a few hundred steps in bf16, then a small dataset sampled from what it trained
gen_train=$(s "$(short train. 200) --train.batch-size 64" "$(tiny train.)")
gen_data=$(s "" "--data.toy-identities 4 --data.toy-images-per-identity 2")
gen_sample=$(s "--identities 8 --images-per-identity 8 --steps 25" "--identities 4 --images-per-identity 2 --steps 2")

# ~10 s: 200 steps of the ~3 M-parameter toy UNet at batch 64 (~25 ms a step with AdamW and the
# EMA: launch-bound) + 960 toy images rendered + start-up
step synth-train 90 facelab synth train --preset toy --train.output-dir "$work/synth" \
    --train.mixed-precision "$mp" --train.no-progress $gen_train $gen_data
# ~6 s: 64 images, 25 DDIM steps with guidance (two forwards per step), bf16; written at 56 px
# (the FRCSyn toy recognizer's input) as the training set of the frcsyn step
step synth-sample 60 facelab synth sample --generator "$work/synth" --out "$work/synth-data" \
    $gen_sample --image-size 56 --clip-sample --device "$dev" --dtype "$dtype" --no-progress

# ~10 s (as synth-train)
step uiface-train 90 facelab uiface train --preset toy --train.output-dir "$work/uiface" \
    --train.mixed-precision "$mp" --train.no-progress $gen_train $gen_data
# ~6 s: two-stage sampling (empty context, then attention injection), toy thresholds
step uiface-sample 60 facelab uiface sample --generator "$work/uiface" --out "$work/uiface-data" \
    --preset toy $gen_sample --image-size 32 --device "$dev" --dtype "$dtype" --no-progress

# ~12 s: as synth-train plus the steering head and its regularizer
step steerface-train 90 facelab steerface train --preset toy \
    --synth.train.output-dir "$work/steer" --synth.train.mixed-precision "$mp" \
    --synth.train.no-progress ${gen_train//--train./--synth.train.} ${gen_data//--data./--synth.data.}
# ~6 s
step steerface-sample 60 facelab steerface sample --generator "$work/steer" \
    --out "$work/steer-data" $gen_sample --image-size 32 --clip-sample --device "$dev" \
    --dtype "$dtype" --no-progress

# ~5 s: the subject style prior fitted on styled toyfaces (CPU work, 320 small images)
step morphface-prior 60 facelab morphface fit-prior --out "$work/morph-prior.safetensors" \
    --toy-identities $(s 40 4) --toy-images-per-identity $(s 8 2)
# ~14 s: as synth-train plus rendering the style maps and the style encoder
step morphface-train 120 facelab morphface train --preset toy --train.output-dir "$work/morph" \
    --train.mixed-precision "$mp" --train.no-progress $gen_train $gen_data
# ~7 s: identities drawn from the prior, ID + style guidance
step morphface-sample 60 facelab morphface sample --generator "$work/morph" \
    --prior "$work/morph-prior.safetensors" --out "$work/morph-data" $gen_sample \
    --image-size 32 --device "$dev" --no-progress

# ~15 s: FRCSyn's team protocol on the synthesis base's 64 images (sub-task 2.1, the toy
# IResNet-18 recognizer, 200 steps in bf16), scored the challenge's way on small toy editions
# of its evaluation sets
step frcsyn-eval 120 facelab frcsyn run --preset toy --subtask 2.1 --train "$work/synth-data" \
    --no-check --no-plots --output-dir "$work/frcsyn" --recipe.train.mixed-precision "$mp" \
    --recipe.train.no-progress \
    $(s "$(short recipe.train. 200)" "$(tiny recipe.train.)") \
    --toy.group-identities $(s 10 4) --toy.group-images $(s 4 4) --toy.group-pairs $(s 100 20) \
    --toy.hard-identities $(s 40 10) --toy.hard-pairs $(s 200 20)

# ---------------------------------------------------------------------------------------------
# tokenizer: GloTok's toy tokenizer, its AR generator on the tokens, samples from both
# ~18 s: the toy teacher recognizer (~90 steps) and its k-means codebook, then 200 tokenizer
# steps (32 px, dual codebook + residual head) at batch 32, bf16, and the eval on 500 images
step glotok-train 90 facelab glotok train --preset toy --train.output-dir "$work/glotok" \
    --train.mixed-precision "$mp" --train.no-progress \
    $(s "$(short train. 200)" "$(tiny train.) --data.toy-identities 4 --data.toy-images-per-identity 4 --model.semantic-codes 8 --model.visual-codes 8 --eval-images 8 --teacher.toy.identities 4 --teacher.toy.images-per-identity 4 --teacher.toy.epochs 1 --teacher.toy.batch-size 4")
# ~10 s: the training set tokenized, then 200 steps of the class-conditional transformer
step glotok-train-ar 90 facelab glotok train-ar --preset toy --tokenizer "$work/glotok/tokenizer" \
    --train.output-dir "$work/glotok-ar" --train.mixed-precision "$mp" --train.no-progress \
    $(s "$(short train. 200)" "$(tiny train.) --data.toy-identities 4 --data.toy-images-per-identity 2")
# ~6 s: 4 classes x 4 images, KV cache
step glotok-sample 60 facelab glotok sample --generator "$work/glotok-ar/generator" \
    --tokenizer "$work/glotok/tokenizer" --classes 0 1 2 3 --per-class $(s 4 1) \
    --out "$work/glotok-samples" --device "$dev"

# ---------------------------------------------------------------------------------------------
# iris: ImmerIris NormFree on procedural ocular images, then its evaluation
# ~20 s: the toy set (20 of the preset's 120 subjects, 1,280 images; rendering is CPU work, ~25
# images/s per core) rendered, 200 steps of the r18 NormFree network, bf16
step immeriris-train 120 facelab immeriris train --preset toy --train.output-dir "$work/iris" \
    --train.mixed-precision "$mp" --train.no-progress \
    $(s "$(short train. 200) --data.num-subjects 20" "$(tiny train.) --data.num-subjects 4")
# ~15 s: NormFree and the classical pipeline on the protocols, oracle segmentation, 4 subjects
# (792 images, rendered on the CPU)
step immeriris-eval 120 facelab immeriris eval --normfree "$work/iris/model" --subjects $(s 4 2) \
    --segmentations oracle --no-plots --out "$work/iris-eval"

# ---------------------------------------------------------------------------------------------
# federated learning: local training on the core Trainer (so on the GPU); no mixed-precision
# flag in either CLI, fp32
# ~15 s: ARIBA against BadNets on digits, 5 rounds of 10 clients (50 short local trainings)
step ariba-simulate 90 facelab ariba simulate --cfg.strategy ariba --cfg.attack.kind badnets \
    --cfg.rounds $(s 5 1) --out "$work/ariba"
# ~12 s: VFL-AFE on toyfaces at noise multiplier 1, 2 epochs
step vflafe-train 90 facelab vflafe train --dataset toyfaces --mode afe --noise-multiplier 1.0 \
    --epochs $(s 2 1) --out "$work/vflafe"

# ---------------------------------------------------------------------------------------------
# the GPU rows of the <method>_bench modules at full size (small=False): synth and uiface (the
# paper-size 216 M UNet sampling 50 DDIM steps at batch 32-64, bf16 / fp16, against a bare loop,
# with peak memory) and morphface (the vectorized rasterizer on CUDA); their CPU rows run too, at
# full size. ~45 s. The other bench modules have CPU rows only (`facelab bench speed`);
# GPU_CHECK_ALL_ROWS=1 adds them here at full size (bench-rows-cpu, outside the 10-minute budget)
if [ "$smoke" = 1 ]; then
    step bench-rows 240 python3 -m facelab.benchmarks.gpu_rows --resolve --all-bench
    skipped bench-rows "every module resolved above, none run"
else
    step bench-rows 150 python3 -m facelab.benchmarks.gpu_rows
    if [ "${GPU_CHECK_ALL_ROWS:-0}" = 1 ]; then
        step bench-rows-cpu 600 python3 -m facelab.benchmarks.gpu_rows --only \
            $(python3 -c "from facelab.benchmarks import gpu_rows as g; print(*g.cpu_bench())")
    elif [[ bench-rows-cpu =~ $only ]] && [ "$list" = 0 ]; then
        echo "=== bench-rows-cpu: not run (GPU_CHECK_ALL_ROWS=1 runs the CPU-only bench modules)" \
            | tee -a "$log"
    fi
fi

[ "$list" = 0 ] || exit 0
rm -rf "$work"
{
    echo "--- summary$([ "$smoke" = 1 ] && echo " (SMOKE MODE: CPU, tiny sizes; not a GPU check)")"
    printf '%s\n' "${summary[@]}"
} | tee -a "$log"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" | tee -a "$log"
    exit 1
fi
echo "all steps passed$([ "$smoke" = 1 ] && echo " (smoke mode)")" | tee -a "$log"
