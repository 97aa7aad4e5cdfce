#!/usr/bin/env bash
# The AR base's own text against issue 16's bar: `dlm generate --ar` after each of the 21
# prompts of prompts.jsonl (seeds 0, 1, 2: 63 canvases of up to 64 new tokens), scored by
# check_outputs.py as the DLM's canvases are (sweep-samplers.sh). It tells what the bar asks of
# the base the DLM is adapted from.
#
# usage: scripts/builtin/check-ar-base.sh AR_MODEL_DIR TRAIN_TEXT_DIR OUT.jsonl [FLAGS...]
#   e.g. scripts/builtin/check-ar-base.sh runs/builtin/ar/checkpoints/step-00001200 \
#        runs/builtin/data/train /tmp/ar-t0.8.jsonl --temperature 0.8 --top-p 0.9
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1 TRAIN=$2 OUT=$3
shift 3
DLM=${DLM:-target/release/dlm}
: > "$OUT"
for seed in 0 1 2; do
    "$DLM" generate "$MODEL" --ar --input scripts/builtin/prompts.jsonl --max-new-tokens 64 \
        --json --seed "$seed" "$@" >> "$OUT" 2> /dev/null
done
python3 scripts/builtin/check_outputs.py "$OUT" "$TRAIN" | tail -1
