#!/usr/bin/env bash
# Remakes the built-in default DLM (weights/dlm-shakespeare-12m) with dlm's own commands only:
# a byte-level BPE tokenizer, a GPT-2-architecture AR model trained from scratch, then Algorithm 1
# (shift, attention-mask annealing, 1/t-weighted loss) to adapt it into a diffusion LM, stored f16
# with the sampling defaults of its card. The recipe (shape, steps, data split, optimizer) is
# scripts/builtin/recipe.sh. Every step is seeded; MODEL_CARD.md in the output records what the
# committed copy took.
#
# usage: scripts/make-builtin-model.sh [WORK_DIR]   (default: runs/builtin)
# Resumable: rerun it after a stop and each run continues from its last checkpoint (saved every
# 100 steps). Train on an idle machine: another job on the same cores halves both.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/builtin}"
# OUT=DIR writes a trial elsewhere than the committed model.
OUT=${OUT:-weights/dlm-shakespeare-12m}
bash scripts/fetch-assets.sh shakespeare
source scripts/run-or-resume.sh
source scripts/builtin/recipe.sh
builtin_split "$WORK/data"
TRAIN=(--data "$WORK/data/train" "${EXTRA_DATA[@]}" --val-data "$WORK/data/heldout" "${EXTRA_OPT[@]}")

# 1. A 4096-token byte-level BPE on the training plays (not EXTRA's text), <|endoftext|> = 0 and <|mask|> = 1.
[ -f "$WORK/tokenizer.json" ] || $DLM tokenizer train --vocab-size 4096 \
    --special "<|endoftext|>" --special "<|mask|>" --data "$WORK/data/train" \
    --out "$WORK/tokenizer.json"

# 2. AR pre-training: 12.3M parameters (6 layers, d 384, 6 heads, context 256, tied head),
#    lr 1e-3, warmup 100.
run_or_resume "$WORK/ar" $AR_STEPS pretrain --arch gpt2 --config "$BUILTIN_CONFIG" \
    --tokenizer "$WORK/tokenizer.json" --objective ar "${TRAIN[@]}" --lr 1e-3 --warmup 100 \
    "${OPT[@]}"

# 3. Adaptation (Algorithm 1): mask id 1, shift on, causal -> bidirectional over 200 steps,
#    1/t-weighted loss, lr 6e-4, warmup 100.
run_or_resume "$WORK/dlm" $DLM_STEPS adapt \
    --base "$WORK/ar/checkpoints/step-$(printf %08d $AR_STEPS)" --mask-token 1 \
    --anneal-steps 200 "${TRAIN[@]}" --lr 6e-4 --warmup 100 "${OPT[@]}"

# 4. The committed copy: f16, without optimizer state, with the sampling defaults that
#    `dlm generate` uses when no flag says otherwise (MODEL_CARD.md says how they were chosen).
$DLM convert --model "$WORK/dlm/checkpoints/step-$(printf %08d $DLM_STEPS)" --out "$OUT" \
    --dtype f16
cp scripts/builtin/generation_config.json "$OUT/generation_config.json"

# 5. The infilling sets of `dlm eval --task infill` (shipped in data/eval/), from the held-out
#    plays with this tokenizer: remade here to check they are the shipped ones.
cargo run --release --example make_infill_eval -- "$WORK/tokenizer.json" "$WORK/infill" \
    "$WORK"/data/heldout/*.txt
for f in "$WORK"/infill/*.jsonl; do
    cmp <(gzip -dc "data/eval/$(basename "$f").gz") "$f"
done
echo "built $OUT; update $OUT/MODEL_CARD.md with the figures in $WORK/{ar,dlm}/metrics.jsonl"
