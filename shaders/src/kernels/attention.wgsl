// softmax(q·kᵀ·scale + mask)·v with grouped KV heads, one workgroup of 64 threads per
// (query, head), keys in tiles of 64 with a running max (flash style). Each thread owns output
// dims lid, lid+64, lid+128, lid+192 (Dv ≤ 256). Sources: 0 q, 1 k, 2 v, then `ldmask` and
// `ldgate` when present; `emit` (the generator's) writes an output through the gate.
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
// `rope_angle` reads them: 22 words with rope), then the gate's three strides (it may be a
// strided view), then the split (at `split_at()`): chunks, phase, workspace offset, keys per
// chunk (at most 64).
// Split (flash decoding, for few queries over many keys): phase 1 has a workgroup per (query,
// head, chunk of keys) write its running max, sum and weighted values to the workspace
// (2 + Dv words); phase 2 a workgroup per (query, head) merges its chunks into the output.
// Phase 0 is the whole in one dispatch. Only chunk 0's workgroups write the caches.

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

// where the split's three words start: after the rope's pairs and the gate's strides
fn split_at() -> u32 {
    return 27u + select(0u, pu(22u), pu(20u) == 1u);
}

// dim dd of key row j's value for KV head kh: the new value where j is the new row
fn value(j: u32, kh: u32, dd: u32, fresh: u32) -> f32 {
    if (j == fresh) {
        return rnd1(ldvn(pu(18u) + kh * pu(5u) + dd));
    }
    return ld2(pu(12u) + (j * pu(4u) + kh) * pu(5u) + dd);
}

// phase 2: row g's chunks merged, a thread per output dim
fn merge(g: u32, lid: u32) {
    let hq = pu(1u);
    let dv = pu(5u);
    let chunks = pu(split_at());
    let ws = pu(split_at() + 2u) + g * chunks * (2u + dv);
    var mx = NEG;
    for (var c = 0u; c < chunks; c++) {
        mx = max(mx, bitcast<f32>(aw(ws + c * (2u + dv))));
    }
    for (var dd = lid; dd < dv; dd += 64u) {
        var l = 0.0;
        var sum = 0.0;
        if (mx > NEG) {
            for (var c = 0u; c < chunks; c++) {
                let at = ws + c * (2u + dv);
                let m = bitcast<f32>(aw(at));
                if (m > NEG) {
                    let f = exp(m - mx);
                    l += bitcast<f32>(aw(at + 1u)) * f;
                    sum += bitcast<f32>(aw(at + 2u + dd)) * f;
                }
            }
        }
        emit(g / hq, g % hq, dd, sum, l);
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gw = wid.y * nwg.x + wid.x;
    let phase = pu(split_at() + 1u);
    if (phase == 2u) {
        if (gw < pu(0u) * pu(1u)) {
            merge(gw, lid.x);
        }
        return;
    }
    // (phase 1: this workgroup's chunk of keys; phase 0: all of them)
    let chunks = select(1u, pu(split_at()), phase == 1u);
    let g = gw / chunks;
    let chunk = gw % chunks;
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
        if (ok && h % (hq / hkv) == 0u && chunk == 0u) {
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
    var first = 0u;
    var end = tk;
    if (phase == 1u) {
        let ch = pu(split_at() + 3u);
        first = ch * chunk;
        end = min(tk, first + ch);
    }
    for (var tile = first; tile < end; tile += 64u) {
        let j = tile + lid.x;
        var s = NEG;
        if (ok && j < end && j <= limit) {
            var dot = 0.0;
            if (j == fresh) {
                for (var e = 0u; e < d; e++) {
                    dot += qs[e] * rnd0(kns[e]);
                }
            } else {
                let krow = pu(11u) + (j * hkv + kh) * d;
                // eight loads in flight a step (the sum in the same order)
                var e = 0u;
                for (; e + 8u <= d; e += 8u) {
                    let k0 = ld1(krow + e);
                    let k1 = ld1(krow + e + 1u);
                    let k2 = ld1(krow + e + 2u);
                    let k3 = ld1(krow + e + 3u);
                    let k4 = ld1(krow + e + 4u);
                    let k5 = ld1(krow + e + 5u);
                    let k6 = ld1(krow + e + 6u);
                    let k7 = ld1(krow + e + 7u);
                    dot += qs[e] * k0;
                    dot += qs[e + 1u] * k1;
                    dot += qs[e + 2u] * k2;
                    dot += qs[e + 3u] * k3;
                    dot += qs[e + 4u] * k4;
                    dot += qs[e + 5u] * k5;
                    dot += qs[e + 6u] * k6;
                    dot += qs[e + 7u] * k7;
                }
                for (; e < d; e++) {
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
        // (keys past the chunk's end scored NEG: not walked)
        let n_in = min(64u, end - tile);
        var tm = NEG;
        for (var e = 0u; e < n_in; e++) {
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
            // four keys a step, their values' loads in flight together (each sum in key order)
            var e = 0u;
            for (; e + 4u <= n_in; e += 4u) {
                let s0 = sc[e];
                let s1 = sc[e + 1u];
                let s2 = sc[e + 2u];
                let s3 = sc[e + 3u];
                let p0 = select(0.0, exp(s0 - mn), s0 > NEG);
                let p1 = select(0.0, exp(s1 - mn), s1 > NEG);
                let p2 = select(0.0, exp(s2 - mn), s2 > NEG);
                let p3 = select(0.0, exp(s3 - mn), s3 > NEG);
                l += p0;
                l += p1;
                l += p2;
                l += p3;
                for (var r = 0u; r < 4u; r++) {
                    let dd = lid.x + 64u * r;
                    if (dd < dv) {
                        let v0 = value(tile + e, kh, dd, fresh);
                        let v1 = value(tile + e + 1u, kh, dd, fresh);
                        let v2 = value(tile + e + 2u, kh, dd, fresh);
                        let v3 = value(tile + e + 3u, kh, dd, fresh);
                        if (s0 > NEG) {
                            acc[r] += p0 * v0;
                        }
                        if (s1 > NEG) {
                            acc[r] += p1 * v1;
                        }
                        if (s2 > NEG) {
                            acc[r] += p2 * v2;
                        }
                        if (s3 > NEG) {
                            acc[r] += p3 * v3;
                        }
                    }
                }
            }
            for (; e < n_in; e++) {
                let se = sc[e];
                if (se > NEG) {
                    let p = exp(se - mn);
                    l += p;
                    for (var r = 0u; r < 4u; r++) {
                        let dd = lid.x + 64u * r;
                        if (dd < dv) {
                            acc[r] += p * value(tile + e, kh, dd, fresh);
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
    if (phase == 1u) {
        let ws = pu(split_at() + 2u) + (g * chunks + chunk) * (2u + dv);
        if (lid.x == 0u) {
            st(ws, m);
            st(ws + 1u, l);
        }
        for (var r = 0u; r < 4u; r++) {
            let dd = lid.x + 64u * r;
            if (dd < dv) {
                st(ws + 2u + dd, acc[r]);
            }
        }
        return;
    }
    for (var r = 0u; r < 4u; r++) {
        let dd = lid.x + 64u * r;
        if (dd < dv) {
            emit(t, h, dd, acc[r], l);
        }
    }
}
