// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k] for prompts on adapters with cooperative matrices
// (tensor cores): `matmul_rows`' tiles, parameters and dispatch, multiplied by the subgroups
// in 16 × 16 × 16 f16 products with f32 sums. A workgroup of 128 threads, four subgroups of
// 32 lanes (the backend picks this kernel only where every subgroup has 32), computes a tile
// of up to 64 rows of x by 64 rows of w: per step of 32 along k the threads stage both blocks
// as f16 in workgroup memory (each weight element decoded once, values beyond f16's range
// clamped), then each subgroup multiplies a 32 × 32 quarter of the tile as 2 × 2 matrices of
// 16 × 16. The sums go through workgroup memory to be written with the residual and the
// epilogue, as `matmul_rows` writes them.
// Source 0: x (F32, rows of K at a uniform stride); source 1: w (any dtype, dense).
// Params: as `matmul_rows`'.

// the tile is 64 weight rows wide (`row_tile`)
const TN: u32 = 64u;
const TK: u32 = 32u;
var<workgroup> xs: array<f16, 2048>;
var<workgroup> ws: array<f16, 2048>;
var<workgroup> cs: array<f32, 4096>;

fn half_(v: f32) -> f16 {
    return f16(clamp(v, -65504.0, 65504.0));
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sg: u32) {
    let t = row_tile(wid.y * nwg.x + wid.x);
    let k_ = pu(2u);
    // this subgroup's quarter: rows r0.., weight rows c0..
    let r0 = (sg / 2u) * 32u;
    let c0 = (sg % 2u) * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < k_; k0 += TK) {
        for (var q = 0u; q < 16u; q++) {
            let e = lid.x + 128u * q;
            let r = e / TK;
            let kk = e % TK;
            let k = k0 + kk;
            xs[e] = half_(select(0.0, ld0(t.xbase + r * pu(15u) + k), r < t.rows && k < k_));
            ws[e] = half_(select(0.0, ld1(t.wbase + r * k_ + k), r < t.cols && k < k_));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk += 16u) {
            // x rows are rows of A (row-major); w rows are columns of B (column-major)
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&xs[r0 * TK + kk], TK);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&xs[(r0 + 16u) * TK + kk], TK);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&ws[c0 * TK + kk], TK);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&ws[(c0 + 16u) * TK + kk], TK);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    coopStoreT(c00, &cs[r0 * TN + c0], TN);
    coopStoreT(c01, &cs[r0 * TN + c0 + 16u], TN);
    coopStoreT(c10, &cs[(r0 + 16u) * TN + c0], TN);
    coopStoreT(c11, &cs[(r0 + 16u) * TN + c0 + 16u], TN);
    workgroupBarrier();
    for (var q = 0u; q < 32u; q++) {
        let e = lid.x + 128u * q;
        let m = e / TN;
        let n = e % TN;
        if (m < t.rows && n < t.cols) {
            let at = row_tile_out(t, m, n);
            st(pu(5u) + at, epi(at, cs[e] + residual(at)));
        }
    }
}
