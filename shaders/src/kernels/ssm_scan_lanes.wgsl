// Selective scan a token at a time (decode, and prompts too short for the chunked scans) for
// states up to 128 (Mamba1's 16, Mamba2's 64–128): 16 lanes (L) per (sequence, head, p) row,
// lane l owning states l, l + 16, … (SR of them: 2 in `ssm_scan_lanes`, for states up to 32,
// and 8 in `ssm_scan_lanes_wide`), so a row's state loads and stores are contiguous across its
// lanes and a decode step spreads over 16 times the threads of a thread per row (which decoded
// mamba-130m at 882 tok/s on an H200, this 1,050). A token's y is the lanes' sum (`lane_sum`:
// subgroup shuffles where the adapter has them, else workgroup memory), where Mamba2's states
// took a 64-thread workgroup per row and a tree of barriers per token (`ssm_scan`, still the
// form past 128). Where A is per head (Mamba2's) a token's decay is one exp, not one per state.
// With dt computed from its projection (`Spec::scan_dt`) the lanes split that dot product too
// (`dt_part` per lane, `dt_sum` on the sums; `DT_PARTS`). Per token: state = state·exp(dt·A) +
// dt·B·x, y = Σ_n state·C.
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
    var sv: array<f32, SR>;
    var a: array<f32, SR>;
    for (var r = 0u; r < SR; r++) {
        let n = lane + L * r;
        if (n < n_) {
            sv[r] = ld0(pu(7u) + sbase + n);
            a[r] = ld3(pu(10u) + select(h, h * n_ + n, pu(6u) == 1u));
        }
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
        // (one exp where A is per head)
        let per_state = pu(6u) == 1u;
        var e = 0.0;
        if (!per_state) {
            e = exp(k.dt * a[0]);
        }
        for (var r = 0u; r < SR; r++) {
            let n = lane + L * r;
            if (n < n_) {
                var d = e;
                if (per_state) {
                    d = exp(k.dt * a[r]);
                }
                sv[r] = sv[r] * d + ldbn(k.b, n, k.f.x) * k.xd;
                part += sv[r] * ldcn(k.c, n, k.f.y);
            }
        }
        let y = lane_sum(part, lid.x);
        if (ok && lane == 0u) {
            let at = scan_out(tok, row);
            st(pu(13u) + at, epi(at, y));
        }
    }
    for (var r = 0u; r < SR; r++) {
        let n = lane + L * r;
        if (ok && n < n_) {
            state_put(sbase + n, sv[r]);
        }
    }
}
