// Gated delta rule of a long prompt, pass 1 of 2: everything inside a chunk of C tokens that
// does not depend on the state, for every chunk at once (a workgroup of 128 threads per
// (sequence, value head, chunk)). With the chunk's cumulative log-decays G_i (Σ of g up to
// token i), L[i][j] = β_i (k_i·k_j) e^{G_i − G_j} for j < i, and T = (I + L)⁻¹ (solved by
// forward substitution, a row at a time, in workgroup memory), it writes to the workspace:
//   UT [Dv][C]  U = T (β v)           WT [Dk][C]  W = T (β e^{G} k)
//   QT [Dk][C]  q_i e^{G_i}           KD [C][Dk]  k_j e^{G_last − G_j}
//   PT [C][C]   P[i][j] = (q_i·k_j) e^{G_i − G_j} for j ≤ i, at PT[j][i]
//   then e^{G_last}
// (rows of a chunk past the prompt's end are zero). `gated_delta_chunks` then carries the
// state through the chunks. The transposed layouts let that pass's threads, one per token of
// the chunk, read consecutive words.
// Sources and params 0..18: as `gated_delta_net`'s (q and k through `ldq`/`ldk` with the
// factors of `qk_factors`, g and beta through `ldg`/`ldb`); 19 the workspace's element offset
// in the arena, 20 the chunks per (sequence, head), 21 the words per chunk. The dispatch has
// S·Hv·chunks workgroups.

var<workgroup> gc_: array<f32, C>;
var<workgroup> bc_: array<f32, C>;
var<workgroup> fq_: array<f32, C>;
var<workgroup> fk_: array<f32, C>;
var<workgroup> l_: array<f32, C * C>;
var<workgroup> t_m: array<f32, C * C>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    let t_ = pu(1u);
    let hk = pu(2u);
    let hv = pu(3u);
    let dk = pu(4u);
    let dv = pu(5u);
    let nc = pu(20u);
    let live = wg < pu(0u) * hv * nc;
    let n = wg % nc;
    let sh = min(wg / nc, pu(0u) * hv - 1u);
    let h = sh % hv;
    let s = sh / hv;
    let kh = h / (hv / hk);
    let t0 = n * C;
    let c = min(C, t_ - t0);
    let ws = pu(19u) + (sh * nc + n) * pu(21u);
    let w_at = ws + C * dv;
    let q_at = w_at + C * dk;
    let k_at = q_at + C * dk;
    let p_at = k_at + C * dk;
    // each token's norm factors (every thread takes part), log-decay and strength
    for (var i = 0u; i < c; i++) {
        let qk = ((s * t_ + t0 + i) * hk + kh) * dk;
        let f = qk_factors(pu(7u) + qk, pu(8u) + qk, dk, lid.x);
        if (lid.x == 0u) {
            fq_[i] = f.x;
            fk_[i] = f.y;
        }
    }
    if (lid.x < c) {
        let at = (s * t_ + t0 + lid.x) * hv + h;
        gc_[lid.x] = ldg(pu(10u) + at);
        bc_[lid.x] = ldb(pu(11u) + at);
    }
    workgroupBarrier();
    if (lid.x == 0u) {
        var acc = 0.0;
        for (var i = 0u; i < c; i++) {
            acc += gc_[i];
            gc_[i] = acc;
        }
    }
    workgroupBarrier();
    // L, and P straight to the workspace
    for (var e = lid.x; e < C * C; e += 128u) {
        let i = e / C;
        let j = e % C;
        var lv = 0.0;
        var pv = 0.0;
        if (i < c && j <= i) {
            let ki = pu(8u) + ((s * t_ + t0 + i) * hk + kh) * dk;
            let qi = pu(7u) + ((s * t_ + t0 + i) * hk + kh) * dk;
            let kj = pu(8u) + ((s * t_ + t0 + j) * hk + kh) * dk;
            var kk = 0.0;
            var qk = 0.0;
            for (var d = 0u; d < dk; d++) {
                let x = ldk(kj + d, fk_[j]);
                kk += ldk(ki + d, fk_[i]) * x;
                qk += ldq(qi + d, fq_[i]) * x;
            }
            let decay = exp(gc_[i] - gc_[j]);
            if (j < i) {
                lv = bc_[i] * kk * decay;
            }
            pv = qk * decay;
        }
        l_[e] = lv;
        if (live) {
            st(p_at + j * C + i, pv);
        }
    }
    workgroupBarrier();
    // T = (I + L)⁻¹, unit lower triangular: row i from the rows before it
    for (var i = 0u; i < C; i++) {
        if (lid.x < C) {
            let m = lid.x;
            var v = select(0.0, 1.0, m == i);
            for (var j = m; j < i; j++) {
                v -= l_[i * C + j] * t_m[j * C + m];
            }
            t_m[i * C + m] = v;
        }
        workgroupBarrier();
    }
    // U = T (β v)
    for (var e = lid.x; e < C * dv; e += 128u) {
        let i = e % C;
        let r = e / C;
        var acc = 0.0;
        if (i < c) {
            for (var m = 0u; m <= i; m++) {
                let tok = t0 + m;
                let vat = s * pu(15u) + tok * pu(16u) + h * pu(17u) + r * pu(18u);
                acc += t_m[i * C + m] * bc_[m] * ld3(pu(9u) + vat);
            }
        }
        if (live) {
            st(ws + e, acc);
        }
    }
    // W = T (β e^{G} k), and q e^{G}
    for (var e = lid.x; e < C * dk; e += 128u) {
        let i = e % C;
        let d = e / C;
        var w = 0.0;
        var qv = 0.0;
        if (i < c) {
            for (var m = 0u; m <= i; m++) {
                let km = pu(8u) + ((s * t_ + t0 + m) * hk + kh) * dk;
                w += t_m[i * C + m] * bc_[m] * exp(gc_[m]) * ldk(km + d, fk_[m]);
            }
            let qi = pu(7u) + ((s * t_ + t0 + i) * hk + kh) * dk;
            qv = ldq(qi + d, fq_[i]) * exp(gc_[i]);
        }
        if (live) {
            st(w_at + e, w);
            st(q_at + e, qv);
        }
    }
    // k decayed to the chunk's end, and the chunk's decay
    let last = gc_[c - 1u];
    for (var e = lid.x; e < C * dk; e += 128u) {
        let j = e / dk;
        let d = e % dk;
        var kv = 0.0;
        if (j < c) {
            let kj = pu(8u) + ((s * t_ + t0 + j) * hk + kh) * dk;
            kv = ldk(kj + d, fk_[j]) * exp(last - gc_[j]);
        }
        if (live) {
            st(k_at + e, kv);
        }
    }
    if (live && lid.x == 0u) {
        st(p_at + C * C, exp(last));
    }
}
