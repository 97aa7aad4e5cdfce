#!/usr/bin/env bash
# The first run of dlm on a GPU made cheap and decisive (issue 18): build here, run there.
#
#   bash scripts/gpu-check.sh build [--device cuda|cpu] [--profile release|dev]   # on an ordinary machine
#   bash scripts/gpu-check.sh run   [--device cuda|cpu]   # on the GPU machine: repository + gpu-bundle/
#
# build --device cuda (the default) makes the stripped release binary with `--features cuda,nccl`
# through scripts/build-cuda.sh (CUDA_COMPUTE_CAP, default 90: H100/H200) and puts it, with the
# wheel's libcudart, in gpu-bundle/ (ignored by git). build --device cpu makes the CPU release
# binary (with `--features mpi` where OpenMPI and libclang are installed) in the same layout, so CI
# runs the same path; `--profile dev` (CPU only) takes the debug binary instead, which CI has
# already built for its tests, so the check costs CI no release build. The checks use only tracked files (tests/fixtures, weights/, bench/); the
# repository plus the bundle must stay under 64 MiB, which build checks.
#
# run finds the CUDA 13 libraries (the Python's nvidia-* wheels, CUDA_HOME or /usr/local/cuda),
# puts them on LD_LIBRARY_PATH, and runs scripts/gpu_check.py: forward parity on every fixture
# (f32 and bf16), loss, gradients and one AdamW step, a 3-step adapt against the CPU, sampler
# traces, the benchmarks next to PyTorch (when a Python has torch), GPU memory, and 2 ranks
# against 1. It prints one table, writes it to $OUT/gpu-check.md when OUT is set (else
# gpu-bundle/gpu-check.md; every command's output goes to gpu-check.log beside it), and exits 1 on
# any mismatch. DLM_GPU_CHECKS=13 runs only checks 1 and 3 (say, to rerun what failed);
# DLM_TORCH_PYTHON names the Python with torch and transformers (and CUDA's wheels) to use.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle
budget_mib=64

usage() {
    echo "usage: bash scripts/gpu-check.sh build|run [--device cuda|cpu] [--profile release|dev]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
device=cuda
profile=release
while [ $# -gt 0 ]; do
    case $1 in
    --device) device=${2:-}; shift 2 || usage ;;
    --device=*) device=${1#--device=}; shift ;;
    --profile) profile=${2:-}; shift 2 || usage ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    *) usage ;;
    esac
done
case $device in
cpu) kind=cpu ;;
cuda | cuda:*) kind=cuda ;;
*) echo "error: --device must be cpu, cuda or cuda:N, not \`$device\`" >&2; exit 2 ;;
esac
case $profile in
release) profile_dir=release; profile_flag=--release ;;
dev) profile_dir=debug; profile_flag= ;;
*) echo "error: --profile must be release or dev, not \`$profile\`" >&2; exit 2 ;;
esac
if [ "$kind" = cuda ] && [ "$profile" != release ]; then
    echo "error: the CUDA bundle is built in release only" >&2
    exit 2
fi

