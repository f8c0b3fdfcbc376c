// Two experts' products of one activation and one routing whose results meet element by
// element: out[t, u, n] = epi2(i, x[t, u or 0] · wa[e, n], x[t, u or 0] · wb[e, n]) with
// e = ids[t, u] (an expert's gate and up, read by its activation). As `matmul_id`: 4 outputs per
// 128-thread workgroup, T = 32 threads each; each thread group takes the expert's row of both
// weights (`row_dot1`, `row_dot3`), so the products never leave the workgroup.
// Sources: 0 x (dense F32), 1 wa [E, N, K], 2 ids (I32), 3 wb [E, N, K] (any dtypes).
// Params: as `matmul_id`'s, with 10 wb_off.

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
    var a = 0.0;
    var b = 0.0;
    if (g < pu(9u)) {
        let e = u32(clamp(ldi2(pu(5u) + tu), 0, i32(pu(8u)) - 1));
        let xrow = pu(3u) + (t * pu(7u) + select(u, 0u, pu(7u) == 1u)) * k_;
        let row = (e * n_ + n) * k_;
        a = row_dot1(pu(4u) + row, xrow, lane);
        b = row_dot3(pu(10u) + row, xrow, lane);
    }
    let sa = group_sum(a, lid.x, 0u);
    let sb = group_sum(b, lid.x, 1u);
    if (lane == 0u && g < pu(9u)) {
        st(pu(6u) + g, epi2(g, sa, sb));
    }
}
