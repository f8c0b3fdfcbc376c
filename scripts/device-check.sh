#!/usr/bin/env bash
# The GPU checks, on a machine with a GPU and a Vulkan driver but no Rust toolchain, from the
# bundle that scripts/device-bundle.sh packs (.device/bundle.tar.xz):
#   ops   the op suite and the wgpu tests on the GPU (CI=true: no adapter is a failure)
#   perf  the models at real shapes (benches/perf; needs python3 with torch and
#         transformers), made once, then `weft bench --backend wgpu` on each
# usage: scripts/device-check.sh STEP [MODEL…]   (STEP: ops, perf or all; MODEL as for
# scripts/perf.sh, default all six). Logs and JSON go to $OUT (default device-out/); bench
# arguments come from $BENCH_ARGS (default "-p 512 -n 128 -r 3"). With $QUANTS (say
# "Q8_0 Q4_K_M") perf also quantizes each model with the bundle's llama-quantize and measures
# those files after the f16 one. Unless COOP=0, perf measures each file's prompt a second time
# with WEFT_COOP=1 (prompt matmuls on cooperative matrices, where the adapter has them; the op
# suite's wgpu_coop cases check their results).
set -uo pipefail
cd "$(dirname "$0")/.."
step="${1:-all}"
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(mamba-130m mamba2-370m jamba-900m qwen3next-1b llama-1.1b mamba-1.4b)
out="${OUT:-device-out}"
work="${WEFT_DEVICE_DIR:-/tmp/weft-device}"
mkdir -p "$out" "$work/models"
[ -x "$work/bin/weft" ] || tar -xJf .device/bundle.tar.xz -C "$work"
export CI=true
status=0

if [ "$step" = ops ] || [ "$step" = all ]; then
    "$work/bin/weft" bench --bandwidth --backend wgpu 2>&1 | tee "$out/adapter.log"
    for t in ops wgpu_split wgpu_errors; do
        # the op suite's GPU half: every test with wgpu in its name
        "$work/bin/$t" wgpu 2>&1 | tee "$out/$t.log" | grep -E "^test result|FAILED|panicked"
        [ "${PIPESTATUS[0]}" = 0 ] || status=1
    done
fi

if [ "$step" = perf ] || [ "$step" = all ]; then
    missing=()
    for n in "${names[@]}"; do
        [ -f "$work/models/$n-f16.gguf" ] || missing+=("$n")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        LLAMA_CPP="$work/llama.cpp" PYTHONUNBUFFERED=1 \
            python3 benches/perf/make_perf_models.py "$work/models" "${missing[@]}" 2>&1 |
            grep -v "Writing model shards" | tee -a "$out/models.log"
    fi
    files=()
    for n in "${names[@]}"; do
        files+=("$n-f16")
        for q in ${QUANTS:-}; do
            [ -f "$work/models/$n-$q.gguf" ] ||
                "$work/bin/llama-quantize" "$work/models/$n-f16.gguf" "$work/models/$n-$q.gguf" "$q" \
                    > "$out/$n-$q.quantize.log" 2>&1 || status=1
            files+=("$n-$q")
        done
    done
    for n in "${files[@]}"; do
        # shellcheck disable=SC2086
        "$work/bin/weft" bench -m "$work/models/$n.gguf" --backend wgpu \
            ${BENCH_ARGS:--p 512 -n 128 -r 3} --json > "$out/$n.json" 2> "$out/$n.err" || status=1
        "$work/bin/weft" bench -m "$work/models/$n.gguf" --backend wgpu -p 64 -n 0 -r 1 \
            --profile 2>&1 | grep -v "^|---" > "$out/$n.profile" || status=1
        if [ "${COOP:-1}" != 0 ]; then
            WEFT_COOP=1 "$work/bin/weft" bench -m "$work/models/$n.gguf" --backend wgpu \
                -p 512 -n 0 -r 3 --json > "$out/$n.coop.json" 2> "$out/$n.coop.err" || status=1
        fi
        python3 -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    t = "pp%d" % r["n_prompt"] if r["n_gen"] == 0 else "tg%d" % r["n_gen"]
    f = r.get("bandwidth_fraction")
    print(sys.argv[2], t, "%.1f tok/s" % r["avg_ts"], "" if f is None else "%.1f%% of bandwidth" % (100 * f))
' "$out/$n.json" "$n" 2>/dev/null | tee -a "$out/summary.txt"
        [ -s "$out/$n.coop.json" ] && python3 -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    print(sys.argv[2], "pp%d" % r["n_prompt"], "%.1f tok/s" % r["avg_ts"], "(WEFT_COOP=1)")
' "$out/$n.coop.json" "$n" 2>/dev/null | tee -a "$out/summary.txt"
    done
fi
exit $status
