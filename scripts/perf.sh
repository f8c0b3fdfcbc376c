#!/usr/bin/env bash
# Speed on the models at real shapes (benches/perf): makes the random-weight f16 GGUFs once
# (torch, transformers and llama.cpp's converter, all from PyPI, in a venv), then runs
# `weft bench` on each. With --llama it also builds llama.cpp's llama-bench (CPU) from the same
# PyPI source package and runs it on the same files. With --quant it also quantizes each model
# with llama.cpp's llama-quantize (built from the same package) and measures those files too.
#
#   scripts/perf.sh [--backend auto|cpu|wgpu] [--llama] [--quant "Q8_0 Q4_K_M"]
#                   [--args "-p 512 -n 128 -r 3"] [NAME…]
#
# NAME: mamba-130m mamba2-370m jamba-900m qwen3next-1b llama-1.1b mamba-1.4b (default: all).
# Work files go to $WEFT_PERF_DIR (default target/perf); llama.cpp's CPU options come from
# $LLAMA_CMAKE_ARGS (default -DGGML_NATIVE=ON).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=auto
llama=0
args="-p 512 -n 128 -r 3"
quants=()
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="$2"; shift 2 ;;
        --llama) llama=1; shift ;;
        --args) args="$2"; shift 2 ;;
        --quant) read -r -a quants <<< "$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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

# llama.cpp's tool $1 (llama-bench, llama-quantize), built once (with CMake from PyPI where the
# machine has none)
llama_tool() {
    local bin="$lcpp/build/bin/$1" cmake
    if [ ! -x "$bin" ]; then
        cmake="$(scripts/cmake-path.sh "$dir/venv")"
        # shellcheck disable=SC2086
        "$cmake" -S "$lcpp" -B "$lcpp/build" ${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON} -DLLAMA_CURL=OFF \
            -DCMAKE_BUILD_TYPE=Release > /dev/null
        "$cmake" --build "$lcpp/build" -j "$(nproc)" --target "$1" > /dev/null
    fi
    echo "$bin"
}

# the files to measure: each model in f16, then in each --quant type
files=()
for n in "${names[@]}"; do
    files+=("$dir/models/$n-f16.gguf")
    for q in "${quants[@]}"; do
        f="$dir/models/$n-$q.gguf"
        [ -f "$f" ] || "$(llama_tool llama-quantize)" "$dir/models/$n-f16.gguf" "$f" "$q" > "$f.log" 2>&1
        files+=("$f")
    done
done

cargo build --release --locked -p weft-cli
for f in "${files[@]}"; do
    # shellcheck disable=SC2086
    target/release/weft bench -m "$f" --backend "$backend" $args
done

if [ "$llama" = 1 ]; then
    bench="$(llama_tool llama-bench)"
    for f in "${files[@]}"; do
        # shellcheck disable=SC2086
        "$bench" -m "$f" -t "$(nproc)" $args
    done
fi
