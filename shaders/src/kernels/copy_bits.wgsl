// Dense copy of 32-bit values (I32) from any strided layout, bit for bit.
// Params as `elementwise` with one source.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let i3 = i % pu(5u);
    var r = i / pu(5u);
    let i2 = r % pu(4u);
    r = r / pu(4u);
    let i1 = r % pu(3u);
    let i0 = r / pu(3u);
    let src = pu(6u) + i0 * pu(7u) + i1 * pu(8u) + i2 * pu(9u) + i3 * pu(10u);
    sti(pu(1u) + i, ldi0(src));
}
