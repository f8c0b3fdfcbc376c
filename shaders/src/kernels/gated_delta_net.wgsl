// Gated delta rule, one thread per (sequence, value head, state row r); the thread keeps its
// row of the state [Dv, Dk] (Dk ≤ 256) and walks the tokens: row ← row·exp(g);
// row += β (v_r − row·k) k; y_r = row·q. Both the recurrent and the chunked op forms run
// here (they compute the same function). Sources: 0 state [S,Hv,Dv,Dk], 1 q, 2 k
// [S,T,Hk,Dk], 3 v [S,T,Hv,Dv], 4 g, 5 beta [S,T,Hv].
// Params: 0 S, 1 T, 2 Hk, 3 Hv, 4 Dk, 5 Dv, 6 st_off, 7 q_off, 8 k_off, 9 v_off, 10 g_off,
// 11 b_off, 12 y_off, 13 new state off.
// q and k are read through `ldq`/`ldk`: the raw rows, or each head row normalised (the
// generator's `q_factor`/`k_factor`) and put through its program when the op carries them.
// With source 6, slots I32 [S] (param 14 its offset), source 0 is the state cache
// [R, Hv·Dv·Dk]: sequence s reads and writes row slots[s] (the generator's `state_row` and
// `state_put`).

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    let t_ = pu(1u);
    let hk = pu(2u);
    let hv = pu(3u);
    let dk = pu(4u);
    let dv = pu(5u);
    if (i >= pu(0u) * hv * dv) {
        return;
    }
    let r = i % dv;
    let sh = i / dv;
    let h = sh % hv;
    let s = sh / hv;
    let kh = h / (hv / hk);
    let base = ((state_row(s) * hv + h) * dv + r) * dk;
    var row: array<f32, 256>;
    for (var j = 0u; j < dk; j++) {
        row[j] = ld0(pu(6u) + base + j);
    }
    for (var t = 0u; t < t_; t++) {
        let tok = s * t_ + t;
        let qk = (tok * hk + kh) * dk;
        let fq = q_factor(pu(7u) + qk, dk);
        let fk = k_factor(pu(8u) + qk, dk);
        let decay = exp(ld4(pu(10u) + tok * hv + h));
        let beta = ld5(pu(11u) + tok * hv + h);
        var kv = 0.0;
        for (var j = 0u; j < dk; j++) {
            row[j] *= decay;
            kv += row[j] * ldk(pu(8u) + qk + j, fk);
        }
        let delta = (ld3(pu(9u) + (tok * hv + h) * dv + r) - kv) * beta;
        var y = 0.0;
        for (var j = 0u; j < dk; j++) {
            row[j] += delta * ldk(pu(8u) + qk + j, fk);
            y += row[j] * ldq(pu(7u) + qk + j, fq);
        }
        st(pu(12u) + (tok * hv + h) * dv + r, y);
    }
    for (var j = 0u; j < dk; j++) {
        state_put(base + j, row[j]);
    }
}
