// Gated delta rule. A workgroup of 128 threads takes 4 rows r of one (sequence, value head)'s
// state [Dv, Dk] (Dk ≤ 256), 32 lanes per row: lane l keeps elements l, l + 32, … of its row in
// registers (reading and writing the state a row-contiguous word per lane) and walks the
// tokens: row ← row·exp(g); row += β (v_r − row·k) k; y_r = row·q, each dot product summed over
// the row's lanes by `group_sum`. Both the recurrent and the chunked op forms run here (they
// compute the same function). Sources: 0 state [S,Hv,Dv,Dk], 1 q, 2 k [S,T,Hk,Dk],
// 3 v [S,T,Hv,Dv], 4 g, 5 beta [S,T,Hv].
// Params: 0 S, 1 T, 2 Hk, 3 Hv, 4 Dk, 5 Dv, 6 st_off, 7 q_off, 8 k_off, 9 v_off, 10 g_off,
// 11 b_off, 12 y_off, 13 new state off, 14 slots' offset (0 without), 15..18 v's strides (v
// may be a strided view). The dispatch has S·Hv·⌈Dv/4⌉ workgroups.
// q and k are read through `ldq`/`ldk`: the raw rows, or each head row normalised (by the
// factors `qk_factors` computes once per workgroup and token) and put through its program when
// the op carries them; g and beta through `ldg`/`ldb`: sources 4 and 5, or the gates' programs
// computed at each read (`Spec::gates`).
// With source 6, slots I32 [S], source 0 is the state cache
// [R, Hv·Dv·Dk]: sequence s reads and writes row slots[s] (the generator's `state_row` and
// `state_put`).

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    let t_ = pu(1u);
    let hk = pu(2u);
    let hv = pu(3u);
    let dk = pu(4u);
    let dv = pu(5u);
    let blocks = (dv + 3u) / 4u;
    let live = wg < pu(0u) * hv * blocks;
    let lane = lid.x % 32u;
    let r_ = (wg % blocks) * 4u + lid.x / 32u;
    let on = live && r_ < dv;
    let r = min(r_, dv - 1u);
    let sh = wg / blocks;
    let h = sh % hv;
    let s = min(sh / hv, pu(0u) - 1u);
    let kh = h / (hv / hk);
    let base = ((state_row(s) * hv + h) * dv + r) * dk;
    var row: array<f32, 8>;
    for (var m = 0u; m < 8u; m++) {
        let j = lane + 32u * m;
        row[m] = 0.0;
        if (on && j < dk) {
            row[m] = ld0(pu(6u) + base + j);
        }
    }
    for (var t = 0u; t < t_; t++) {
        let tok = s * t_ + t;
        let qk = (tok * hk + kh) * dk;
        let f = qk_factors(pu(7u) + qk, pu(8u) + qk, dk, lid.x);
        let decay = exp(ldg(pu(10u) + tok * hv + h));
        let beta = ldb(pu(11u) + tok * hv + h);
        var kr: array<f32, 8>;
        var qr: array<f32, 8>;
        var part = 0.0;
        for (var m = 0u; m < 8u; m++) {
            let j = lane + 32u * m;
            kr[m] = 0.0;
            qr[m] = 0.0;
            if (j < dk) {
                kr[m] = ldk(pu(8u) + qk + j, f.y);
                qr[m] = ldq(pu(7u) + qk + j, f.x);
            }
            row[m] *= decay;
            part += row[m] * kr[m];
        }
        let kv = group_sum(part, lid.x, 0u);
        let vat = s * pu(15u) + t * pu(16u) + h * pu(17u) + r * pu(18u);
        let delta = (ld3(pu(9u) + vat) - kv) * beta;
        part = 0.0;
        for (var m = 0u; m < 8u; m++) {
            row[m] += delta * kr[m];
            part += row[m] * qr[m];
        }
        let y = group_sum(part, lid.x, 1u);
        if (on && lane == 0u) {
            st(pu(12u) + (tok * hv + h) * dv + r, y);
        }
    }
    for (var m = 0u; m < 8u; m++) {
        let j = lane + 32u * m;
        if (on && j < dk) {
            state_put(base + j, row[m]);
        }
    }
}
