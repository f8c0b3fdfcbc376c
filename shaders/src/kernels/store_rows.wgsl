// dst[idx[i], j] = src[i, j], converted to the cache's dtype; one thread per element. F16 and
// BF16 halves are written with atomics so two threads sharing a 32-bit word never race.
// Sources: 0 src (F32), 1 idx (I32); the destination is `dst`. Indices outside 0..R are
// skipped. Params: 0 total, 1 D, 2 R, 3 dst_off, 4 dst row stride, 5 src_off, 6 idx_off.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    if (i >= pu(0u)) {
        return;
    }
    let d = pu(1u);
    let j = i % d;
    let row = i / d;
    let id = ldi1(pu(6u) + row);
    if (id < 0 || u32(id) >= pu(2u)) {
        return;
    }
    let at = pu(3u) + u32(id) * pu(4u) + j;
    store_dst(at, ld0(pu(5u) + i));
}
