// The conv step on windows kept in their cache: a thread per (sequence, channel) slides the
// channel's window over the new tokens, y[s, t, c] = Σ_k window[t + k] · w[c, k], and writes
// the window's last K−1 values back into the cache row. A prompt's tokens come in blocks
// (param 12, blocks > 1): a workgroup then holds 64 / blocks channels, a thread per (channel,
// block of tokens), each starting from the window before its block (the cache's values where
// the block starts within K−1 tokens of the prompt's start, x's after), so that no thread walks
// a long prompt alone; the thread of the last block writes the cache, after a storage barrier
// that follows every thread's reads (a channel's blocks share a workgroup). Sources: 0 cache [R, (K−1)·C] (also the destination), 1 x
// [S, T, C] (read through its strides: a projection's columns), 2 w [C, K], 3 slots I32 [S].
// Params: 0 S·C, 1 T, 2 C, 3 K (at most 8), 4 cache_off, 5 x_off, 6 w_off, 7 out_off,
// 8 slots_off, 9..11 x's strides, 12 blocks (1, or a power of two dividing 64).

fn ldx(s: u32, t: u32, c: u32) -> f32 {
    return ld1(pu(5u) + s * pu(9u) + t * pu(10u) + c * pu(11u));
}

// window value j (of K−1) before token t0: x's token t0 + j − (K−1), or the cache's value
fn ldwin(row: u32, s: u32, c: u32, t0: u32, j: u32) -> f32 {
    let k1 = pu(3u) - 1u;
    if (t0 + j >= k1) {
        return ldx(s, t0 + j - k1, c);
    }
    return ld0(row + (t0 + j) * pu(2u));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blocks = pu(12u);
    let per_wg = 64u / blocks;
    let i = (wid.y * nwg.x + wid.x) * per_wg + lid.x % per_wg;
    let block = lid.x / per_wg;
    let ok = i < pu(0u);
    let t_ = pu(1u);
    let c_ = pu(2u);
    let k_ = pu(3u);
    let c = i % c_;
    let s = i / c_;
    // this thread's tokens [t0, t1)
    let len = (t_ + blocks - 1u) / blocks;
    let t0 = min(block * len, t_);
    let t1 = min(t0 + len, t_);
    let last = (t1 == t_ && t0 < t_) || (t_ == 0u && block == 0u);
    var row = 0u;
    if (ok) {
        row = pu(4u) + u32(ldi3(pu(8u) + s)) * (k_ - 1u) * c_ + c;
    }
    // Mamba's window of 4 in registers (an array indexed at run time may live in memory)
    if (k_ == 4u) {
        var w0 = 0.0;
        var w1 = 0.0;
        var w2 = 0.0;
        var k0 = 0.0;
        var k1 = 0.0;
        var k2 = 0.0;
        var k3 = 0.0;
        if (ok) {
            w0 = ldwin(row, s, c, t0, 0u);
            w1 = ldwin(row, s, c, t0, 1u);
            w2 = ldwin(row, s, c, t0, 2u);
            let wb = pu(6u) + c * 4u;
            k0 = ld2(wb);
            k1 = ld2(wb + 1u);
            k2 = ld2(wb + 2u);
            k3 = ld2(wb + 3u);
        }
        if (blocks > 1u) {
            storageBarrier();
        }
        if (!ok) {
            return;
        }
        for (var t = t0; t < t1; t++) {
            let at = (s * t_ + t) * c_ + c;
            let x = ldx(s, t, c);
            var acc = 0.0;
            acc += w0 * k0;
            acc += w1 * k1;
            acc += w2 * k2;
            acc += x * k3;
            st(pu(7u) + at, epi(at, acc));
            w0 = w1;
            w1 = w2;
            w2 = x;
        }
        if (last) {
            store_dst(row, w0);
            store_dst(row + c_, w1);
            store_dst(row + 2u * c_, w2);
        }
        return;
    }
    var win: array<f32, 8>;
    if (ok) {
        for (var j = 0u; j + 1u < k_; j++) {
            win[j] = ldwin(row, s, c, t0, j);
        }
    }
    if (blocks > 1u) {
        storageBarrier();
    }
    if (!ok) {
        return;
    }
    for (var t = t0; t < t1; t++) {
        let at = (s * t_ + t) * c_ + c;
        win[k_ - 1u] = ldx(s, t, c);
        var acc = 0.0;
        for (var k = 0u; k < k_; k++) {
            acc += win[k] * ld2(pu(6u) + c * k_ + k);
        }
        st(pu(7u) + at, epi(at, acc));
        for (var k = 0u; k + 1u < k_; k++) {
            win[k] = win[k + 1u];
        }
    }
    if (last) {
        for (var j = 0u; j + 1u < k_; j++) {
            store_dst(row + j * c_, win[j]);
        }
    }
}
