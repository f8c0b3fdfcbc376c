// softmax(q·kᵀ·scale + mask)·v for a prompt (flash style, by blocks of queries): a workgroup
// of 64 threads per (block of QB = 8 queries, head), keys in tiles of KT = 16 staged in
// workgroup memory, so that a tile's keys and values are read once for eight queries (where
// `attention` reads them again for every query). Per tile: the scores (a thread per query and
// two of its keys, dot products over the staged rows), then each query's running max and the
// weights (its thread), while every thread stages the tile's values over its keys; then each
// thread adds the weighted values of output dims lid and lid + 64 for all eight queries.
// Heads of at most 128 dims (q, k and v); no stores or rope (decode's forms, `attention`).
// Sources: 0 q [T, Hq, D], 1 k [Tk, Hkv, D], 2 v [Tk, Hkv, Dv], then `ldmask` and `ldgate`
// when present; `emit` (the generator's) writes an output through the gate. Params:
// `attention`'s (0 T, 1 Hq, 2 D, 3 Tk, 4 Hkv, 5 Dv, 6 scale (f32 bits), 7 causal, 8 masked,
// 9 gated, 10 q_off, 11 k_off, 12 v_off, 13 mask_off, 14 gate_off, 15 out_off, 20 rope (0
// here), 24.. the gate's three strides).

const QB: u32 = 8u;
const KT: u32 = 16u;
// a staged row's stride: one word past 128, so that a warp's reads of different rows at one
// dim fall in different banks
const RS: u32 = 129u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 1032>;
var<workgroup> kv: array<f32, 2064>;
var<workgroup> sc: array<f32, 128>;
var<workgroup> rmax: array<f32, 8>;
var<workgroup> rsum: array<f32, 8>;
var<workgroup> rcorr: array<f32, 8>;

// rows tile .. tile + KT of KV head kh of k (which 1, rows of d) or v (2, rows of dv) staged
// in `kv`, zeros past the last key
fn stage(which: u32, tile: u32, kh: u32, width: u32, lid: u32) {
    let tk = pu(3u);
    // (a row's dims by consecutive threads: no division by the width)
    for (var kk = 0u; kk < KT; kk++) {
        let j = tile + kk;
        let row = (j * pu(4u) + kh) * width;
        for (var e = lid; e < width; e += 64u) {
            var v = 0.0;
            if (j < tk) {
                if (which == 1u) {
                    v = ld1(pu(11u) + row + e);
                } else {
                    v = ld2(pu(12u) + row + e);
                }
            }
            kv[kk * RS + e] = v;
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gw = wid.y * nwg.x + wid.x;
    let t_ = pu(0u);
    let hq = pu(1u);
    let d = pu(2u);
    let tk = pu(3u);
    let hkv = pu(4u);
    let dv = pu(5u);
    let causal = pu(7u) == 1u;
    let h = gw % hq;
    let t0 = (gw / hq) * QB;
    let kh = h / (hq / hkv);
    for (var i = lid.x; i < QB * d; i += 64u) {
        let q = i / d;
        let e = i % d;
        var v = 0.0;
        if (t0 + q < t_) {
            v = ld0(pu(10u) + ((t0 + q) * hq + h) * d + e);
        }
        qs[q * RS + e] = v;
    }
    if (lid.x < QB) {
        rmax[lid.x] = NEG;
        rsum[lid.x] = 0.0;
    }
    // the keys the block's queries see: all, or (causal) up to its last query's limit
    var kend = tk;
    if (causal) {
        kend = min(tk, min(t0 + QB, t_) + tk - t_);
    }
    var acc: array<f32, 16>;
    for (var r = 0u; r < 16u; r++) {
        acc[r] = 0.0;
    }
    // (the score thread's query and its limit)
    let sq = lid.x / 8u;
    let st_ = t0 + sq;
    var limit = tk - 1u;
    if (causal) {
        limit = st_ + tk - t_;
    }
    workgroupBarrier();
    for (var tile = 0u; tile < kend; tile += KT) {
        stage(1u, tile, kh, d, lid.x);
        workgroupBarrier();
        for (var r = 0u; r < 2u; r++) {
            let kk = lid.x % 8u + 8u * r;
            let j = tile + kk;
            var s = NEG;
            if (st_ < t_ && j < tk && j <= limit) {
                var dot = 0.0;
                for (var e = 0u; e < d; e++) {
                    dot += qs[sq * RS + e] * kv[kk * RS + e];
                }
                s = dot * pf(6u);
                if (pu(8u) == 1u) {
                    s += ldmask(pu(13u) + st_ * tk + j);
                }
                s = max(s, NEG);
            }
            sc[sq * KT + kk] = s;
        }
        workgroupBarrier();
        stage(2u, tile, kh, dv, lid.x);
        if (lid.x < QB) {
            let q = lid.x;
            let m = rmax[q];
            var tm = NEG;
            for (var kk = 0u; kk < KT; kk++) {
                tm = max(tm, sc[q * KT + kk]);
            }
            let mn = max(m, tm);
            var corr = 0.0;
            if (m > NEG) {
                corr = exp(m - mn);
            }
            var sum = 0.0;
            for (var kk = 0u; kk < KT; kk++) {
                let s = sc[q * KT + kk];
                var p = 0.0;
                if (s > NEG) {
                    p = exp(s - mn);
                }
                sc[q * KT + kk] = p;
                sum += p;
            }
            rsum[q] = rsum[q] * corr + sum;
            rmax[q] = mn;
            rcorr[q] = corr;
        }
        workgroupBarrier();
        for (var q = 0u; q < QB; q++) {
            let corr = rcorr[q];
            for (var r = 0u; r < 2u; r++) {
                let dd = lid.x + 64u * r;
                var a = acc[q * 2u + r] * corr;
                if (dd < dv) {
                    for (var kk = 0u; kk < KT; kk++) {
                        // (a key the query does not see adds nothing, whatever its row holds)
                        let p = sc[q * KT + kk];
                        a += select(0.0, p * kv[kk * RS + dd], p > 0.0);
                    }
                }
                acc[q * 2u + r] = a;
            }
        }
        workgroupBarrier();
    }
    for (var q = 0u; q < QB; q++) {
        if (t0 + q < t_) {
            for (var r = 0u; r < 2u; r++) {
                let dd = lid.x + 64u * r;
                if (dd < dv) {
                    emit(t0 + q, h, dd, acc[q * 2u + r], rsum[q]);
                }
            }
        }
    }
}
