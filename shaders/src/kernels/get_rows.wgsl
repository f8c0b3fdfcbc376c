// out[b, i, j] = table[b, ids[b, i], j], decoded to F32. Sources: 0 table (any dtype), 1 ids.
// Params: 0 total, 1 D, 2 R, 3 ids per batch, 4 table_off, 5 ids_off, 6 out_off, 7 first row
// bound, 8 rows bound: a table larger than one storage binding runs as several dispatches, each
// writing the rows whose ids fall in its range (an unsplit table binds rows 0..R).
// Ids outside 0..R are clamped (the CPU backend reports them as errors).

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let d = pu(1u);
    let r = pu(2u);
    let j = i % d;
    let row = i / d;
    let batch = row / pu(3u);
    let id = u32(clamp(ldi1(pu(5u) + row), 0, i32(r) - 1));
    if (id < pu(7u) || id >= pu(7u) + pu(8u)) {
        return;
    }
    st(pu(6u) + i, ld0(pu(4u) + (batch * r + id - pu(7u)) * d + j));
}
