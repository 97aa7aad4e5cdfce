#!/usr/bin/env bash
# Remakes the built-in default DLM (weights/dlm-shakespeare-10m) with dlm's own commands only:
# a byte-level BPE tokenizer, a GPT-2-architecture AR model trained from scratch, then Algorithm 1
# (shift, attention-mask annealing, 1/t-weighted loss) to adapt it into a diffusion LM, stored f16.
# Every step is seeded; on the same machine type the result is the same bytes. MODEL_CARD.md in
# the output records what the committed copy took.
#
# usage: scripts/make-builtin-model.sh [WORK_DIR]   (default: runs/builtin; resumable: rerun it)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/builtin}"
OUT=weights/dlm-shakespeare-10m
bash scripts/fetch-assets.sh shakespeare
cargo build --release
DLM=target/release/dlm
CACHE="${DLM_ASSETS:-$HOME/.cache/dlm-assets}"
DATA=("$CACHE/shakespeare" data/corpus/c4_demo.json data/corpus/wiki_demo.txt)
mkdir -p "$WORK"

# 1. An 8192-token byte-level BPE with <|endoftext|> = 0 and <|mask|> = 1.
[ -f "$WORK/tokenizer.json" ] || $DLM tokenizer train --vocab-size 8192 \
    --special "<|endoftext|>" --special "<|mask|>" --data "${DATA[@]}" --out "$WORK/tokenizer.json"

source scripts/run-or-resume.sh

# 2. AR pre-training: 10.1M parameters (6 layers, d 320, 5 heads, context 256, tied head),
#    120 steps of 16 x 256 tokens (0.49M tokens), AdamW 1e-3 cosine, warmup 10.
run_or_resume "$WORK/ar" 120 pretrain --arch gpt2 --config scripts/builtin/gpt2-10m.json \
    --tokenizer "$WORK/tokenizer.json" --objective ar --data "${DATA[@]}" \
    --seq-len 256 --micro-batch 16 --lr 1e-3 --beta2 0.95 --weight-decay 0.1 --warmup 10 \
    --schedule cosine --val-every 40 --val-batches 8 --save-every 20 --seed 0

# 3. Adaptation (Algorithm 1): mask id 1, shift on, causal -> bidirectional over 30 steps,
#    60 steps of 16 x 256 tokens (0.25M tokens).
run_or_resume "$WORK/dlm" 60 adapt --base "$WORK/ar/checkpoints/step-00000120" --mask-token 1 \
    --anneal-steps 30 --data "${DATA[@]}" --seq-len 256 --micro-batch 16 --lr 5e-4 \
    --beta2 0.95 --weight-decay 0.1 --warmup 5 --schedule cosine --val-every 20 \
    --val-batches 8 --save-every 10 --seed 0

# 4. The committed copy: f16, without optimizer state.
$DLM convert --model "$WORK/dlm/checkpoints/step-00000060" --out "$OUT" --dtype f16
echo "built $OUT; update $OUT/MODEL_CARD.md with the figures in $WORK/{ar,dlm}/metrics.jsonl"
