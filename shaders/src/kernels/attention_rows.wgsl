// softmax(q·kᵀ·scale + mask)·v for a prompt (flash style, by blocks of queries): a workgroup
// of 128 threads per (block of BQ queries, head), keys in tiles of 32, so that a tile's keys
// and values are read once for the block (where `attention` reads them again for every query)
// and both products are spread over all the threads:
// - scores: a thread per (query, key of every 128 / BQ-th), its 32 / (128 / BQ) scores summed
//   over the staged q rows and K (in chunks of 32 dims where the head's K does not fit), dot
//   products of vectors of 4;
// - softmax: each thread keeps its query's running max and its own part of the sum; the tile's
//   max goes through workgroup memory (no thread walks a query's keys alone);
// - weighted values: a thread per (vector of 4 output dims, group of queries), V staged in as
//   many keys as fit.
// BQ is 16 for heads of at most 128 dims, 8 up to 256 (param 27, the lowering's), so that q
// and a chunk of K fit the 16 KiB of workgroup memory every adapter offers. No stores or rope
// (decode's forms, `attention`).
// Sources: 0 q [T, Hq, D], 1 k [Tk, Hkv, D], 2 v [Tk, Hkv, Dv], then `ldmask` and `ldgate`
// when present; `emit` (the generator's) writes an output through the gate. Params:
// `attention`'s (0 T, 1 Hq, 2 D, 3 Tk, 4 Hkv, 5 Dv, 6 scale (f32 bits), 7 causal, 8 masked,
// 9 gated, 10 q_off, 11 k_off, 12 v_off, 13 mask_off, 14 gate_off, 15 out_off, 20 rope (0
// here), 24.. the gate's three strides), 27 BQ.

const BK: u32 = 32u;
const NEG: f32 = -3.0e38;
// vectors of workgroup memory shared by the q rows (BQ × (D / 4 + 1)) and the staged K chunk
// or V rows (what is left: at least 32 × 9)
const SH: u32 = 816u;
var<workgroup> sh: array<vec4<f32>, 816>;
// the tile's weights [key, query]
var<workgroup> pt: array<f32, 512>;
// per thread: its scores' max, at the end its part of the sum
var<workgroup> part: array<f32, 128>;
// per query: the tile's correction of the running sums
var<workgroup> cs: array<f32, 16>;

fn ldx(which: u32, i: u32) -> f32 {
    if (which == 0u) {
        return ld0(i);
    }
    if (which == 1u) {
        return ld1(i);
    }
    return ld2(i);
}

