// Gated delta rule of a long prompt, pass 2 of 2: the state carried through the chunks that
// `gated_delta_prep` wrote to the workspace (see there for its layout). A workgroup of 128
// threads takes 4 rows of one (sequence, value head)'s state [Dv, Dk] (Dk ≤ 256), kept in
// workgroup memory, a thread per (row, token of the chunk). Per chunk, from the state S:
//   v'_i = U_i − W_i·S_r           (the chunk's corrected values, all tokens at once)
//   y_i  = (q_i e^{G_i})·S_r + Σ_{j≤i} P[i][j] v'_j
//   S_r  ← S_r e^{G_last} + Σ_j v'_j k_j e^{G_last − G_j}
// so a prompt takes one step per chunk, not per token. Sources, params and the form with
// slots: as `gated_delta_prep`'s. The dispatch has S·Hv·⌈Dv/4⌉ workgroups.

var<workgroup> s_: array<f32, 1024>;
var<workgroup> vp_: array<f32, 4u * C>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    let t_ = pu(1u);
    let hv = pu(3u);
    let dk = pu(4u);
    let dv = pu(5u);
    let nc = pu(20u);
    let blocks = (dv + 3u) / 4u;
    let live = wg < pu(0u) * hv * blocks;
    let sh = min(wg / blocks, pu(0u) * hv - 1u);
    let h = sh % hv;
    let s = sh / hv;
    let r0 = (wg % blocks) * 4u;
    let i = lid.x % C;
    let rr = lid.x / C;
    let r = r0 + rr;
    let on = live && r < dv;
    let base = (state_row(s) * hv + h) * dv * dk;
    for (var e = lid.x; e < 4u * dk; e += 128u) {
        let re = r0 + e / dk;
        var x = 0.0;
        if (live && re < dv) {
            x = ld0(pu(6u) + base + re * dk + e % dk);
        }
        s_[e] = x;
    }
    workgroupBarrier();
    for (var n = 0u; n < nc; n++) {
        let ws = pu(19u) + (sh * nc + n) * pu(21u);
        let w_at = ws + C * dv;
        let q_at = w_at + C * dk;
        let k_at = q_at + C * dk;
        let p_at = k_at + C * dk;
        let t0 = n * C;
        let c = min(C, t_ - t0);
        var a = ldws(ws + min(r, dv - 1u) * C + i);
        var qs = 0.0;
        for (var d = 0u; d < dk; d++) {
            let x = s_[rr * dk + d];
            a -= ldws(w_at + d * C + i) * x;
            qs += ldws(q_at + d * C + i) * x;
        }
        vp_[i * 4u + rr] = a;
        workgroupBarrier();
        var y = qs;
        for (var j = 0u; j <= i; j++) {
            y += ldws(p_at + j * C + i) * vp_[j * 4u + rr];
        }
        if (on && i < c) {
            st(pu(12u) + ((s * t_ + t0 + i) * hv + h) * dv + r, y);
        }
        let decay = ldws(p_at + C * C);
        for (var e = lid.x; e < 4u * dk; e += 128u) {
            let re = e / dk;
            var x = s_[e] * decay;
            for (var j = 0u; j < c; j++) {
                x += vp_[j * 4u + re] * ldws(k_at + j * dk + e % dk);
            }
            s_[e] = x;
        }
        workgroupBarrier();
    }
    for (var e = lid.x; e < 4u * dk; e += 128u) {
        let re = r0 + e / dk;
        if (live && re < dv) {
            state_put(base + re * dk + e % dk, s_[e]);
        }
    }
}
