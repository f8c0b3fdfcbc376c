#!/usr/bin/env bash
# Packs what a GPU machine without a Rust toolchain needs for scripts/device-check.sh into
# .device/bundle.tar.xz: the release `weft` binary, the wgpu test binaries and the criterion
# kernel benches (stripped), and
# llama.cpp's model converter and a self-contained llama-quantize (AVX2, no shared libraries)
# from the llama-cpp-python source package (for the models at real shapes and their quantized
# copies). Keep .device out of git (`echo /.device/ >> .git/info/exclude`) and carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" .device
cargo build --release --locked -p weft-cli
strip -o "$stage/bin/weft" target/release/weft
# the test binaries: the op suite and the wgpu-only tests (they read no files at run time)
cargo test --release --locked -p weft-backends --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] in ("ops", "wgpu_split", "wgpu_errors"):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do strip -o "$stage/bin/$name" "$exe"; done
# the criterion kernel benches (each kernel on the CPU and on wgpu, bytes/s or FLOP/s)
cargo bench --locked -p weft-benches --bench kernels --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] == "kernels":
        print(m["executable"])
' | while read -r exe; do strip -o "$stage/bin/kernels" "$exe"; done
lcpp="${LLAMA_CPP:-target/perf/llama_cpp_python-0.3.36/vendor/llama.cpp}"
if [ ! -d "$lcpp" ]; then
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d target/perf
    tar -xzf target/perf/llama_cpp_python-0.3.36.tar.gz -C target/perf
fi
mkdir -p "$stage/llama.cpp"
cp -r "$lcpp/convert_hf_to_gguf.py" "$lcpp/conversion" "$lcpp/gguf-py" "$stage/llama.cpp/"
quantize="$lcpp/build-static/bin/llama-quantize"
if [ ! -x "$quantize" ]; then
    cmake="$(scripts/cmake-path.sh target/perf/venv)"
    "$cmake" -S "$lcpp" -B "$lcpp/build-static" -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF \
        -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" > /dev/null
    "$cmake" --build "$lcpp/build-static" -j "$(nproc)" --target llama-quantize > /dev/null
fi
strip -o "$stage/bin/llama-quantize" "$quantize"
tar -cJf .device/bundle.tar.xz -C "$stage" .
ls -la .device/bundle.tar.xz