// `rows` rows of source `which` (row r at element off + r·rs, `width` elements, zeros past it
// and for rows from `valid` on) into sh[dst + r·ds ..] as w4 vectors of 4, a thread per
// vector: the threads take columns lid % w4 of rows lid / w4, + 128 / w4, …
fn stage(which: u32, off: u32, rs: u32, valid: u32, width: u32, w4: u32, rows: u32, dst: u32, ds: u32, lid: u32) {
    let per = 128u / w4;
    if (lid >= per * w4) {
        return;
    }
    let c = lid % w4;
    for (var r = lid / w4; r < rows; r += per) {
        var v = vec4<f32>(0.0);
        if (r < valid) {
            for (var i = 0u; i < 4u; i++) {
                let e = 4u * c + i;
                if (e < width) {
                    v[i] = ldx(which, off + r * rs + e);
                }
            }
        }
        sh[dst + r * ds + c] = v;
    }
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let lid = lid3.x;
    let gw = wid.y * nwg.x + wid.x;
    let t_ = pu(0u);
    let hq = pu(1u);
    let d = pu(2u);
    let tk = pu(3u);
    let hkv = pu(4u);
    let dv = pu(5u);
    let causal = pu(7u) == 1u;
    let bq = pu(27u);
    let h = gw % hq;
    let t0 = (gw / hq) * bq;
    let kh = h / (hq / hkv);
    // the layout: q rows of qs vectors, then the K chunk (rows of dc4 + 1 vectors) or V rows
    let d4 = (d + 3u) / 4u;
    let qs = d4 + 1u;
    let kb = bq * qs;
    let room = SH - kb;
    var dc4 = d4;
    if (BK * (d4 + 1u) > room) {
        dc4 = 8u;
    }
    let ks = dc4 + 1u;
    let dv4 = (dv + 3u) / 4u;
    var vk = BK;
    while (vk * dv4 > room) {
        vk >>= 1u;
    }
    // the score threads: query sq, keys sk, sk + tpq, …
    let tpq = 128u / bq;
    let kpt = BK / tpq;
    let sq = lid / tpq;
    let sk = lid % tpq;
    // the value threads: vector db of output dims, queries g, g + pg, … (qpt of them)
    let pg = 128u / dv4;
    let g = lid / dv4;
    let db = lid % dv4;
    let qpt = (bq + pg - 1u) / pg;
    let vt = g < pg;
    stage(0u, pu(10u) + (t0 * hq + h) * d, hq * d, select(0u, t_ - t0, t0 < t_), d, d4, bq, 0u, qs, lid);
    // the keys the block's queries see: all, or (causal) up to its last query's limit
    var kend = tk;
    if (causal) {
        kend = min(tk, min(t0 + bq, t_) + tk - t_);
    }
    let st_ = t0 + sq;
    var limit = tk - 1u;
    if (causal) {
        limit = st_ + tk - t_;
    }
    var m = NEG;
    var l = 0.0;
    var acc: array<vec4<f32>, 4>;
    for (var tile = 0u; tile < kend; tile += BK) {
        let left = tk - tile;
        var s = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        for (var c0 = 0u; c0 < d4; c0 += dc4) {
            let n4 = min(dc4, d4 - c0);
            stage(1u, pu(11u) + (tile * hkv + kh) * d + 4u * c0, hkv * d, left, d - 4u * c0, n4, BK, kb, ks, lid);
            workgroupBarrier();
            for (var e4 = 0u; e4 < n4; e4++) {
                let qv = sh[sq * qs + c0 + e4];
                for (var r = 0u; r < 4u; r++) {
                    if (r < kpt) {
                        s[r] += dot(qv, sh[kb + (sk + tpq * r) * ks + e4]);
                    }
                }
            }
            workgroupBarrier();
        }
        var tm = NEG;
        for (var r = 0u; r < 4u; r++) {
            let j = tile + sk + tpq * r;
            var v = NEG;
            if (r < kpt && st_ < t_ && j < tk && j <= limit) {
                v = s[r] * pf(6u);
                if (pu(8u) == 1u) {
                    v += ldmask(pu(13u) + st_ * tk + j);
                }
                v = max(v, NEG);
            }
            s[r] = v;
            tm = max(tm, v);
        }
        part[lid] = tm;
        workgroupBarrier();
        for (var i = 0u; i < tpq; i++) {
            tm = max(tm, part[sq * tpq + i]);
        }
        let mn = max(m, tm);
        var corr = 0.0;
        if (m > NEG) {
            corr = exp(m - mn);
        }
        var sum = 0.0;
        for (var r = 0u; r < 4u; r++) {
            if (r < kpt) {
                var p = 0.0;
                if (s[r] > NEG) {
                    p = exp(s[r] - mn);
                }
                pt[(sk + tpq * r) * bq + sq] = p;
                sum += p;
            }
        }
        l = l * corr + sum;
        m = mn;
        if (sk == 0u) {
            cs[sq] = corr;
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let q = g + pg * i;
            if (vt && i < qpt && q < bq) {
                acc[i] *= cs[q];
            }
        }
        for (var v0 = 0u; v0 < min(BK, kend - tile); v0 += vk) {
            stage(2u, pu(12u) + ((tile + v0) * hkv + kh) * dv, hkv * dv, select(0u, left - v0, v0 < left), dv, dv4, vk, kb, dv4, lid);
            workgroupBarrier();
            if (vt) {
                for (var kk = 0u; kk < vk; kk++) {
                    let vv = sh[kb + kk * dv4 + db];
                    for (var i = 0u; i < 4u; i++) {
                        let q = g + pg * i;
                        if (i < qpt && q < bq) {
                            // (a key the query does not see adds nothing, whatever its row holds)
                            let p = pt[(v0 + kk) * bq + q];
                            acc[i] += select(vec4<f32>(0.0), p * vv, p > 0.0);
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }
    part[lid] = l;
    workgroupBarrier();
    for (var i = 0u; i < 4u; i++) {
        let q = g + pg * i;
        if (vt && i < qpt && q < bq && t0 + q < t_) {
            var sum = 0.0;
            for (var j = 0u; j < tpq; j++) {
                sum += part[q * tpq + j];
            }
            for (var c = 0u; c < 4u; c++) {
                let dd = 4u * db + c;
                if (dd < dv) {
                    emit(t0 + q, h, dd, acc[i][c], sum);
                }
            }
        }
    }
}
