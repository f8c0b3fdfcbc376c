// The conv step on windows kept in their cache: one thread per (sequence, channel) slides the
// channel's window over the new tokens, y[s, t, c] = Σ_k window[t + k] · w[c, k], and writes
// the window's last K−1 values back into the cache row. Sources: 0 cache [R, (K−1)·C] (also
// the destination), 1 x [S, T, C] (read through its strides: a projection's columns), 2 w [C, K],
// 3 slots I32 [S].
// Params: 0 S·C, 1 T, 2 C, 3 K (at most 8), 4 cache_off, 5 x_off, 6 w_off, 7 out_off,
// 8 slots_off, 9..11 x's strides.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let t_ = pu(1u);
    let c_ = pu(2u);
    let k_ = pu(3u);
    let c = i % c_;
    let s = i / c_;
    let row = pu(4u) + u32(ldi3(pu(8u) + s)) * (k_ - 1u) * c_ + c;
    // Mamba's window of 4 in registers (an array indexed at run time may live in memory)
    if (k_ == 4u) {
        var w0 = ld0(row);
        var w1 = ld0(row + c_);
        var w2 = ld0(row + 2u * c_);
        let wb = pu(6u) + c * 4u;
        let k0 = ld2(wb);
        let k1 = ld2(wb + 1u);
        let k2 = ld2(wb + 2u);
        let k3 = ld2(wb + 3u);
        for (var t = 0u; t < t_; t++) {
            let at = (s * t_ + t) * c_ + c;
            let x = ld1(pu(5u) + s * pu(9u) + t * pu(10u) + c * pu(11u));
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
        store_dst(row, w0);
        store_dst(row + c_, w1);
        store_dst(row + 2u * c_, w2);
        return;
    }
    var win: array<f32, 8>;
    for (var j = 0u; j + 1u < k_; j++) {
        win[j] = ld0(row + j * c_);
    }
    for (var t = 0u; t < t_; t++) {
        let at = (s * t_ + t) * c_ + c;
        win[k_ - 1u] = ld1(pu(5u) + s * pu(9u) + t * pu(10u) + c * pu(11u));
        var acc = 0.0;
        for (var k = 0u; k < k_; k++) {
            acc += win[k] * ld2(pu(6u) + c * k_ + k);
        }
        st(pu(7u) + at, epi(at, acc));
        for (var k = 0u; k + 1u < k_; k++) {
            win[k] = win[k + 1u];
        }
    }
    for (var j = 0u; j + 1u < k_; j++) {
        store_dst(row + j * c_, win[j]);
    }
}
