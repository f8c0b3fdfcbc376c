#!/usr/bin/env bash
# Speed on the models at real shapes (benches/perf): makes the random-weight f16 GGUFs once
# (torch, transformers and llama.cpp's converter, all from PyPI, in a venv), then runs
# `weft bench` on each. With --llama it also builds llama.cpp's llama-bench (CPU) from the same
# PyPI source package and runs it on the same files.
#
#   scripts/perf.sh [--backend auto|cpu|wgpu] [--llama] [--args "-p 512 -n 128 -r 3"] [NAME…]
#
# NAME: mamba-130m mamba2-370m jamba-900m qwen3next-1b llama-1.1b mamba-1.4b (default: all).
# Work files go to $WEFT_PERF_DIR (default target/perf).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=auto
llama=0
args="-p 512 -n 128 -r 3"
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="$2"; shift 2 ;;
        --llama) llama=1; shift ;;
        --args) args="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) names+=("$1"); shift ;;
    esac
done
[ ${#names[@]} -gt 0 ] || names=(mamba-130m mamba2-370m jamba-900m qwen3next-1b llama-1.1b mamba-1.4b)
dir="${WEFT_PERF_DIR:-target/perf}"
mkdir -p "$dir/models"
dir="$(cd "$dir" && pwd)"
lcpp="$dir/llama_cpp_python-0.3.36/vendor/llama.cpp"

if [ ! -d "$lcpp" ]; then
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$dir"
    tar -xzf "$dir/llama_cpp_python-0.3.36.tar.gz" -C "$dir"
fi
missing=()
for n in "${names[@]}"; do
    [ -f "$dir/models/$n-f16.gguf" ] || missing+=("$n")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q torch transformers safetensors sentencepiece numpy pyyaml
    LLAMA_CPP="$lcpp" "$dir/venv/bin/python" benches/perf/make_perf_models.py "$dir/models" "${missing[@]}"
fi

cargo build --release --locked -p weft-cli
for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    target/release/weft bench -m "$dir/models/$n-f16.gguf" --backend "$backend" $args
done

if [ "$llama" = 1 ]; then
    bench="$lcpp/build/bin/llama-bench"
    if [ ! -x "$bench" ]; then
        cmake -S "$lcpp" -B "$lcpp/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > /dev/null
        cmake --build "$lcpp/build" -j "$(nproc)" --target llama-bench > /dev/null
    fi
    for n in "${names[@]}"; do
        # shellcheck disable=SC2086
        "$bench" -m "$dir/models/$n-f16.gguf" -t "$(nproc)" $args
    done
fi
