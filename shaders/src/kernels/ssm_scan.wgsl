// Selective scan (Mamba1 and Mamba2). One workgroup of 64 threads per (sequence, head, p);
// each thread owns states n = lid, lid+64, … (N ≤ 256). Per token:
// state = state·exp(dt·A) + dt·B·x, y = Σ_n state·C (reduced across the workgroup).
// Sources: 0 state [S,H,P,N], 1 x [S,T,H,P], 2 dt [S,T,H], 3 A [H, N or 1], 4 B [S,T,G,N],
// 5 C [S,T,G,N]. Params: 0 S, 1 T, 2 H, 3 P, 4 N, 5 G, 6 A per state, 7 st_off, 8 x_off,
// 9 dt_off, 10 a_off, 11 b_off, 12 c_off, 13 y_off, 14 new state off.
// With source 6, slots I32 [S] (param 15 its offset), source 0 is the state cache [R, H·P·N]:
// sequence s reads and writes row slots[s] (the generator's `state_row` and `state_put`).
// dt is read through `ldt(tok, h)`: source 2 as it is, or computed from its projection
// (`Spec::scan_dt`); B and C through `ldbn`/`ldcn` with the factors `bc_norms` gives a token's
// rows: the sources as they are, or each row normalised (`Spec::bc_norm`).

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let t_ = pu(1u);
    let h_ = pu(2u);
    let p_ = pu(3u);
    let n_ = pu(4u);
    let g_ = pu(5u);
    let ok = g < pu(0u) * h_ * p_;
    let p = g % p_;
    let sh = g / p_;
    let h = sh % h_;
    let s = sh / h_;
    let grp = h / (h_ / g_);
    let sbase = ((state_row(s) * h_ + h) * p_ + p) * n_;
    var state = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var a = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var r = 0u; r < 4u; r++) {
        let n = lid.x + 64u * r;
        if (ok && n < n_) {
            state[r] = ld0(pu(7u) + sbase + n);
            a[r] = ld3(pu(10u) + select(h, h * n_ + n, pu(6u) == 1u));
        }
    }
    for (var t = 0u; t < t_; t++) {
        let tok = s * t_ + t;
        var part = 0.0;
        if (ok) {
            let dt = ldt(tok, h);
            let xd = ld1(pu(8u) + (tok * h_ + h) * p_ + p) * dt;
            let bc = (tok * g_ + grp) * n_;
            let f = bc_norms(bc);
            for (var r = 0u; r < 4u; r++) {
                let n = lid.x + 64u * r;
                if (n < n_) {
                    state[r] = state[r] * exp(dt * a[r]) + ldbn(bc + n, f.x) * xd;
                    part += state[r] * ldcn(bc + n, f.y);
                }
            }
        }
        red[lid.x] = part;
        workgroupBarrier();
        for (var w = 32u; w > 0u; w >>= 1u) {
            if (lid.x < w) {
                red[lid.x] += red[lid.x + w];
            }
            workgroupBarrier();
        }
        if (ok && lid.x == 0u) {
            let at = (tok * h_ + h) * p_ + p;
            st(pu(13u) + at, epi(at, red[0]));
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let n = lid.x + 64u * r;
        if (ok && n < n_) {
            state_put(sbase + n, state[r]);
        }
    }
}