build() {
    mkdir -p "$bundle/$kind"
    local target=target
    if [ "$kind" = cuda ]; then
        # As CI's check does, the CUDA build keeps its artefacts beside the toolchain cache, so
        # nvcc compiles candle's kernels once per machine, not once per clone.
        target="${CARGO_TARGET_DIR:-${DLM_CUDA_CACHE:-$HOME/.cache/dlm-cuda}/target-release}"
        CARGO_TARGET_DIR="$target" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
            bash scripts/build-cuda.sh --features nccl
        features="cuda,nccl (compute capability ${CUDA_COMPUTE_CAP:-90})"
        # The CUDA runtime candle's kernels link, from the wheel build-cuda.sh installed; the
        # GPU machine's own libcudart, when it has one, comes first on the library path.
        cudart="${DLM_CUDA_CACHE:-$HOME/.cache/dlm-cuda}/pkgs/nvidia/cu13/lib/libcudart.so.13"
        mkdir -p "$bundle/lib"
        cp -L "$cudart" "$bundle/lib/"
    else
        features=default
        if command -v mpicc >/dev/null && ldconfig -p | grep libclang >/dev/null; then
            features=mpi
            cargo build $profile_flag --features mpi
        else
            echo "no OpenMPI or libclang here: building without the mpi feature (check 5 will skip)" >&2
            cargo build $profile_flag
        fi
    fi
    cp "$target/$profile_dir/dlm" "$bundle/$kind/dlm"
    strip "$bundle/$kind/dlm"
    {
        echo "kind=$kind"
        echo "features=$features"
        echo "profile=$profile"
        echo "commit=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    } >"$bundle/$kind/BUILD"
    rm -f "$bundle/$kind/dlm.xz"
    if ! fits; then
        # Over the budget: the binary travels xz-compressed (run unpacks it with Python's lzma).
        xz -9 -T0 "$bundle/$kind/dlm"
        fits || { echo "error: the repository and $bundle/ exceed $budget_mib MiB (remove the bundle of the other device, if built)" >&2; exit 1; }
    fi
}

# Whether the tracked files and the bundle fit the budget of what travels to the GPU machine.
fits() {
    local tracked bundle_bytes total
    tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
    bundle_bytes=$(du -sb "$bundle" | cut -f1)
    total=$((tracked + bundle_bytes))
    echo "$(du -h "$bundle/$kind/"dlm* | tr '\t\n' '  '); repository $((tracked >> 20)) MiB + $bundle/ $((bundle_bytes >> 20)) MiB = $((total >> 20)) MiB (budget $budget_mib MiB)"
    [ "$total" -le $((budget_mib << 20)) ]
}

# A Python that can import torch and transformers (for the PyTorch columns), if any.
torch_python() {
    local py
    for py in ${DLM_TORCH_PYTHON:-} python3 python; do
        if command -v "$py" >/dev/null && "$py" -c 'import torch, transformers' 2>/dev/null; then
            command -v "$py"
            return
        fi
    done
}

# Folders holding CUDA 13's libraries: the nvidia-* wheels of every Python on PATH, then the
# toolkit. Printed one per line.
cuda_lib_dirs() {
    local py
    for py in ${DLM_TORCH_PYTHON:-} python3 python; do
        command -v "$py" >/dev/null || continue
        "$py" - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = list(sys.path)
try:
    roots += site.getsitepackages() + [site.getusersitepackages()]
except AttributeError:
    pass
seen = set()
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib*"))):
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            print(d)
EOF
    done
    for d in ${CUDA_HOME:+"$CUDA_HOME/lib64"} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && echo "$d"
    done
    return 0
}

run() {
    local bin="$bundle/$kind/dlm"
    if [ -f "$bin.xz" ] && [ ! -f "$bin" ]; then
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$bin.xz" "$bin"
    fi
    if [ ! -f "$bin" ]; then
        echo "error: $bin is missing: run \`bash scripts/gpu-check.sh build --device $kind\` first" >&2
        exit 1
    fi
    chmod +x "$bin" # a copy may have lost the bit
    local out_dir="${OUT:-$bundle}"
    mkdir -p "$out_dir"
    local py
    py=$(torch_python || true)
    local header="dlm GPU check, $(date -u +%Y-%m-%d), $(tr '\n' ' ' <"$bundle/$kind/BUILD")"
    if [ "$kind" = cuda ]; then
        local dirs
        dirs=$(cuda_lib_dirs | awk '!seen[$0]++' | paste -sd: -)
        export LD_LIBRARY_PATH="${dirs:+$dirs:}${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PWD/$bundle/lib"
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        if ldd "$bin" | grep 'not found'; then
            echo "error: $bin cannot find the libraries above (install CUDA 13's, or pip install nvidia-cublas nvidia-curand nvidia-cuda-nvrtc nvidia-nccl-cu13)" >&2
            exit 1
        fi
        if command -v nvidia-smi >/dev/null; then
            header="$header; $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
        fi
    fi
    header="$header; $(nproc) cores; PyTorch: ${py:-none}"
    echo "$header"
    local status=0
    python3 scripts/gpu_check.py --dlm "$bin" --device "$device" --out "$out_dir/gpu-check.md" \
        ${py:+--torch-python "$py"} --header "$header" --checks "${DLM_GPU_CHECKS:-12345}" || status=$?
    echo "table: $out_dir/gpu-check.md, every command's output: $out_dir/gpu-check.log"
    return $status
}

case $cmd in
build) build ;;
run) run ;;
*) usage ;;
esac
