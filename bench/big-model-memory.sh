#!/usr/bin/env bash
# The memory proofs of issues 17 and 15: a random-weight checkpoint at a released model's exact
# shape (real weights cannot be downloaded here) loaded and run for one sampling step in bf16,
# then quantised to Q4_0 with `dlm quantize` and run again. Prints each run's load time, ms/step
# and peak RSS, and the peak as a multiple of the weights' stored size (the baseline: what the
# file itself takes).
#
# usage: [MODEL=llada-8b|llama-7b] [LENGTH=32] bench/big-model-memory.sh [WORK_DIR]
#   llada-8b (the default): LLaDA-8B-Instruct, ~21 GB of disk;
#   llama-7b: LLaMA-2-7B (DiffuLLaMA-7B's shape), ~18 GB; issue 15 asks for LENGTH=256.
# WORK_DIR defaults to runs/bench. Not a test: loading 16 GB takes about a minute and one step
# tens of seconds on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/bench}"
LENGTH="${LENGTH:-32}"
MODEL="${MODEL:-llada-8b}"
cargo build --release
DLM=target/release/dlm
BF16="$WORK/$MODEL-random" Q4="$WORK/$MODEL-random-q4_0"
python3 bench/make_random_checkpoint.py "$MODEL" "$BF16"
[ -f "$Q4/model.safetensors" ] || /usr/bin/time -f "quantize: peak RSS %M KB, %e s" \
    $DLM quantize "$BF16" --to q4_0 --out "$Q4"
stored() { du -cb "$1"/*.safetensors | tail -1 | cut -f1; }
for dir in "$BF16" "$Q4"; do
    out=$(/usr/bin/time -f "peak RSS %M KB" $DLM bench sample "$dir" --dtype bf16 \
        --length "$LENGTH" --steps 1 --exact-only 2>&1)
    echo "$out"
    kb=$(echo "$out" | sed -n 's/^peak RSS \([0-9]*\) KB$/\1/p')
    python3 -c "import sys; kb, b = int(sys.argv[1]), int(sys.argv[2]); \
print(f'{sys.argv[3]}: peak RSS {kb * 1024 / 1e9:.2f} GB = {kb * 1024 / b:.2f}x the '
      f'{b / 1e9:.2f} GB of stored weights')" "$kb" "$(stored "$dir")" "$dir"
done
