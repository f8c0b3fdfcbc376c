// Selective scan of a long prompt for wide states (32 < N ≤ 128, Mamba2's): one workgroup of
// 256 threads per (sequence, head, p) splits the tokens into 16 chunks scanned side by side,
// 16 lanes per chunk, lane l holding states n = l, l + 16, … (at most 8) in registers. Each
// chunk is scanned twice, as in `ssm_scan_chunks`:
// 1. from a zero state, keeping the chunk's end state and Σ dt (the chunk decays a state by
//    exp(A·Σ dt)), with no reduction;
// 2. from the state before the chunk (the row's initial state carried through the earlier
//    chunks' ends and decays), summing y = Σ_n state·C over the chunk's 16 lanes per token.
// Per token: state = state·exp(dt·A) + dt·B·x.
// Sources, parameters and the form with slots: as `ssm_scan`'s.

const LANES: u32 = 16u;
const CHUNKS: u32 = 16u;

// per chunk: its end state from zero (128 floats) and its Σ dt
var<workgroup> ends: array<f32, 2048>;
var<workgroup> spans: array<f32, 16>;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let lane = lid.x % LANES;
    let c = lid.x / LANES;
    let t_ = pu(1u);
    let h_ = pu(2u);
    let p_ = pu(3u);
    let n_ = pu(4u);
    let ok = g < pu(0u) * h_ * p_;
    let row = scan_row(g);
    let h = row.h;
    let s = row.s;
    let len = (t_ + CHUNKS - 1u) / CHUNKS;
    let t0 = min(c * len, t_);
    let t1 = min(t0 + len, t_);
    var state: array<f32, 8>;
    var a: array<f32, 8>;
    var span = 0.0;
    if (ok) {
        for (var r = 0u; r < 8u; r++) {
            let n = lane + LANES * r;
            if (n < n_) {
                a[r] = ld3(pu(10u) + select(h, h * n_ + n, pu(6u) == 1u));
            }
        }
        for (var t = t0; t < t1; t++) {
            let tok = s * t_ + t;
            let k = scan_tok(tok, row);
            for (var r = 0u; r < 8u; r++) {
                let n = lane + LANES * r;
                if (n < n_) {
                    state[r] = state[r] * exp(k.dt * a[r]) + ldbn(k.b, n, k.f.x) * k.xd;
                }
            }
            span += k.dt;
        }
    }
    for (var r = 0u; r < 8u; r++) {
        ends[c * 128u + lane + LANES * r] = state[r];
    }
    if (lane == 0u) {
        spans[c] = span;
    }
    workgroupBarrier();
    let sbase = state_base(row);
    if (ok) {
        for (var r = 0u; r < 8u; r++) {
            let n = lane + LANES * r;
            if (n < n_) {
                state[r] = ld0(pu(7u) + sbase + n);
            }
        }
        for (var k = 0u; k < c; k++) {
            for (var r = 0u; r < 8u; r++) {
                let n = lane + LANES * r;
                if (n < n_) {
                    state[r] = state[r] * exp(spans[k] * a[r]) + ends[k * 128u + n];
                }
            }
        }
    }
    // every thread has read the initial state before the last chunk writes the new one over
    // it (in place, the two are one cache row)
    workgroupBarrier();
    for (var i = 0u; i < len; i++) {
        let t = t0 + i;
        let live = ok && t < t1;
        let tok = s * t_ + t;
        var part = 0.0;
        if (live) {
            let k = scan_tok(tok, row);
            for (var r = 0u; r < 8u; r++) {
                let n = lane + LANES * r;
                if (n < n_) {
                    state[r] = state[r] * exp(k.dt * a[r]) + ldbn(k.b, n, k.f.x) * k.xd;
                    part += state[r] * ldcn(k.c, n, k.f.y);
                }
            }
        }
        red[lid.x] = part;
        workgroupBarrier();
        for (var w = LANES / 2u; w > 0u; w >>= 1u) {
            if (lane < w) {
                red[lid.x] += red[lid.x + w];
            }
            workgroupBarrier();
        }
        if (live && lane == 0u) {
            let o = scan_out(tok, row);
            st(pu(13u) + o, epi(o, red[lid.x]));
        }
        workgroupBarrier();
    }
    if (ok && c == CHUNKS - 1u) {
        for (var r = 0u; r < 8u; r++) {
            let n = lane + LANES * r;
            if (n < n_) {
                state_put(sbase + n, state[r]);
            }
        }
    }
}
