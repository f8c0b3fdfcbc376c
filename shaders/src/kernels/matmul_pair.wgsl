// Two mat-vecs of one activation row whose products meet column by column: out[n] =
// epi2(n, x · w1[n], x · w2[n]) (a gated unit's gate and up, read by its activation). As
// `matmul_cat`: 4 outputs per 128-thread workgroup, T = 32 threads each; each thread group takes
// both rows of its column (`row_dot1`, `row_dot2`), so the products never leave the workgroup.
// Source 0: x [K] (dense F32); sources 1 and 2: the weights [N, K] (any dtype, dense).
// Params: as `matmul_cat`'s for two weights: 0 N, 1 2, 2 K, 3 x_off, 4 out_off, 5 0, 6 w1_off,
// 7 N, 8 w2_off.

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = (wid.y * nwg.x + wid.x) * (128u / T) + lid.x / T;
    let lane = lid.x % T;
    prologue(pu(3u), lid.x);
    var a = 0.0;
    var b = 0.0;
    if (o < pu(0u)) {
        a = row_dot1(pu(6u) + o * pu(2u), pu(3u), lane);
        b = row_dot2(pu(8u) + o * pu(2u), pu(3u), lane);
    }
    let sa = group_sum(a, lid.x, 0u);
    let sb = group_sum(b, lid.x, 1u);
    if (lane == 0u && o < pu(0u)) {
        st(pu(4u) + o, epi2(o, sa, sb));
    }
}
