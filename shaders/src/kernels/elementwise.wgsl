// Elementwise program over a dense output of up to 4 dimensions; sources broadcast.
// Params: 0 n, 1 out_off, 2..6 out dims (padded to 4), then per source k at 6 + 5k:
// offset, strides s0..s3 (0 on broadcast dimensions).
// The generated body (placeholder BODY) computes `v` from loads `lda(k, i0, i1, i2, i3)`.

fn lda(k: u32, i0: u32, i1: u32, i2: u32, i3: u32) -> u32 {
    let b = 6u + 5u * k;
    return pu(b) + i0 * pu(b + 1u) + i1 * pu(b + 2u) + i2 * pu(b + 3u) + i3 * pu(b + 4u);
}

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
    let f = 1.0;
    {{BODY}}
    st(pu(1u) + i, v);
}
