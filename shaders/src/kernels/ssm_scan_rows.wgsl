// Selective scan for small states (N ≤ 32, Mamba1's 16 per channel): one thread per
// (sequence, head, p) keeps its N states in registers and walks the tokens with no barriers
// (`ssm_scan` spreads larger states over a workgroup). Per token:
// state = state·exp(dt·A) + dt·B·x, y = Σ_n state·C.
// Sources, parameters and the form with slots: as `ssm_scan`'s.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    let t_ = pu(1u);
    let h_ = pu(2u);
    let p_ = pu(3u);
    let n_ = pu(4u);
    let g_ = pu(5u);
    if (i >= pu(0u) * h_ * p_) {
        return;
    }
    let p = i % p_;
    let sh = i / p_;
    let h = sh % h_;
    let s = sh / h_;
    let grp = h / (h_ / g_);
    let sbase = ((state_row(s) * h_ + h) * p_ + p) * n_;
    var state: array<f32, 32>;
    var a: array<f32, 32>;
    for (var n = 0u; n < n_; n++) {
        state[n] = ld0(pu(7u) + sbase + n);
        a[n] = ld3(pu(10u) + select(h, h * n_ + n, pu(6u) == 1u));
    }
    for (var t = 0u; t < t_; t++) {
        let tok = s * t_ + t;
        let dt = ldt(tok, h);
        let xd = ld1(pu(8u) + (tok * h_ + h) * p_ + p) * dt;
        let bc = (tok * g_ + grp) * n_;
        let f = bc_norms(bc);
        var y = 0.0;
        for (var n = 0u; n < n_; n++) {
            state[n] = state[n] * exp(dt * a[n]) + ldbn(bc + n, f.x) * xd;
            y += state[n] * ldcn(bc + n, f.y);
        }
        let at = (tok * h_ + h) * p_ + p;
        st(pu(13u) + at, epi(at, y));
    }
    for (var n = 0u; n < n_; n++) {
        state_put(sbase + n, state[n]);
    }
}
