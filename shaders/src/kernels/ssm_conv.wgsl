// Causal depthwise convolution: y[s, t, c] = Σ_k xc[s, t + k, c] · w[c, k]; one thread per
// output. Sources: 0 xc [S, L, C] (dense), 1 w [C, K].
// Params: 0 total, 1 T, 2 C, 3 K, 4 L, 5 xc_off, 6 w_off, 7 out_off.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let c_ = pu(2u);
    let k_ = pu(3u);
    let c = i % c_;
    let st_ = i / c_;
    let t = st_ % pu(1u);
    let s = st_ / pu(1u);
    var acc = 0.0;
    for (var k = 0u; k < k_; k++) {
        acc += ld0(pu(5u) + (s * pu(4u) + t + k) * c_ + c) * ld1(pu(6u) + c * k_ + k);
    }
    st(pu(7u) + i, epi(i, acc));
}
