// Selective scan a token at a time for states over 128 (N ≤ 256; `ssm_scan_lanes` takes up to
// 128, the chunked scans long prompts). One workgroup of 64 threads per (sequence, head, p);
// each thread owns states n = lid, lid+64, …. Per token:
// state = state·exp(dt·A) + dt·B·x, y = Σ_n state·C (reduced across the workgroup).
// Sources: 0 state [S,H,P,N], 1 x [S,T,H,P], 2 dt [S,T,H], 3 A [H, N or 1], 4 B [S,T,G,N],
// 5 C [S,T,G,N]. Params: 0 S, 1 T, 2 H, 3 P, 4 N, 5 G, 6 A per state, 7 st_off, 8 x_off,
// 9 dt_off, 10 a_off, 11 b_off, 12 c_off, 13 y_off, 14 new state off, 15 slots' offset (0
// without), then x's, B's and C's 4 strides each (16.., 20.., 24..: they may be strided views).
// With source 6, slots I32 [S], source 0 is the state cache [R, H·P·N]:
// sequence s reads and writes row slots[s] (the generator's `state_row` and `state_put`).
// dt is read through `ldt(tok, h)`: source 2 as it is, or computed from its projection
// (`Spec::scan_dt`); B and C through `ldbn`/`ldcn` with the factors `bc_norms` gives a token's
// rows: the sources as they are, or each row normalised (`Spec::bc_norm`). All four scan
// kernels take a row's indices, a token's inputs and their offsets from the generator's
// `scan_row`, `scan_tok`, `state_base` and `scan_out`.

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let t_ = pu(1u);
    let h_ = pu(2u);
    let p_ = pu(3u);
    let n_ = pu(4u);
    let ok = g < pu(0u) * h_ * p_;
    let row = scan_row(g);
    let h = row.h;
    let s = row.s;
    let sbase = state_base(row);
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
            let k = scan_tok(tok, row);
            for (var r = 0u; r < 4u; r++) {
                let n = lid.x + 64u * r;
                if (n < n_) {
                    state[r] = state[r] * exp(k.dt * a[r]) + ldbn(k.b, n, k.f.x) * k.xd;
                    part += state[r] * ldcn(k.c, n, k.f.y);
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
            let at = scan_out(tok, row);
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
