// Sum, mean or argmax over each row; one workgroup per row.
// Source 0: x (dense). Params: 0 rows, 1 D, 2 op (0 sum, 1 mean, 2 argmax), 3 x_off, 4 out_off.

var<workgroup> rv: array<f32, 64>;
var<workgroup> ri: array<u32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    let d = pu(1u);
    let op = pu(2u);
    let ok = row < pu(0u);
    var acc = 0.0;
    var best = -3.4e38;
    var bi = 0xffffffffu;
    if (ok) {
        for (var j = lid.x; j < d; j += 64u) {
            let v = ld0(pu(3u) + row * d + j);
            acc += v;
            if (bi == 0xffffffffu || v > best) {
                best = v;
                bi = j;
            }
        }
    }
    rv[lid.x] = select(acc, best, op == 2u);
    ri[lid.x] = bi;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            if (op == 2u) {
                let ov = rv[lid.x + s];
                let oi = ri[lid.x + s];
                let mine = ri[lid.x];
                if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > rv[lid.x] || (ov == rv[lid.x] && oi < mine))) {
                    rv[lid.x] = ov;
                    ri[lid.x] = oi;
                }
            } else {
                rv[lid.x] += rv[lid.x + s];
            }
        }
        workgroupBarrier();
    }
    if (!ok || lid.x != 0u) {
        return;
    }
    if (op == 2u) {
        sti(pu(4u) + row, i32(ri[0]));
    } else if (op == 1u) {
        st(pu(4u) + row, rv[0] / f32(d));
    } else {
        st(pu(4u) + row, rv[0]);
    }
}
