// softmax(q·kᵀ·scale + mask)·v with grouped KV heads, one workgroup of 64 threads per
// (query, head), keys in tiles of 64 with a running max (flash style). Each thread owns output
// dims lid, lid+64, lid+128, lid+192 (Dv ≤ 256). Sources: 0 q, 1 k, 2 v, then `ldmask` and
// `ldgate` when present.
// With stores (decode, T = 1), k and v are windows of the KV caches from row 0, and the new
// key and value (`ldkn`, `ldvn`) belong in row `ldidx`: key row `ldidx` is read from them
// (rounded as the caches hold them, `rnd0`, `rnd1`), and
// the first workgroup of each KV head writes them into the caches (`put0`, `put1`), so no
// workgroup reads a cache row that another writes.
// With rope as well, q and the new key are rotated at position `ldpos` as they are loaded.
// The query row (and the new key's head) sit in workgroup memory for the whole kernel.
// Params: 0 T, 1 Hq, 2 D (at most 256), 3 Tk, 4 Hkv, 5 Dv, 6 scale (f32 bits), 7 causal,
// 8 masked, 9 gated, 10 q_off, 11 k_off, 12 v_off, 13 mask_off, 14 gate_off, 15 out_off,
// 16 stores, 17 k_new_off, 18 v_new_off, 19 idx_off, 20 rope, 21 rope mode (0 normal, 1 neox),
// 22 rotated dims, 23 pos_off, 24.. the pairs' revolutions per position (two words each, as
// `rope_angle` reads them: 22 words with rope), then the gate's three strides (it may be a strided view).

var<workgroup> sc: array<f32, 64>;
var<workgroup> qs: array<f32, 256>;
var<workgroup> kns: array<f32, 256>;

// Dim e of a head whose values are x (at e) and y (at e's partner), rotated at `pos` when the
// kernel ropes.
fn rotated(x: f32, y: f32, e: u32, pos: f32) -> f32 {
    if (pu(20u) == 0u || e >= pu(22u)) {
        return x;
    }
    let r = rope_slot(e, pu(22u), pu(21u));
    return rope_rotate(x, y, r.y == 1u, rope_angle(i32(pos), pu(24u + 2u * r.x), pu(25u + 2u * r.x)));
}

// The dim e's value pairs with when the kernel ropes (else e itself).
fn partner(e: u32) -> u32 {
    if (pu(20u) == 0u || e >= pu(22u)) {
        return e;
    }
    return rope_slot(e, pu(22u), pu(21u)).z;
}

const NEG: f32 = -3.0e38;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let hq = pu(1u);
    let d = pu(2u);
    let tk = pu(3u);
    let hkv = pu(4u);
    let dv = pu(5u);
    let ok = g < pu(0u) * hq;
    let t = g / hq;
    let h = g % hq;
    let kh = h / (hq / hkv);
    var limit = tk - 1u;
    if (pu(7u) == 1u) {
        limit = t + tk - pu(0u);
    }
    let qrow = pu(10u) + (t * hq + h) * d;
    let knrow = pu(17u) + kh * d;
    let pos = ldpos(pu(23u));
    if (ok) {
        for (var e = lid.x; e < d; e += 64u) {
            qs[e] = rotated(ld0(qrow + e), ld0(qrow + partner(e)), e, pos);
            kns[e] = rotated(ldkn(knrow + e), ldkn(knrow + partner(e)), e, pos);
        }
    }
    workgroupBarrier();
    var fresh = 0xffffffffu;
    if (pu(16u) == 1u) {
        fresh = u32(ldidx(pu(19u)));
        if (ok && h % (hq / hkv) == 0u) {
            for (var e = 2u * lid.x; e < d; e += 128u) {
                put0(pu(11u) + fresh * hkv * d + kh * d + e, kns[e], kns[e + 1u]);
            }
            for (var e = 2u * lid.x; e < dv; e += 128u) {
                let at = pu(18u) + kh * dv + e;
                put1(pu(12u) + fresh * hkv * dv + kh * dv + e, ldvn(at), ldvn(at + 1u));
            }
        }
    }
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var tile = 0u; tile < tk; tile += 64u) {
        let j = tile + lid.x;
        var s = NEG;
        if (ok && j < tk && j <= limit) {
            var dot = 0.0;
            if (j == fresh) {
                for (var e = 0u; e < d; e++) {
                    dot += qs[e] * rnd0(kns[e]);
                }
            } else {
                let krow = pu(11u) + (j * hkv + kh) * d;
                for (var e = 0u; e < d; e++) {
                    dot += qs[e] * ld1(krow + e);
                }
            }
            s = dot * pf(6u);
            if (pu(8u) == 1u) {
                s += ldmask(pu(13u) + t * tk + j);
            }
            s = max(s, NEG);
        }
        sc[lid.x] = s;
        workgroupBarrier();
        var tm = NEG;
        for (var e = 0u; e < 64u; e++) {
            tm = max(tm, sc[e]);
        }
        let mn = max(m, tm);
        var corr = 0.0;
        if (m > NEG) {
            corr = exp(m - mn);
        }
        l *= corr;
        for (var r = 0u; r < 4u; r++) {
            acc[r] *= corr;
        }
        if (mn > NEG) {
            for (var e = 0u; e < 64u; e++) {
                let se = sc[e];
                if (se > NEG) {
                    let p = exp(se - mn);
                    l += p;
                    let new_row = tile + e == fresh;
                    let vrow = select(pu(12u) + ((tile + e) * hkv + kh) * dv, pu(18u) + kh * dv, new_row);
                    for (var r = 0u; r < 4u; r++) {
                        let dd = lid.x + 64u * r;
                        if (dd < dv) {
                            if (new_row) {
                                acc[r] += p * rnd1(ldvn(vrow + dd));
                            } else {
                                acc[r] += p * ld2(vrow + dd);
                            }
                        }
                    }
                }
            }
        }
        m = mn;
        workgroupBarrier();
    }
    if (!ok) {
        return;
    }
    for (var r = 0u; r < 4u; r++) {
        let dd = lid.x + 64u * r;
        if (dd < dv) {
            var o = 0.0;
            if (l > 0.0) {
                o = acc[r] / l;
            }
            let oi = (t * hq + h) * dv + dd;
            if (pu(9u) == 1u) {
                // (the gate through its own strides, which follow the rope's frequencies)
                let gs = 24u + select(0u, pu(22u), pu(20u) == 1u);
                let gi = t * pu(gs) + h * pu(gs + 1u) + dd * pu(gs + 2u);
                o = o / (1.0 + exp(-ldgate(pu(14u) + gi)));
            }
            st(pu(15u) + oi, o);
        }
    }
}
