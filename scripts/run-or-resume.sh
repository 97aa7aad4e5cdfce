# Sourced by the training scripts: sets $DLM (the dlm binary) and $CACHE (the asset cache).
# DLM=PATH runs that binary instead of building one (a long run keeps its binary while the tree
# changes).
if [ -z "${DLM:-}" ]; then
    cargo build --release
    DLM=target/release/dlm
fi
CACHE="${DLM_ASSETS:-$HOME/.cache/dlm-assets}"

# run_or_resume DIR FINAL_STEP COMMAND ARGS...: a fresh run of `dlm COMMAND ARGS --out DIR`, or the
# rest of an interrupted one (`--resume DIR`), or nothing when step FINAL_STEP is already saved.
run_or_resume() {
    local dir=$1 final=$2 cmd=$3; shift 3
    if [ -d "$dir/checkpoints/step-$(printf %08d "$final")" ]; then return; fi
    if [ -f "$dir/checkpoints/latest" ]; then
        $DLM "$cmd" --resume "$dir" --max-steps "$final"
    else
        $DLM "$cmd" "$@" --out "$dir" --max-steps "$final"
    fi
}
