// Indices of the k largest values of each row, largest first, lower index first on ties; one
// thread per row, k selection passes (`top_k_takes`, shared with the ids other kernels choose). Source 0: x (dense). Output I32.
// Params: 0 rows, 1 D, 2 k, 3 x_off, 4 out_off.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (row >= pu(0u)) {
        return;
    }
    let d = pu(1u);
    let base = pu(3u) + row * d;
    var lv = 0.0;
    var li = 0u;
    for (var kk = 0u; kk < pu(2u); kk++) {
        var bv = 0.0;
        var bi = d;
        for (var j = 0u; j < d; j++) {
            let v = ld0(base + j);
            if (top_k_takes(v, j, kk == 0u, lv, li, bv, bi, d)) {
                bv = v;
                bi = j;
            }
        }
        lv = bv;
        li = bi;
        sti(pu(4u) + row * pu(2u) + kk, i32(bi));
    }
}
