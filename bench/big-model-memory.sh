#!/usr/bin/env bash
# Issue 17's memory proof: a random-weight checkpoint at LLaDA-8B's exact shape (real weights
# cannot be downloaded here) loaded and run for one sampling step in bf16, then quantised to
# Q4_0 with `dlm quantize` and run again. Prints each run's load time, ms/step and peak RSS, and
# the peak as a multiple of the weights' stored size (the baseline: what the file itself takes).
#
# usage: bench/big-model-memory.sh [WORK_DIR]   (default: runs/bench; needs ~21 GB of disk)
# Not a test: loading 16 GB takes about a minute and one step tens of seconds on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/bench}"
LENGTH="${LENGTH:-32}"
cargo build --release
DLM=target/release/dlm
BF16="$WORK/llada-8b-random" Q4="$WORK/llada-8b-random-q4_0"
python3 bench/make_random_checkpoint.py llada-8b "$BF16"
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
