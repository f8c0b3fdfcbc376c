// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k] for prompts (M > 1; `matmul` is the one-row
// form, for decode). A workgroup of 256 threads computes a tile of up to 64 rows of x by 64
// rows of w: per step of 16 along k, the threads stage both blocks in workgroup memory (each
// weight element read and decoded once for all the tile's rows of x, each activation once for
// its 64 weight rows), then each thread accumulates a 4 × 4 block of outputs from registers
// (rows ty + 16i, weight rows tx + 16j), 8 workgroup loads for 16 multiply-adds.
// Source 0: x (F32, rows of K at a uniform stride); source 1: w (any dtype, dense).
// Params: as `matmul`'s, with 9 the units (batches × row blocks × N), 12 the rows of x per
// block (2 to 64), 13 the weight rows per tile (64), 14 a residual's offset and 15 x's row
// stride: the dispatch has batches × row blocks × ⌈N / 64⌉ workgroups.

const TK: u32 = 16u;
// weight rows padded by one so that threads reading different rows hit different banks
const WS: u32 = 17u;
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1088>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = row_tile(wid.y * nwg.x + wid.x);
    let k_ = pu(2u);
    let tx = lid.x % 16u;
    let ty = lid.x / 16u;
    var acc: array<f32, 16>;
    for (var j = 0u; j < 16u; j++) {
        acc[j] = 0.0;
    }
    for (var k0 = 0u; k0 < k_; k0 += TK) {
        for (var q = 0u; q < 4u; q++) {
            let e = lid.x + 256u * q;
            let r = e / TK;
            let kk = e % TK;
            let k = k0 + kk;
            xs[e] = select(0.0, ld0(t.xbase + r * pu(15u) + k), r < t.rows && k < k_);
            ws[r * WS + kk] = select(0.0, ld1(t.wbase + r * k_ + k), r < t.cols && k < k_);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let x0 = xs[ty * TK + kk];
            let x1 = xs[(ty + 16u) * TK + kk];
            let x2 = xs[(ty + 32u) * TK + kk];
            let x3 = xs[(ty + 48u) * TK + kk];
            for (var j = 0u; j < 4u; j++) {
                let w = ws[(tx + 16u * j) * WS + kk];
                acc[j] += x0 * w;
                acc[4u + j] += x1 * w;
                acc[8u + j] += x2 * w;
                acc[12u + j] += x3 * w;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = ty + 16u * i;
        if (m < t.rows) {
            for (var j = 0u; j < 4u; j++) {
                let n = tx + 16u * j;
                if (n < t.cols) {
                    let at = row_tile_out(t, m, n);
                    st(pu(5u) + at, epi(at, acc[4u * i + j] + residual(at)));
                }
            }
        }
    }
}
