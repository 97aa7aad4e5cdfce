#!/usr/bin/env bash
# The main job on the built-in default: fetch SmolLM2-135M-Instruct (pinned GGUF), convert it to
# an HF-layout directory, and ask it a question with autoregressive decoding.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh smollm2
cargo build --release
cache="${DLM_ASSETS:-$HOME/.cache/dlm-assets}"
model=models/smollm2-135m
if [ ! -f "$model/model.safetensors" ]; then
  ./target/release/dlm convert --gguf "$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$model"
fi
./target/release/dlm info "$model"
./target/release/dlm generate --ar "$model" --chat --prompt "${1:-What is the tallest mountain in the world?}" --max-new-tokens 64
