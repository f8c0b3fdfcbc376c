// Selective scan of a long prompt for small states (N ≤ 16, Mamba1's): the tokens of each row
// split into 16 chunks scanned side by side, so no thread walks the whole prompt. A workgroup of
// 128 threads takes 8 rows (sequence, head, p), a thread per (chunk, row) holding the row's N
// states in registers. Each thread scans its chunk twice:
// 1. from a zero state, keeping the chunk's end state and Σ dt (the chunk decays a state by
//    exp(A·Σ dt));
// 2. from the state before the chunk (the row's initial state carried through the earlier
//    chunks' ends and decays), writing y.
// Per token: state = state·exp(dt·A) + dt·B·x, y = Σ_n state·C.
// Sources, parameters and the form with slots: as `ssm_scan`'s.

const ROWS: u32 = 8u;
const CHUNKS: u32 = 16u;

// per (chunk, row): its end state from zero (16 floats) and its Σ dt
var<workgroup> ends: array<f32, 2048>;
var<workgroup> spans: array<f32, 128>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = lid.x % ROWS;
    let c = lid.x / ROWS;
    let i = (wid.y * nwg.x + wid.x) * ROWS + j;
    let t_ = pu(1u);
    let h_ = pu(2u);
    let p_ = pu(3u);
    let n_ = pu(4u);
    let ok = i < pu(0u) * h_ * p_;
    let row = scan_row(i);
    let h = row.h;
    let s = row.s;
    let len = (t_ + CHUNKS - 1u) / CHUNKS;
    let t0 = min(c * len, t_);
    let t1 = min(t0 + len, t_);
    var state: array<f32, 16>;
    var a: array<f32, 16>;
    var span = 0.0;
    if (ok) {
        for (var n = 0u; n < n_; n++) {
            a[n] = ld3(pu(10u) + select(h, h * n_ + n, pu(6u) == 1u));
        }
        for (var t = t0; t < t1; t++) {
            let tok = s * t_ + t;
            let k = scan_tok(tok, row);
            for (var n = 0u; n < n_; n++) {
                state[n] = state[n] * exp(k.dt * a[n]) + ldbn(k.b, n, k.f.x) * k.xd;
            }
            span += k.dt;
        }
    }
    let at = (c * ROWS + j) * 16u;
    for (var n = 0u; n < 16u; n++) {
        ends[at + n] = state[n];
    }
    spans[c * ROWS + j] = span;
    workgroupBarrier();
    let sbase = state_base(row);
    if (ok) {
        for (var n = 0u; n < n_; n++) {
            state[n] = ld0(pu(7u) + sbase + n);
        }
        for (var k = 0u; k < c; k++) {
            let sp = spans[k * ROWS + j];
            let e = (k * ROWS + j) * 16u;
            for (var n = 0u; n < n_; n++) {
                state[n] = state[n] * exp(sp * a[n]) + ends[e + n];
            }
        }
    }
    // every thread has read the initial state before the last chunk writes the new one over
    // it (in place, the two are one cache row)
    workgroupBarrier();
    if (ok) {
        for (var t = t0; t < t1; t++) {
            let tok = s * t_ + t;
            let k = scan_tok(tok, row);
            var y = 0.0;
            for (var n = 0u; n < n_; n++) {
                state[n] = state[n] * exp(k.dt * a[n]) + ldbn(k.b, n, k.f.x) * k.xd;
                y += state[n] * ldcn(k.c, n, k.f.y);
            }
            let o = scan_out(tok, row);
            st(pu(13u) + o, epi(o, y));
        }
        if (c == CHUNKS - 1u) {
            for (var n = 0u; n < n_; n++) {
                state_put(sbase + n, state[n]);
            }
        }
    }
}
