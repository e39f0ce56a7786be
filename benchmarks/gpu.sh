#!/usr/bin/env bash
# On a GPU machine: every measurement of benchmarks/README.md, step by step, then the full replication's
# expected wall-clock. Each step writes its JSON and its printed output (.log; the estimate: .md) into one
# results folder.
#
#   bash benchmarks/gpu.sh [STEP ...]      steps: profile all-blocks no-checkpointing peft compile wall-clock
#                                          cuda-tests (default: all)
#
# Environment: PYTHON is the interpreter (default python3). RESULTS names the folder (default
# benchmarks/results/<date>-<gpu name>; give the same one when the steps run in separate calls). BENCH_ARGS
# is appended to every bench command, PEFT_ARGS to every benchmarks/peft_compare.py command (it takes
# bench's measurement options, not --methods or the loader's); tests/test_bench.py runs the script on
# demo-tiny and the CPU this way. Where OUT is set (the device tool's return folder), the results folder is
# copied there after each step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -z "${RESULTS:-}" ]; then
  gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name())" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
  RESULTS=benchmarks/results/$(date -u +%Y%m%d)-$gpu
fi
mkdir -p "$RESULTS"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
bench() { PYTHONUNBUFFERED=1 "$PYTHON" -m replication bench "$@" ${BENCH_ARGS:-}; }
# shellcheck disable=SC2086  # PEFT_ARGS likewise
compare() { PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/peft_compare.py "$@" ${PEFT_ARGS:-}; }

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
compile() {  # torch.compile and the fused AdamW kernel, same terms as `profile`
  bench --methods ap,ft4,lora,dora,mtlora --checkpoint-blocks profile --compile --fused-adamw \
    --out "$RESULTS/compile-fused-adamw.json" | tee "$RESULTS/compile-fused-adamw.log"
}
cuda-tests() {  # the tests that need a GPU (CI has none): a CUDA fp16 run killed mid-epoch resumes
  "$PYTHON" -m pytest -q -rs tests/test_engine.py -k cuda 2>&1 | tee "$RESULTS/cuda-tests.log"
}
wall-clock() {  # the 19 training runs at the rates of `profile`
  PYTHONUNBUFFERED=1 "$PYTHON" -m replication bench --wall-clock "$RESULTS/profile.json" --out "$RESULTS/wall-clock.json" \
    | tee "$RESULTS/wall-clock.md"
}

for step in "${@:-profile all-blocks no-checkpointing peft compile wall-clock cuda-tests}"; do
  for s in $step; do
    echo "== $s -> $RESULTS"
    "$s"
    if [ -n "${OUT:-}" ]; then cp -r "$RESULTS" "$OUT/"; fi
  done
done
