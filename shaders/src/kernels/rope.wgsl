// Rotary embedding of x [T, H, D] at positions pos [T]; one thread per element. The first
// n_dims of each head rotate in pairs (normal: (2i, 2i+1); neox: (i, i + n_dims/2)), the rest
// are copied. Sources: 0 x (dense), 1 pos (I32).
// Params: 0 total, 1 H, 2 D, 3 n_dims, 4 mode (0 normal, 1 neox), 5 x_off, 6 pos_off,
// 7 out_off, 8.. each pair's revolutions per position (freq_scale applied; computed on the host
// in f64) as a 64-bit binary fraction, two words a pair: high, low (see `rope_angle`).

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let dd = pu(2u);
    let nd = pu(3u);
    let d = i % dd;
    let th = i / dd;
    let t = th / pu(1u);
    let base = pu(5u) + th * dd;
    if (d >= nd) {
        st(pu(7u) + i, ld0(base + d));
        return;
    }
    let r = rope_slot(d, nd, pu(4u));
    let a = rope_angle(ldi1(pu(6u) + t), pu(8u + 2u * r.x), pu(9u + 2u * r.x));
    st(pu(7u) + i, rope_rotate(ld0(base + d), ld0(base + r.z), r.y == 1u, a));
}
