#!/usr/bin/env bash
# Remakes the built-in default DLM (weights/dlm-shakespeare-4m) with dlm's own commands only:
# a byte-level BPE tokenizer, a GPT-2-architecture AR model trained from scratch, then Algorithm 1
# (shift, attention-mask annealing, 1/t-weighted loss) to adapt it into a diffusion LM, stored f16.
# Two whole plays (Julius Caesar, Twelfth Night) are held out: every validation figure and the
# infilling evaluation are on them. Every step is seeded; MODEL_CARD.md in the output records what
# the committed copy took.
#
# usage: scripts/make-builtin-model.sh [WORK_DIR]   (default: runs/builtin)
# Resumable: rerun it after a stop and each run continues from its last checkpoint (saved every
# 100 steps). Train on an idle machine: another job on the same cores halves both.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/builtin}"
OUT=weights/dlm-shakespeare-4m
AR_STEPS=1100
DLM_STEPS=1100
bash scripts/fetch-assets.sh shakespeare
cargo build --release
DLM=target/release/dlm
CACHE="${DLM_ASSETS:-$HOME/.cache/dlm-assets}"

# 0. The split: every play but the two held out is training text.
HELD_OUT=(julius_caesar_gut.txt twelfth_night_gut.txt)
mkdir -p "$WORK/data/train" "$WORK/data/heldout"
for f in "$CACHE"/shakespeare/*.txt; do
    name=$(basename "$f")
    if [[ " ${HELD_OUT[*]} " == *" $name "* ]]; then
        ln -sf "$(realpath "$f")" "$WORK/data/heldout/$name"
    else
        ln -sf "$(realpath "$f")" "$WORK/data/train/$name"
    fi
done
TRAIN=(--data "$WORK/data/train" --val-data "$WORK/data/heldout")

# 1. A 4096-token byte-level BPE on the training plays, <|endoftext|> = 0 and <|mask|> = 1.
[ -f "$WORK/tokenizer.json" ] || $DLM tokenizer train --vocab-size 4096 \
    --special "<|endoftext|>" --special "<|mask|>" --data "$WORK/data/train" \
    --out "$WORK/tokenizer.json"

source scripts/run-or-resume.sh
# Shared by both runs: 16 x 256 tokens a step, AdamW (beta2 0.99, wd 0.1), cosine to 10%.
OPT=(--seq-len 256 --micro-batch 16 --beta2 0.99 --weight-decay 0.1 --schedule cosine
    --val-every 100 --val-batches 8 --save-every 100 --seed 0)

# 2. AR pre-training: 4.27M parameters (4 layers, d 256, 4 heads, context 256, tied head),
#    AR_STEPS steps of 4096 tokens, lr 1.5e-3, warmup 50.
run_or_resume "$WORK/ar" $AR_STEPS pretrain --arch gpt2 --config scripts/builtin/gpt2-4m.json \
    --tokenizer "$WORK/tokenizer.json" --objective ar "${TRAIN[@]}" --lr 1.5e-3 --warmup 50 \
    "${OPT[@]}"

# 3. Adaptation (Algorithm 1): mask id 1, shift on, causal -> bidirectional over 200 steps,
#    1/t-weighted loss, DLM_STEPS steps of 4096 tokens, lr 1e-3, warmup 50.
run_or_resume "$WORK/dlm" $DLM_STEPS adapt \
    --base "$WORK/ar/checkpoints/step-$(printf %08d $AR_STEPS)" --mask-token 1 \
    --anneal-steps 200 "${TRAIN[@]}" --lr 1e-3 --warmup 50 "${OPT[@]}"

# 4. The committed copy: f16, without optimizer state, with the sampling defaults of the card.
$DLM convert --model "$WORK/dlm/checkpoints/step-$(printf %08d $DLM_STEPS)" --out "$OUT" --dtype f16
echo "built $OUT; update $OUT/MODEL_CARD.md with the figures in $WORK/{ar,dlm}/metrics.jsonl"
