#!/usr/bin/env bash
# The test command: fetch the pinned assets the tests need (idempotent, cached outside the repo),
# then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh smollm2 gpt2-tokenizer benchmarks
cargo test --all-targets "$@"
