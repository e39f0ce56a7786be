#!/usr/bin/env bash
# On a GPU machine: every measurement of benchmarks/README.md, step by step, then the full replication's
# expected wall-clock. Each step writes its JSON and its printed output (.log; the estimate: .md) into one
# results folder.
#
#   bash benchmarks/gpu.sh [STEP ...]      steps: profile peft all-blocks wall-clock cuda-tests
#                                          no-checkpointing compile (default: all, in this order)
#
# A step that fails does not stop the steps after it (a lease is short); the script then ends with status 1
# and names the failed steps.
#
# The default order puts the targets of benchmarks/README.md ("What to read in the output") first, so that a
# device lease cut short ("On a 15-minute lease") loses the least: profile, then ours against peft, then
# DoRA/LoRA with every block checkpointed, the estimate and the CUDA tests; no-checkpointing and compile last.
#
# Environment: PYTHON is the interpreter (default python3). RESULTS names the folder (default
# benchmarks/results/<date>-<gpu name>; give the same one when the steps run in separate calls). TIMING is
# put before every bench and peft_compare.py command's options (default: 10 timed steps after 3 warm-up
# steps, to fit a lease; empty: bench's own 20 after 5). BENCH_ARGS is appended to every bench command,
# PEFT_ARGS to every benchmarks/peft_compare.py command (it takes bench's measurement options, not --methods
# or the loader's); tests/test_bench.py runs the script on demo-tiny and the CPU this way. Where OUT is set
# (the device tool's return folder, which brings back 8 files at most), the results folder is packed into
# one OUT/<folder name>.tar.gz after each step, and once more if the script is stopped (TERM) mid-step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STEPS="profile peft all-blocks wall-clock cuda-tests no-checkpointing compile"
# shellcheck disable=SC2048,SC2086  # the steps are words, also when one argument holds several
for s in ${*:-$STEPS}; do
  case " $STEPS " in *" $s "*) ;; *) echo "gpu.sh: unknown step '$s'; the steps: $STEPS" >&2; exit 2 ;; esac
done
if [ -z "${RESULTS:-}" ]; then
  gpu=$("$PYTHON" -c "import sys, torch
if not torch.cuda.is_available():
    sys.exit('gpu.sh: no GPU (CUDA is not available); on the CPU, name the folder and the device: '
             'RESULTS=DIR BENCH_ARGS=\"--device cpu ...\" PEFT_ARGS=\"--device cpu ...\"')
print(torch.cuda.get_device_name())" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
  RESULTS=benchmarks/results/$(date -u +%Y%m%d)-$gpu
fi
mkdir -p "$RESULTS"
TIMING=${TIMING---steps 10 --warmup 3}
# shellcheck disable=SC2086  # TIMING and BENCH_ARGS are lists of words
bench() { PYTHONUNBUFFERED=1 "$PYTHON" -m replication bench $TIMING "$@" ${BENCH_ARGS:-}; }
# shellcheck disable=SC2086  # PEFT_ARGS likewise
compare() { PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/peft_compare.py $TIMING "$@" ${PEFT_ARGS:-}; }
pack() {  # the device tool returns at most 8 files: the whole folder as one archive
  if [ -n "${OUT:-}" ]; then tar -czf "$OUT/$(basename "$RESULTS").tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"; fi
}
trap 'pack; exit 143' TERM

profile() {  # every method as the full profile trains it (LoRA, DoRA, MTLoRA partly checkpointed), the loader
  bench --checkpoint-blocks profile --data-loading --out "$RESULTS/profile.json" | tee "$RESULTS/profile.log"
}
all-blocks() {  # what checkpointing every block would cost instead of the profile's first blocks
  bench --methods lora,dora,mtlora --checkpoint-blocks all --out "$RESULTS/all-blocks.json" | tee "$RESULTS/all-blocks.log"
}
no-checkpointing() {  # the adapters' own cost without recomputation, ours and peft's, at a batch that fits 80 GB
  compare --batch 32 --out "$RESULTS/no-checkpointing-batch32.json" | tee "$RESULTS/no-checkpointing-batch32.log"
}
peft() {  # ours and peft's LoRA/DoRA as the full profile trains them (batch 128, first blocks checkpointed)
  compare --checkpoint-blocks profile --out "$RESULTS/peft-profile.json" | tee "$RESULTS/peft-profile.log"
}
compile() {  # torch.compile and the fused AdamW kernel on the adapters, same terms as `profile`
  bench --methods lora,dora,mtlora --checkpoint-blocks profile --compile --fused-adamw \
    --out "$RESULTS/compile-fused-adamw.json" | tee "$RESULTS/compile-fused-adamw.log"
}
cuda-tests() {  # the tests that need a GPU (CI has none): a CUDA fp16 run killed mid-epoch resumes
  "$PYTHON" -m pytest -q -rs tests/test_engine.py -k cuda 2>&1 | tee "$RESULTS/cuda-tests.log"
}
wall-clock() {  # the 19 training runs at the rates of `profile`
  PYTHONUNBUFFERED=1 "$PYTHON" -m replication bench --wall-clock "$RESULTS/profile.json" --out "$RESULTS/wall-clock.json" \
    | tee "$RESULTS/wall-clock.md"
}

failed=()
# shellcheck disable=SC2048,SC2086
for s in ${*:-$STEPS}; do
  echo "== $s -> $RESULTS ($(date -u +%T))"
  "$s" || failed+=("$s")
  pack
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu.sh: failed steps: ${failed[*]} (their output is in $RESULTS)" >&2
  exit 1
fi
