// softmax(q·kᵀ·scale + mask)·v with grouped KV heads, one workgroup of 64 threads per
// (query, head), keys in tiles of 64 with a running max (flash style). Each thread owns output
// dims lid, lid+64, lid+128, lid+192 (Dv ≤ 256). Sources: 0 q, 1 k, 2 v, then `ldmask` and
// `ldgate` when present.
// Params: 0 T, 1 Hq, 2 D, 3 Tk, 4 Hkv, 5 Dv, 6 scale (f32 bits), 7 causal, 8 masked,
// 9 gated, 10 q_off, 11 k_off, 12 v_off, 13 mask_off, 14 gate_off, 15 out_off.

var<workgroup> sc: array<f32, 64>;

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
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var tile = 0u; tile < tk; tile += 64u) {
        let j = tile + lid.x;
        var s = NEG;
        if (ok && j < tk && j <= limit) {
            let krow = pu(11u) + (j * hkv + kh) * d;
            var dot = 0.0;
            for (var e = 0u; e < d; e++) {
                dot += ld0(qrow + e) * ld1(krow + e);
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
                    let vrow = pu(12u) + ((tile + e) * hkv + kh) * dv;
                    for (var r = 0u; r < 4u; r++) {
                        let dd = lid.x + 64u * r;
                        if (dd < dv) {
                            acc[r] += p * ld2(vrow + dd);
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
                o = o / (1.0 + exp(-ldgate(pu(14u) + oi)));
            }
            st(pu(15u) + oi, o);
        }
    }
}
