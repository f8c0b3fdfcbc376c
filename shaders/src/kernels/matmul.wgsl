// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k] for decode (M = 1; `matmul_rows` takes prompts).
// A workgroup of 128 threads computes 4 outputs, T = 32 threads each (summed by the
// generator's `group_sum`: subgroup shuffles where the adapter has them). Each thread takes
// every T-th quad of 4 weights of the row (`row_dot1`, see `quant::quad_dot`: a warp's loads
// coalesced, four quads in flight) when the row starts and ends on a block boundary, single
// elements otherwise. Source 0: x (dense F32); source 1: w (any dtype, dense).
// Params: 0 M, 1 N, 2 K, 3 x_off, 4 w_off, 5 out_off, 6 xb1 (inner batch dim of x),
// 7 wb0, 8 wb1 (w's batch dims, 1 = broadcast), 9 total outputs, 10 output row stride (N of the
// whole product), 11 first output column: a weight larger than one storage binding runs as
// several dispatches, each over a range of its rows (N = that range's rows); 13 outputs per
// workgroup (4); 14, with a source 2, the offset of a residual added to the output (laid out
// like it); 15 x's row stride (its rows may be a projection's columns).

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = (wid.y * nwg.x + wid.x) * (128u / T) + lid.x / T;
    let lane = lid.x % T;
    prologue(pu(3u), lid.x);
    let m_ = pu(0u);
    let n_ = pu(1u);
    let k_ = pu(2u);
    let n = o % n_;
    let m = (o / n_) % m_;
    let b = o / (n_ * m_);
    let b0 = b / pu(6u);
    let b1 = b % pu(6u);
    let wb = select(b0, 0u, pu(7u) == 1u) * pu(8u) + select(b1, 0u, pu(8u) == 1u);
    let xrow = pu(3u) + (b * m_ + m) * pu(15u);
    let wrow = pu(4u) + (wb * n_ + n) * k_;
    var acc = 0.0;
    if (o < pu(9u)) {
        acc = row_dot1(wrow, xrow, lane);
    }
    let sum = group_sum(acc, lid.x, 0u);
    if (lane == 0u && o < pu(9u)) {
        let at = (b * m_ + m) * pu(10u) + pu(11u) + n;
        st(pu(5u) + at, epi(at, sum + residual(at)));
    }
}
