#!/usr/bin/env bash
# Builds dlm with the `cuda` feature, also on a machine without a GPU or a CUDA toolkit:
#  1. installs NVIDIA's CUDA 13.0.x compilers from PyPI wheels into a cache folder used as
#     CUDA_HOME (nvcc must stay at 13.0.x: newer PTX may be rejected by a 580-series driver);
#  2. writes link-only stubs of the libraries cudarc links against (libcuda, libnvrtc, libcurand,
#     libcublas, libcublasLt), generated from the function lists in cudarc's own bindings and
#     carrying the real sonames, so the binary loads the real libraries at run time (libcudart
#     is the real one from the wheel);
#  3. runs `cargo build --release --features cuda` (extra arguments are passed on), compiling
#     candle's kernels for CUDA_COMPUTE_CAP (default 90: H100/H200).
# `bash scripts/build-cuda.sh --features nccl` also stubs libnccl (soname libnccl.so.2) and builds
# the NCCL backend; at run time it needs the real libnccl.so.2 (e.g. the nvidia-nccl-cu13 wheel).
# `bash scripts/build-cuda.sh --check [CARGO ARGS]` makes the same toolchain, then runs only
# `cargo check --features cuda` (CI: the GPU code compiles on a machine without a GPU).
# On a machine with a CUDA 13.0 toolkit, `CUDA_HOME=/usr/local/cuda cargo build --release
# --features cuda` is enough. Running the binary needs the driver (libcuda.so.1) and libcudart,
# libcublas, libcublasLt, libcurand and libnvrtc of CUDA 13.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=build
if [ "${1:-}" = --check ]; then
    mode=check
    shift
fi

cache="${DLM_CUDA_CACHE:-$HOME/.cache/dlm-cuda}"
export CUDA_HOME="$cache/pkgs/nvidia/cu13"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export PATH="$CUDA_HOME/bin:$PATH"

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "installing the CUDA 13.0 compiler wheels into $cache (about 104 MB to download)" >&2
    python3 -m pip install --quiet --no-deps --target "$cache/pkgs" \
        'nvidia-cuda-nvcc==13.0.*' 'nvidia-nvvm==13.0.*' 'nvidia-cuda-crt==13.0.*' \
        'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*'
fi
if ! nvcc --version | grep -q 'release 13\.0'; then
    echo "error: $CUDA_HOME/bin/nvcc is not CUDA 13.0.x; delete $cache and run again" >&2
    exit 1
fi

# cudarc's sources (for its function lists) come with the other dependencies.
cargo fetch --quiet
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
cudarc="$(ls -d "$registry"/*/cudarc-0.19.* | sort -V | tail -n 1)"
stubs="$CUDA_HOME/lib/stubs" # one of the folders cudarc's build script searches
mkdir -p "$stubs"
stub() { # stub LIBRARY SONAME CUDARC_MODULE
    local c="$stubs/$1.c"
    grep -ohE '^pub unsafe fn [A-Za-z0-9_]+\(' "$cudarc/src/$3/sys/mod.rs" |
        sed -E 's/.*fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u >"$c"
    gcc -shared -fPIC -Wl,-soname,"$2" -o "$stubs/$1.so" "$c"
}
stub libcuda libcuda.so.1 driver
stub libnvrtc libnvrtc.so.13 nvrtc
stub libcurand libcurand.so.10 curand
stub libcublas libcublas.so.13 cublas
stub libcublasLt libcublasLt.so.13 cublaslt
case " $* " in
*nccl*) stub libnccl libnccl.so.2 nccl ;;
esac
# candle's statically built kernels link the CUDA runtime; the wheel ships the real one.
ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"

if [ "$mode" = check ]; then
    # nvcc compiling candle's kernels is nearly all of a check's time (16 min on 2 idle cores) and
    # does not depend on dlm's code: keep those artefacts beside the toolchain, so that every
    # clone on this machine (each CI run) compiles them once. CARGO_TARGET_DIR still wins.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target-check}"
    exec cargo check --features cuda "$@"
fi
cargo build --release --features cuda "$@"
bin="${CARGO_TARGET_DIR:-target}/release/dlm"
echo "built $bin with CUDA (compute capability $CUDA_COMPUTE_CAP); it needs, at run time:" >&2
readelf -d "$bin" | grep NEEDED | grep -E 'cuda|nvrtc|curand|cublas|nccl' >&2 || true
