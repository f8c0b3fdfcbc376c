// Several mat-vecs of one activation row in one dispatch, their outputs side by side:
// out[n] = x · w_j[n − start_j] for the weight j whose columns hold n (decode's q, k and v, or
// gate and up). 4 outputs per 128-thread workgroup, T = 32 threads each, summed by
// `group_sum` as in `matmul`; each weight is read through its own `row_dotj` (the generator's
// `row_dot_of` picks it).
// Source 0: x [K] (dense F32); sources 1..=W: the weights [N_j, K] (any dtype, dense).
// Params: 0 total columns, 1 W, 2 K, 3 x_off, 4 out_off, then for weight j (from 1) 3 + 2j its
// first column and 4 + 2j its element offset.

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = (wid.y * nwg.x + wid.x) * (128u / T) + lid.x / T;
    let lane = lid.x % T;
    prologue(pu(3u), lid.x);
    var acc = 0.0;
    if (o < pu(0u)) {
        var j = 1u;
        for (var i = 2u; i <= pu(1u); i++) {
            if (o >= pu(3u + 2u * i)) {
                j = i;
            }
        }
        let row = o - pu(3u + 2u * j);
        acc = row_dot_of(j, pu(4u + 2u * j) + row * pu(2u), pu(3u), lane);
    }
    let sum = group_sum(acc, lid.x, 0u);
    if (lane == 0u && o < pu(0u)) {
        st(pu(4u) + o, epi(o, sum));
    }
}
