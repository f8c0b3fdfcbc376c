// Selective scan for small states (N ≤ 32, Mamba1's 16), a token at a time: 16 lanes (L) per
// (sequence, head, p) row, lane l owning states l and l + 16, so a row's state loads and
// stores are contiguous across its lanes and a decode step spreads over 16 times the threads
// of a thread per row (which decoded mamba-130m at 882 tok/s on an H200, this 1,050). A token's y
// is the lanes' sum (`lane_sum`: subgroup shuffles where the adapter has them, else workgroup
// memory). With dt computed from its projection (`Spec::scan_dt`) the lanes split that dot
// product too (`dt_part` per lane, `dt_sum` on the sums; `DT_PARTS`). Per token:
// state = state·exp(dt·A) + dt·B·x, y = Σ_n state·C.
// Sources, parameters and the form with slots: as `ssm_scan`'s.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = (wid.y * nwg.x + wid.x) * (64u / L) + lid.x / L;
    let lane = lid.x % L;
    let t_ = pu(1u);
    let h_ = pu(2u);
    let p_ = pu(3u);
    let n_ = pu(4u);
    let rows = pu(0u) * h_ * p_;
    let ok = g < rows;
    // (a lane past the last row walks the last row's inputs, writing nothing: every lane
    // takes part in the sums)
    let row = scan_row(min(g, rows - 1u));
    let h = row.h;
    let s = row.s;
    let sbase = state_base(row);
    let n1 = lane + L;
    var st0 = 0.0;
    var st1 = 0.0;
    var a0 = 0.0;
    var a1 = 0.0;
    if (lane < n_) {
        st0 = ld0(pu(7u) + sbase + lane);
        a0 = ld3(pu(10u) + select(h, h * n_ + lane, pu(6u) == 1u));
    }
    if (n1 < n_) {
        st1 = ld0(pu(7u) + sbase + n1);
        a1 = ld3(pu(10u) + select(h, h * n_ + n1, pu(6u) == 1u));
    }
    for (var t = 0u; t < t_; t++) {
        let tok = s * t_ + t;
        var sums = vec2<f32>(0.0);
        if (DT_PARTS) {
            let d = dt_part(tok, h, lane, L);
            sums = vec2<f32>(lane_sum(d.x, lid.x), lane_sum(d.y, lid.x));
        }
        let k = scan_tok_dt(tok, row, dt_sum(tok, h, sums));
        var part = 0.0;
        if (lane < n_) {
            st0 = st0 * exp(k.dt * a0) + ldbn(k.b, lane, k.f.x) * k.xd;
            part = st0 * ldcn(k.c, lane, k.f.y);
        }
        if (n1 < n_) {
            st1 = st1 * exp(k.dt * a1) + ldbn(k.b, n1, k.f.x) * k.xd;
            part += st1 * ldcn(k.c, n1, k.f.y);
        }
        let y = lane_sum(part, lid.x);
        if (ok && lane == 0u) {
            let at = scan_out(tok, row);
            st(pu(13u) + at, epi(at, y));
        }
    }
    if (ok && lane < n_) {
        state_put(sbase + lane, st0);
    }
    if (ok && n1 < n_) {
        state_put(sbase + n1, st1);
    }
}
