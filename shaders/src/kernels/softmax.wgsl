// softmax(x · scale + mask) per row; one workgroup per row. Sources: 0 x (dense), 1 mask
// (broadcast strides). A row that is entirely -inf becomes zeros.
// Params: 0 rows, 1 D, 2 x_off, 3 out_off, 4 scale (f32 bits), 5 masked, 6 mask_off,
// 7..11 mask strides s0..s3, 11..14 x dims d0..d2 (d3 = D), 14 gathered: then source 0 is a
// table [R, E, 1] (15 its row stride, 16 its element stride), source 1 indices [R, D]
// (`ldidx`, 17 their offset), and x[r, j] = table[r, ids[r, j]].

var<workgroup> red: array<f32, 64>;

fn val(row: u32, j: u32) -> f32 {
    if (pu(14u) == 1u) {
        let c = u32(ldidx(pu(17u) + row * pu(1u) + j));
        return ld0(pu(2u) + row * pu(15u) + c * pu(16u)) * pf(4u);
    }
    var v = ld0(pu(2u) + row * pu(1u) + j) * pf(4u);
    if (pu(5u) == 1u) {
        let i2 = row % pu(13u);
        let i1 = (row / pu(13u)) % pu(12u);
        let i0 = row / (pu(13u) * pu(12u));
        v += ldmask(pu(6u) + i0 * pu(7u) + i1 * pu(8u) + i2 * pu(9u) + j * pu(10u));
    }
    return v;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    let d = pu(1u);
    let ok = row < pu(0u);
    var m = -3.0e38;
    var any = false;
    if (ok) {
        for (var j = lid.x; j < d; j += 64u) {
            let v = val(row, j);
            if (v > -3.0e38) {
                m = max(m, v);
            }
        }
    }
    red[lid.x] = m;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] = max(red[lid.x], red[lid.x + s]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var sum = 0.0;
    if (ok) {
        for (var j = lid.x; j < d; j += 64u) {
            let v = val(row, j);
            if (v > -3.0e38) {
                sum += exp(v - mx);
            }
        }
    }
    red[lid.x] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    if (!ok) {
        return;
    }
    for (var j = lid.x; j < d; j += 64u) {
        let v = val(row, j);
        var p = 0.0;
        if (v > -3.0e38 && total > 0.0) {
            p = exp(v - mx) / total;
        }
        st(pu(3u) + row * d + j, p);
    }
}
