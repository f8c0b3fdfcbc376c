#!/usr/bin/env bash
# The GPU checks, on a machine with a GPU and a Vulkan driver but no Rust toolchain, from the
# bundle that scripts/device-bundle.sh packs (.device/bundle.tar.xz):
#   ops   the op suite and the wgpu tests on the GPU (CI=true: no adapter is a failure)
#   kernels  the criterion kernel benches' wgpu half (benches/benches/kernels.rs), briefly
#         ($KERNELS: a criterion filter, a regular expression such as "wgpu/matvec.*/F16$";
#         default "wgpu/"), timed by GPU timestamps (WEFT_BENCH_DEVICE_TIME=1), to kernels.log;
#         WEFT_BENCH_EARLIER=1 times the kernels' earlier forms too, as wgpu-earlier/… (say
#         KERNELS='wgpu(-earlier)?/(matvec|fused)')
#   perf  the models at real shapes (benches/perf; needs python3 with torch and
#         transformers), made side by side in the background while `ops` runs, then
#         `weft bench --backend wgpu` and `--profile` on each as soon as it is made
# usage: scripts/device-check.sh STEP [MODEL…]   (STEP: ops, kernels, perf or all, which is
# ops and perf; MODEL as for scripts/perf.sh, default all six, measured in the order given).
#
# Everything lands in a few files under $OUT (default device-out/), so that a lease that hands
# back only eight gets all of it: summary.txt (one line per figure), ops.log (adapter,
# bandwidth, test output), bench.log (each bench's JSON and messages), profile.log, models.log,
# kernels.log, and clocks.csv (nvidia-smi's clocks, load and power, where it is installed).
# Settings from the environment:
#   BENCH_ARGS  `weft bench` arguments for the f16 files (default "-p 512 -n 128 -r 3")
#   QUANTS      quantized copies to make and measure too, say "Q8_0 Q4_K_M" (default none)
#   QUANT_MODELS  which models get them (default all that are measured)
#   COOP        unless 0, each file's prompt is measured again with WEFT_COOP=1 (prompt
#               matmuls on cooperative matrices where the adapter has them)
#   OPS_VARIANTS  settings the wgpu tests run under again, say "WEFT_UNCHECKED=1"
#   PROFILE     unless 0, each f16 file's prompt and generated tokens are profiled per op
#   VARIANTS    settings each f16 file is measured again under, say "WEFT_UNCHECKED=1"
#               (space-separated; each one VAR=VALUE), with VARIANT_ARGS (default BENCH_ARGS;
#               say "-p 0 -n 128 -r 2" for decode-only switches such as WEFT_ATTENTION_CHUNK=64,
#               or "-p 512 -n 0 -r 2" for WEFT_ATTENTION_ROWS=0)
#   QUANT_VARIANTS  settings each quantized file is measured again under, with VARIANT_ARGS
#               (say "WEFT_MATVEC_BLOCKS=0", which only quantized weights read differently)
#   OPS_TIMEOUT seconds the op suite may take (default 150; the other test binaries 60)
#   DEADLINE    seconds after which no new measurement starts (default 3000); each one is
#               also cut off after STEP_TIMEOUT seconds (default 120)
set -uo pipefail
cd "$(dirname "$0")/.."
step="${1:-all}"
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(mamba-130m mamba2-370m jamba-900m qwen3next-1b llama-1.1b mamba-1.4b)
out="${OUT:-device-out}"
work="${WEFT_DEVICE_DIR:-/tmp/weft-device}"
models="$work/models"
mkdir -p "$out" "$models"
[ -x "$work/bin/weft" ] || tar -xJf .device/bundle.tar.xz -C "$work"
export CI=true
status=0
start=$SECONDS
deadline="${DEADLINE:-3000}"
step_timeout="${STEP_TIMEOUT:-120}"
weft="$work/bin/weft"

# in_time WHAT: whether a measurement may still start (past the deadline it says it skips WHAT)
in_time() {
    if [ $((SECONDS - start)) -ge "$deadline" ]; then
        echo "skipped (deadline): $*" | tee -a "$out/summary.txt"
        return 1
    fi
}

if [ "$step" = perf ] || [ "$step" = all ]; then
    # the models, each in its own process (torch, the converter), while the GPU tests run
    for n in "${names[@]}"; do
        [ -f "$models/$n.made" ] && continue
        (
            LLAMA_CPP="$work/llama.cpp" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 \
                python3 benches/perf/make_perf_models.py "$models" "$n" > "$models/$n.make.log" 2>&1
            touch "$models/$n.made"
        ) &
    done
fi

# the GPU's clocks, load and power every 100 ms while the checks run (NVIDIA GPUs)
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,utilization.gpu,power.draw \
        --format=csv -lms 100 > "$out/clocks.csv" 2>&1 &
fi

if [ "$step" = ops ] || [ "$step" = all ]; then
    {
        # the copy bandwidth CUDA reaches through PyTorch, where it is installed: the ceiling
        python3 -c '
import time, torch
a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
for _ in range(200): b.copy_(a)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(100): b.copy_(a)
torch.cuda.synchronize(); dt = time.perf_counter() - t
print("torch (CUDA): copy bandwidth %.1f GB/s over 1 GiB (read + write)" % (2 * 100 * a.numel() / dt / 1e9))
' 2> /dev/null
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
            --format=csv 2> /dev/null
        "$weft" bench --bandwidth --backend wgpu 2>&1
    } | tee -a "$out/ops.log" "$out/summary.txt"
    for v in default ${OPS_VARIANTS:-}; do
        for t in ops wgpu_split wgpu_errors; do
            # the op suite's GPU half: every test with wgpu in its name
            echo "== $t ($v)" >> "$out/ops.log"
            (
                [ "$v" = default ] || export "${v?}"
                limit=60
                [ "$t" = ops ] && limit="${OPS_TIMEOUT:-150}"
                # (the error tests one at a time: one destroys its device, and on an H200 the
                # binary once hung with all four running side by side)
                threads=""
                [ "$t" = wgpu_errors ] && threads="--test-threads=1"
                timeout "$limit" "$work/bin/$t" wgpu $threads >> "$out/ops.log" 2>&1
            )
            rc=$?
            [ "$rc" = 0 ] || status=1
            # (the binary's own result line; a binary cut off by its timeout (124) has none)
            echo "$t ($v) rc $rc: $(sed -n "/^== $t ($v)/,\$p" "$out/ops.log" | grep -E '^test result' | tail -1)" |
                tee -a "$out/summary.txt"
        done
    done
    grep -E "FAILED|panicked" "$out/ops.log" | head -40 | tee -a "$out/summary.txt"
