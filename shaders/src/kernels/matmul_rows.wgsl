// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k] for prompts (M > 1). A workgroup meets one weight
// row n with up to 8 rows m of x, so each weight element is read and decoded once for all of
// them; its 64 threads split k. (`matmul` is the one-row form, for decode.)
// Source 0: x (dense F32); source 1: w (any dtype, dense).
// Params: as `matmul`'s, with 9 the workgroups (batches × row blocks × N) and 12 the rows of x
// per workgroup (2 to 8), 13 outputs per workgroup (1: param 9 counts workgroups).

const MT: u32 = 8u;
var<workgroup> red: array<f32, 512>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let m_ = pu(0u);
    let n_ = pu(1u);
    let k_ = pu(2u);
    let mt = pu(12u);
    let blocks = (m_ + mt - 1u) / mt;
    let n = g % n_;
    let m0 = ((g / n_) % blocks) * mt;
    let b = g / (n_ * blocks);
    let b0 = b / pu(6u);
    let b1 = b % pu(6u);
    let wb = select(b0, 0u, pu(7u) == 1u) * pu(8u) + select(b1, 0u, pu(8u) == 1u);
    let wrow = pu(4u) + (wb * n_ + n) * k_;
    let xrow = pu(3u) + (b * m_ + m0) * k_;
    let live = g < pu(9u);
    let rows = select(0u, min(mt, m_ - m0), live);
    var acc: array<f32, 8>;
    for (var k = lid.x; k < k_ && live; k += 64u) {
        let wv = ld1(wrow + k);
        for (var r = 0u; r < MT; r++) {
            if (r < rows) {
                acc[r] += ld0(xrow + r * k_ + k) * wv;
            }
        }
    }
    for (var r = 0u; r < MT; r++) {
        red[r * 64u + lid.x] = acc[r];
    }
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            for (var r = 0u; r < MT; r++) {
                if (r < rows) {
                    red[r * 64u + lid.x] += red[r * 64u + lid.x + s];
                }
            }
        }
        workgroupBarrier();
    }
    if (lid.x < rows) {
        st(pu(5u) + (b * m_ + m0 + lid.x) * pu(10u) + pu(11u) + n, red[lid.x * 64u]);
    }
}
