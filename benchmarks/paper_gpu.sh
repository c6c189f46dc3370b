#!/usr/bin/env bash
# The paper preset on one GPU, within a time limit, and the recipes compared at the paper's budget.
#
#   benchmarks/paper_gpu.sh OUT [SECONDS]
#
# Runs `monosemantic run --preset paper` (the 2023 recipe: LM A, standard-4096 on 200M streamed
# activations, LM B, B's SAE and a reseeded A SAE, universality over 10M tokens), and beside it
# TopK-4096 (with its own universality), the April-2024 variant and TopK-16384 on the same LM A,
# in priority order: whatever the time limit (default 540 s) leaves out is reported as skipped.
# Two runs share the GPU at a time. Everything lands in OUT: log.txt, gpu.txt (nvidia-smi),
# results.tgz (every run.json, universality.json and plot), weights.tgz.* (float16 LMs and 4,096-feature
# SAEs, to analyse on a CPU) and summary.txt (the table it prints last).
#
# Environment: DEVICE (default cuda); CARRY, a run directory whose corpus stage is done (the BPE
# of the bundled corpus takes a minute; copying a finished one saves it); EXTRA, more --set
# arguments for every run (the CPU rehearsal shrinks the budgets with it); RUNS, where the run
# directories go (default OUT/runs; they hold GBs of checkpoints on the GPU run).
set -uo pipefail
out=${1:?usage: paper_gpu.sh OUT [SECONDS]}
budget=${2:-540}
device=${DEVICE:-cuda}
runs=${RUNS:-$out/runs}
read -ra extra <<< "${EXTRA:-}"
deadline=$(( $(date +%s) + budget ))
mkdir -p "$out" "$runs"
log=$out/log.txt
: > "$log"

left() { echo $(( deadline - $(date +%s) )); }

# step NAME RUN_DIR ARGS...: one `monosemantic run` with the time left; never aborts the script.
step() {
    local name=$1 dir=$2; shift 2
    local t; t=$(left)
    if (( t < 20 )); then echo "SKIPPED $name: ${t}s left" | tee -a "$log"; return 1; fi
    echo "=== $name: start $(date +%T), ${t}s left" | tee -a "$log"
    local start=$SECONDS
    timeout "$t" monosemantic --quiet run --preset paper --device "$device" --out "$dir" "${extra[@]}" "$@" \
        >> "$log" 2>&1
    local rc=$?
    echo "=== $name: rc $rc after $(( SECONDS - start ))s" | tee -a "$log"
    return $rc
}

# fork FROM TO: a new run directory that starts from FROM's corpus and LM A (no SAEs).
fork() {
    mkdir -p "$2"
    cp -r "$1/tokens" "$1/tokenizer.json" "$1/lm" "$1/run.json" "$2/"
}

# take_lm_b FROM TO: hand run FROM's model B (its LM and harvest, a second run in RUN/model_b/) to
# run TO, once harvested: TO's universality then finds them current and trains only B's SAE.
take_lm_b() {
    until python -c "import json, sys; sys.exit('harvest' not in json.load(open('$1/model_b/run.json'))['stages'])" \
        2>/dev/null || (( $(left) < 20 )); do sleep 2; done
    mkdir -p "$2/model_b"
    cp -r "$1/model_b/lm" "$1/model_b/activations" "$1/model_b/run.json" "$2/model_b/"
}

if [[ $device == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
    nvidia-smi dmon -s um -d 5 >> "$out/gpu.txt" 2>&1 &
    dmon=$!
fi

std=$runs/standard; topk=$runs/topk; s2024=$runs/standard2024; wide=$runs/topk16k
mkdir -p "$std"
[[ -n ${CARRY:-} ]] && cp -r "$CARRY"/. "$std/"
topk_args=(--set sae.variant=topk)

step "corpus + LM A" "$std" --upto lm
fork "$std" "$topk"; fork "$std" "$s2024"; fork "$std" "$wide"

# Two at a time: the 2023 recipe end to end | TopK-4096, the April-2024 variant, then TopK's universality.
step "2023 recipe: standard-4096 + universality" "$std" --upto universality --set 'sae.sizes=[4096]' &
first=$!
{
    step "TopK-4096" "$topk" --upto sae "${topk_args[@]}" --set 'sae.sizes=[4096]'
    step "April-2024 update: standard2024-4096" "$s2024" --upto sae --set sae.variant=standard2024 \
        --set 'sae.sizes=[4096]'
    take_lm_b "$std" "$topk"
    step "TopK-4096 universality" "$topk" --upto universality "${topk_args[@]}" --set 'sae.sizes=[4096]' \
        --set universality.sae=topk-4096
} &
second=$!
wait $first
step "TopK-16384" "$wide" --upto sae "${topk_args[@]}" --set 'sae.sizes=[16384]'
wait $second
[[ -n ${dmon:-} ]] && kill "$dmon" 2>/dev/null

(cd "$runs" && tar czf "$out/results.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' \
    --exclude='tokens' --exclude='*checkpoint*' .)
python3 "$(dirname "$0")/paper_summary.py" "$runs" --weights-to "$out" | tee "$out/summary.txt"
