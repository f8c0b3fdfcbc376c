// Joins two dense tensors along one dimension: out[o, r] = r < ia ? a[o, r] : b[o, r − ia],
// with `o` the index over the outer dimensions and ia, ib the inner sizes from `dim` on.
// Params: 0 total, 1 ia, 2 ib, 3 a_off, 4 b_off, 5 out_off.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let ia = pu(1u);
    let ib = pu(2u);
    let o = i / (ia + ib);
    let r = i % (ia + ib);
    var v: f32;
    if (r < ia) {
        v = ld0(pu(3u) + o * ia + r);
    } else {
        v = ld1(pu(4u) + o * ib + r - ia);
    }
    st(pu(5u) + i, v);
}
