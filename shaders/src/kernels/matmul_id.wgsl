// Mixture-of-experts product: out[t, u, n] = x[t, u or 0] · w[ids[t, u], n]. As `matmul`: 4
// outputs per 128-thread workgroup, T = 32 threads each (`group_sum`), the expert's weight
// row read a chunk at a time (`row_dot1`); results go through `epi` (an expert's routing
// weight, say).
// Sources: 0 x (dense F32), 1 w [E, N, K] (any dtype), 2 ids (I32).
// Params: 0 U, 1 N, 2 K, 3 x_off, 4 w_off, 5 ids_off, 6 out_off, 7 XU (1 or U), 8 E, 9 total,
// 10 the pair's second weight's offset (0), 11 the workspace's offset (for the tiled form).

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = (wid.y * nwg.x + wid.x) * (128u / T) + lid.x / T;
    let lane = lid.x % T;
    // (with a norm over its one activation row, every workgroup sums the row first)
    prologue(pu(3u), lid.x);
    let n_ = pu(1u);
    let k_ = pu(2u);
    let n = g % n_;
    let tu = g / n_;
    let t = tu / pu(0u);
    let u = tu % pu(0u);
    var acc = 0.0;
    if (g < pu(9u)) {
        let e = u32(clamp(ldi2(pu(5u) + tu), 0, i32(pu(8u)) - 1));
        let xrow = pu(3u) + (t * pu(7u) + select(u, 0u, pu(7u) == 1u)) * k_;
        let wrow = pu(4u) + (e * n_ + n) * k_;
        acc = row_dot1(wrow, xrow, lane);
    }
    let sum = group_sum(acc, lid.x, 0u);
    if (lane == 0u && g < pu(9u)) {
        st(pu(6u) + g, epi(g, sum));
    }
}
