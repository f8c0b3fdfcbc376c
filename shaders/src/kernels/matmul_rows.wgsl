// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k] for prompts (M > 1; `matmul` is the one-row
// form, for decode). A workgroup of 256 threads computes a tile of up to 64 rows of x by 64
// rows of w: per step of 16 along k, the threads stage both blocks in workgroup memory (each
// weight element read and decoded once for all the tile's rows of x, each activation once for
// its 64 weight rows), k-major, four rows to a vector; then each thread accumulates a 4 × 4
// block of outputs (rows 4·ty.., weight rows 4·tx..) from one vector of x and one of w per
// step of k: 2 workgroup loads for 16 multiply-adds.
// Source 0: x (F32, rows of K at a uniform stride); source 1: w (any dtype, dense).
// Params: as `matmul`'s, with 9 the units (batches × row blocks × N), 12 the rows of x per
// block (2 to 64), 13 the weight rows per tile (64), 14 a residual's offset and 15 x's row
// stride: the dispatch has batches × row blocks × ⌈N / 64⌉ workgroups.

const TK: u32 = 16u;
// a step's row of 16 vectors padded by one, so that a quarter-warp's stores of 8 steps fall
// on different banks
const XS: u32 = 17u;
var<workgroup> xs: array<vec4<f32>, 272>;
var<workgroup> ws: array<vec4<f32>, 272>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = row_tile(wid.y * nwg.x + wid.x);
    let k_ = pu(2u);
    let tx = lid.x % 16u;
    let ty = lid.x / 16u;
    // what this thread stages: step kk of rows 4·q .. 4·q + 3
    let kk = lid.x % TK;
    let q = lid.x / TK;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < k_; k0 += TK) {
        let k = k0 + kk;
        var xv = vec4<f32>(0.0);
        var wv = vec4<f32>(0.0);
        for (var i = 0u; i < 4u; i++) {
            let r = 4u * q + i;
            xv[i] = select(0.0, ld0(t.xbase + r * pu(15u) + k), r < t.rows && k < k_);
            wv[i] = select(0.0, ld1(t.wbase + r * k_ + k), r < t.cols && k < k_);
        }
        xs[kk * XS + q] = xv;
        ws[kk * XS + q] = wv;
        workgroupBarrier();
        for (var s = 0u; s < TK; s++) {
            let x = xs[s * XS + ty];
            let w = ws[s * XS + tx];
            a0 += x.x * w;
            a1 += x.y * w;
            a2 += x.z * w;
            a3 += x.w * w;
        }
        workgroupBarrier();
    }
    let acc = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var i = 0u; i < 4u; i++) {
        let m = 4u * ty + i;
        if (m < t.rows) {
            for (var j = 0u; j < 4u; j++) {
                let n = 4u * tx + j;
                if (n < t.cols) {
                    let at = row_tile_out(t, m, n);
                    st(pu(5u) + at, epi(at, acc[i][j] + residual(at)));
                }
            }
        }
    }
}
