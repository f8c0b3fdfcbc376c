// A row normalisation (rms or l2) of source 0 followed by an elementwise program; one
// workgroup per row. Params as `elementwise` (source 0 with the output's shape, dense or
// strided), then
// at 6 + 5·n_sources: eps (f32 bits; the sum's floor for kind 2), kind (0 rms, 1 l2, 2 sum:
// x / clamp(Σx, eps, max)), max (f32 bits).
// The generated body (placeholder BODY) computes `v`; its loads of source 0 are multiplied by the row factor `f`.

var<workgroup> red: array<f32, 64>;

fn lda(k: u32, i0: u32, i1: u32, i2: u32, i3: u32) -> u32 {
    let b = 6u + 5u * k;
    return pu(b) + i0 * pu(b + 1u) + i1 * pu(b + 2u) + i2 * pu(b + 3u) + i3 * pu(b + 4u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    let d = pu(5u);
    let rows = pu(0u) / d;
    let pe = 6u + 5u * {{NSRC}}u;
    let kind = pu(pe + 1u);
    // (source 0 may be strided: its row read through its own strides)
    let r2 = row % pu(4u);
    let r1 = (row / pu(4u)) % pu(3u);
    let r0 = row / pu(4u) / pu(3u);
    var acc = 0.0;
    if (row < rows) {
        for (var j = lid.x; j < d; j += 64u) {
            let x = ld0(lda(0u, r0, r1, r2, j));
            acc += select(x * x, x, kind == 2u);
        }
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    if (row >= rows) {
        return;
    }
    let ss = red[0];
    let eps = pf(pe);
    var f = 1.0 / sqrt(ss / f32(d) + eps);
    if (kind == 1u) {
        f = 1.0 / max(sqrt(ss), eps);
    } else if (kind == 2u) {
        f = 1.0 / clamp(ss, eps, pf(pe + 2u));
    }
    for (var j = lid.x; j < d; j += 64u) {
        let i = row * d + j;
        let i3 = j;
        var r = row;
        let i2 = r % pu(4u);
        r = r / pu(4u);
        let i1 = r % pu(3u);
        let i0 = r / pu(3u);
        {{BODY}}
        st(pu(1u) + i, v);
    }
}