fi

if [ "$step" = kernels ]; then
    # each kernel's own GPU time (timestamps), not the host's round trip around it; criterion
    # writes its reports under the working directory
    (cd "$work" && WEFT_BENCH_DEVICE_TIME="${WEFT_BENCH_DEVICE_TIME:-1}" \
        timeout "${KERNELS_TIMEOUT:-300}" bin/kernels --bench "${KERNELS:-wgpu/}" \
        --warm-up-time 0.3 --measurement-time 1 --noplot) 2>&1 |
        grep -v "^Benchmarking\|^$" | tee "$out/kernels.log" | grep -E "time:|thrpt:" | tail -5
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

summarize() { # JSON file, label
    python3 -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    t = "pp%d" % r["n_prompt"] if r["n_gen"] == 0 else "tg%d" % r["n_gen"]
    f = r.get("bandwidth_fraction")
    print(sys.argv[2], t, "%.1f tok/s" % r["avg_ts"], "+-%.1f" % r.get("stddev_ts", 0),
          "" if f is None else "%.1f%% of bandwidth" % (100 * f), sys.argv[3])
' "$1" "$2" "$3" 2> /dev/null | tee -a "$out/summary.txt"
}

bench() { # file name, bench arguments…
    local n="$1"
    shift
    in_time "$n" || return
    local t0=$SECONDS
    echo "== $n: weft bench $*" >> "$out/bench.log"
    timeout "$step_timeout" "$weft" bench -m "$models/$n.gguf" --backend wgpu "$@" --json \
        > "$work/last.json" 2> "$work/last.err"
    local rc=$?
    if [ "$rc" != 0 ]; then
        status=1
        echo "$n: rc $rc after $((SECONDS - t0)) s (124: timed out): weft bench $*" |
            tee -a "$out/summary.txt"
    fi
    cat "$work/last.json" "$work/last.err" >> "$out/bench.log"
    summarize "$work/last.json" "$n" "(${label:+$label, }$((SECONDS - t0)) s)"
}

variants() { # file name, settings (VAR=VALUE each) to measure it again under, with VARIANT_ARGS
    local n="$1" v
    shift
    for v in "$@"; do
        # shellcheck disable=SC2086
        (
            export "${v?}"
            label="$v"
            bench "$n" ${VARIANT_ARGS:-${BENCH_ARGS:--p 512 -n 128 -r 3}}
            exit $status
        ) || status=1
    done
}

if [ "$step" = perf ] || [ "$step" = all ]; then
    for n in "${names[@]}"; do
        while [ ! -f "$models/$n.made" ] && [ $((SECONDS - start)) -lt "$deadline" ]; do sleep 1; done
        [ -f "$models/$n.made" ] || { echo "$n: not made by the deadline" | tee -a "$out/summary.txt"; continue; }
        cat "$models/$n.make.log" >> "$out/models.log"
        if [ ! -s "$models/$n-f16.gguf" ]; then
            echo "$n: no model (see models.log)" | tee -a "$out/summary.txt"
            status=1
            continue
        fi
        # shellcheck disable=SC2086
        bench "$n-f16" ${BENCH_ARGS:--p 512 -n 128 -r 3}
        if [ "${PROFILE:-1}" != 0 ] && in_time "$n profile"; then
            echo "== $n-f16" >> "$out/profile.log"
            timeout "$step_timeout" "$weft" bench -m "$models/$n-f16.gguf" --backend wgpu \
                -p 512 -n 0 -r 1 --profile 2>&1 | grep -v "^|---" >> "$out/profile.log"
        fi
        [ "${COOP:-1}" != 0 ] && label=WEFT_COOP=1 WEFT_COOP=1 bench "$n-f16" -p 512 -n 0 -r 3
        # shellcheck disable=SC2086
        variants "$n-f16" ${VARIANTS:-}
    done
    # then the quantized copies, once every f16 file has its figures
    for n in ${QUANTS:+${QUANT_MODELS:-${names[*]}}}; do
        [ -s "$models/$n-f16.gguf" ] || continue
        for q in ${QUANTS:-}; do
            in_time "$n-$q" || continue
            [ -f "$models/$n-$q.gguf" ] ||
                "$work/bin/llama-quantize" "$models/$n-f16.gguf" "$models/$n-$q.gguf" "$q" \
                    > "$work/quantize.log" 2>&1 || {
                    tail -5 "$work/quantize.log" >> "$out/models.log"
                    status=1
                    continue
                }
            bench "$n-$q" -p 512 -n 128 -r 3
            # shellcheck disable=SC2086
            variants "$n-$q" ${QUANT_VARIANTS:-}
        done
    done
fi
jobs -p | xargs -r kill 2> /dev/null
echo "device-check: ${step} done in $((SECONDS - start)) s, status $status" | tee -a "$out/summary.txt"
exit $status
