#!/usr/bin/env bash
# The AR base's own text against issue 16's bar: `dlm generate --ar` after each of the 21
# prompts of prompts.jsonl (seeds 0, 1, 2: 63 canvases of 64 tokens), scored by
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
python3 - "$DLM" "$MODEL" "$OUT" "$@" <<'PY'
import json, re, subprocess, sys
dlm, model, out, flags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
prompts = [json.loads(l)["prompt"] for l in open("scripts/builtin/prompts.jsonl") if l.strip()]
with open(out, "w", encoding="utf-8") as f:
    index = 0
    for seed in (0, 1, 2):
        for prompt in prompts:
            cmd = [dlm, "generate", model, "--ar", "--prompt", prompt, "--max-new-tokens", "64",
                   "--seed", str(seed)] + flags
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            # --ar prints the prompt and its continuation (the canvas), and on stderr
            # "P prompt tokens, N new tokens in ...": check_outputs scales words by len(ids).
            text = run.stdout[len(prompt):] if run.stdout.startswith(prompt) else run.stdout
            new = int(re.search(r"(\d+) new tokens", run.stderr).group(1))
            f.write(json.dumps({"index": index, "text": text, "ids": list(range(new))}) + "\n")
            index += 1
PY
python3 scripts/builtin/check_outputs.py "$OUT" "$TRAIN" | tail -1
