# The built-in model's recipe, sourced by scripts/make-builtin-model.sh and by the `builtin` part
# of scripts/reproduce.sh: the data split, the model shape, the step counts and the optimizer
# settings every run at this scale shares. Needs $CACHE (the asset cache).

BUILTIN_CONFIG=scripts/builtin/gpt2-12m.json
# 4096 tokens a step, bf16 compute (f32 master weights): 2000 AR steps (8.2M tokens), then 3000
# adaptation steps (Algorithm 1, annealing over the first 200): 12.3M adaptation tokens. Either may
# be set from the environment to try another length (the first version of the model: 1200/3000).
AR_STEPS=${AR_STEPS:-2000}
DLM_STEPS=${DLM_STEPS:-3000}
# Training text beside the plays (fetch-assets.sh groups, each file whole): EXTRA=kjv adds the King
# James Bible (4.1 MB, about as many words as the training plays). The tokenizer stays the
# plays' own either way, and examples are shuffled over the whole set each epoch (EXTRA_OPT).
EXTRA=${EXTRA:-}
# Two whole plays are held out of training: every validation figure and the infilling sets.
HELD_OUT=(julius_caesar_gut.txt twelfth_night_gut.txt)
# Dropout on the residual stream in both stages (`--dropout`); the committed model: none.
DROPOUT=${DROPOUT:-0}
# 16 x 256 tokens a step, AdamW (beta2 0.99, wd 0.1), cosine to 10%, checkpoints every 100; seed 0
# unless a run says otherwise.
OPT=(--dtype bf16 --seq-len 256 --micro-batch 16 --beta2 0.99 --weight-decay 0.1 --schedule cosine
    --val-every 100 --val-batches 8 --save-every 100 --dropout "$DROPOUT")

# builtin_split DIR: DIR/train and DIR/heldout as links to the plays in the asset cache, DIR/extra
# to the EXTRA groups' files (fetched here).
builtin_split() {
    mkdir -p "$1/train" "$1/heldout"
    local f name group
    EXTRA_DATA=() EXTRA_OPT=()
    for group in $EXTRA; do
        bash scripts/fetch-assets.sh "$group" >/dev/null
        mkdir -p "$1/extra"
        for f in "$CACHE/$group"/*; do ln -sf "$(realpath "$f")" "$1/extra/$(basename "$f")"; done
        EXTRA_DATA=(--data "$1/extra") EXTRA_OPT=(--shuffle-buffer 65536)
    done
    for f in "$CACHE"/shakespeare/*.txt; do
        name=$(basename "$f")
        if [[ " ${HELD_OUT[*]} " == *" $name "* ]]; then
            ln -sf "$(realpath "$f")" "$1/heldout/$name"
        else
            ln -sf "$(realpath "$f")" "$1/train/$name"
        fi
    done
}

# builtin_checks MODEL TRAIN_TEXT_DIR OUT_DIR [NAME_REGEX]: what the card reports of a candidate
# model: the sampler sweep (sweep-samplers.sh, the settings matching NAME_REGEX; default: the
# argmax reference, the current default and the runners-up) into OUT_DIR/sweep, and the four
# infilling sets (`dlm eval --task infill`, argmax) into OUT_DIR/infill. Needs $DLM.
builtin_checks() {
    local model=$1 text=$2 out=$3 set
    local only=${4:-'^(topk-confidence|random-t0.7-p0.8-b1|random-t0.6-p0.8-b1|random-t0.5-p0.9-b1|entropy-t0.8-p0.9-b4)$'}
    DLM=$DLM bash scripts/builtin/sweep-samplers.sh "$model" "$text" "$out/sweep" "$only"
    mkdir -p "$out/infill"
    for set in word word-nosuffix span span-nosuffix; do
        [ -f "$out/infill/$set.json" ] || $DLM eval "$model" --task infill \
            --data "data/eval/shakespeare-infill-$set.jsonl.gz" --out "$out/infill/$set.json" \
            --no-progress
    done
}
