#!/usr/bin/env bash
# A second adaptation cycle of the built-in model (measured on both versions, adopted on neither:
# MODEL_CARD.md, docs/reproduction.md): from the committed model's checkpoint (the end of
# scripts/make-builtin-model.sh's adaptation), the same objective bidirectional from the start
# (annealing is done), a new cosine cycle at half the peak rate (lr 3e-4, warmup 100), another
# data order (seed 1): 2400 steps of 4096 tokens (9.8M more tokens). Then the same checks as the
# built-in model: the sampler sweep and the infilling sets, on the converted f16 copy.
#
# usage: scripts/builtin/second-cycle.sh [WORK_DIR]   (default: runs/builtin, as the make script)
# Resumable: rerun it after a stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${1:-runs/builtin}"
source scripts/run-or-resume.sh
source scripts/builtin/recipe.sh
TRAIN=(--data "$WORK/data/train" --val-data "$WORK/data/heldout")
STEPS=2400
run_or_resume "$WORK/dlm2" $STEPS adapt \
    --base "$WORK/dlm/checkpoints/step-$(printf %08d $DLM_STEPS)" --mask-token 1 \
    --anneal-steps 0 "${TRAIN[@]}" --lr 3e-4 --warmup 100 --seed 1 "${OPT[@]}"

final="$WORK/dlm2/checkpoints/step-$(printf %08d $STEPS)"
model="$WORK/dlm2-f16"
[ -f "$model/model.safetensors" ] || $DLM convert --model "$final" --out "$model" --dtype f16
# The second cycle's sweep and infilling figures went to sweep2/ and dlm2-infill/ (infilled from
# the f32 checkpoint; the f16 copy gives the same figures).
builtin_checks "$model" "$WORK/data/train" "$WORK/dlm2-checks" \
    '^(topk-confidence|random-t0.7-p0.8-b1|random-t0.6-p0.8-b1|entropy-t0.8-p0.9-b4)$'
