// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k] for prompts (M > 1; `matmul` is the one-row
// form, for decode). A workgroup of 64 threads computes a tile of up to 8 rows of x by 32 rows
// of w: per step of 32 along k, the threads stage both blocks in workgroup memory (each weight
// element read and decoded once for all 8 rows, each activation once for all 32 weight rows),
// then each thread accumulates its 4 outputs.
// Source 0: x (dense F32); source 1: w (any dtype, dense).
// Params: as `matmul`'s, with 9 the units (batches × row blocks × N), 12 the rows of x per
// block (2 to 8), 13 the weight rows per tile (32) and 14 a residual's offset: the dispatch has
// batches × row blocks × ⌈N / 32⌉ workgroups.

const TM: u32 = 8u;
const TN: u32 = 32u;
const TK: u32 = 32u;
// weight rows padded by one so that threads reading different rows hit different banks
const WS: u32 = 33u;
var<workgroup> xs: array<f32, 256>;
var<workgroup> ws: array<f32, 1056>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let m_ = pu(0u);
    let n_ = pu(1u);
    let k_ = pu(2u);
    let mt = pu(12u);
    let blocks = (m_ + mt - 1u) / mt;
    let tiles = (n_ + TN - 1u) / TN;
    let live = g < pu(9u) / n_ * tiles;
    let n0 = (g % tiles) * TN;
    let m0 = ((g / tiles) % blocks) * mt;
    let b = g / (tiles * blocks);
    let b0 = b / pu(6u);
    let b1 = b % pu(6u);
    let wb = select(b0, 0u, pu(7u) == 1u) * pu(8u) + select(b1, 0u, pu(8u) == 1u);
    let xbase = pu(3u) + (b * m_ + m0) * k_;
    let wbase = pu(4u) + (wb * n_ + n0) * k_;
    let rows = select(0u, min(mt, m_ - m0), live);
    let cols = select(0u, min(TN, n_ - n0), live);
    // this thread's outputs: row m, weight rows ng, ng + 8, ng + 16, ng + 24
    let m = lid.x % TM;
    let ng = lid.x / TM;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var k0 = 0u; k0 < k_; k0 += TK) {
        for (var e = lid.x; e < TM * TK; e += 64u) {
            let r = e / TK;
            let k = k0 + e % TK;
            xs[e] = select(0.0, ld0(xbase + r * k_ + k), r < rows && k < k_);
        }
        for (var e = lid.x; e < TN * TK; e += 64u) {
            let r = e / TK;
            let k = k0 + e % TK;
            ws[r * WS + e % TK] = select(0.0, ld1(wbase + r * k_ + k), r < cols && k < k_);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let xv = xs[m * TK + kk];
            for (var j = 0u; j < 4u; j++) {
                acc[j] += xv * ws[(ng + 8u * j) * WS + kk];
            }
        }
        workgroupBarrier();
    }
    if (m < rows) {
        for (var j = 0u; j < 4u; j++) {
            let n = ng + 8u * j;
            if (n < cols) {
                let at = (b * m_ + m0 + m) * pu(10u) + pu(11u) + n0 + n;
                st(pu(5u) + at, epi(at, acc[j] + residual(at)));
            }
        }
    }
}
