// Selective scan of a long prompt for wide states (32 < N ≤ 128, Mamba2's): one workgroup of
// 256 threads per (sequence, head, p) splits the tokens into 16 chunks scanned side by side,
// 16 lanes per chunk, lane l holding states n = l, l + 16, … (at most 8) in registers. Each
// chunk is scanned twice, as in `ssm_scan_chunks`:
// 1. from a zero state, keeping the chunk's end state and Σ dt (the chunk decays a state by
//    exp(A·Σ dt)), with no reduction;
// 2. from the state before the chunk (the row's initial state carried through the earlier
//    chunks' ends and decays), each lane keeping its part of y = Σ_n state·C for a batch of 8
//    tokens; then the workgroup sums the batch's 16 × 8 (chunk, token) rows of 16 parts
//    at once, a thread per row, and writes y: two barriers per 8 tokens, not a tree per token.
// Per token: state = state·exp(dt·A) + dt·B·x, with one exp per token where A is per head
// (Mamba2's) rather than per state.
// Sources, parameters and the form with slots: as `ssm_scan`'s.

const LANES: u32 = 16u;
const CHUNKS: u32 = 16u;

const BATCH: u32 = 8u;
// a (chunk, token) row of 16 parts padded by one, a chunk's 8 rows padded to 136, so that a
// warp's 32 sums (4 chunks × 8 tokens) read 32 different banks
const RW: u32 = 17u;
const CW: u32 = 136u;

// per chunk: its end state from zero (128 floats) and its Σ dt; once pass 2 has carried the
// ends into its state, `ends` holds a batch's parts of y
var<workgroup> ends: array<f32, 2176>;
var<workgroup> spans: array<f32, 16>;

// state·exp(dt·A) for the lane's states: exp(dt·A) once where A is per head
fn decay(state: ptr<function, array<f32, 8>>, a: ptr<function, array<f32, 8>>, dt: f32) {
    if (pu(6u) == 1u) {
        for (var r = 0u; r < 8u; r++) {
            (*state)[r] *= exp(dt * (*a)[r]);
        }
    } else {
        let e = exp(dt * (*a)[0]);
        for (var r = 0u; r < 8u; r++) {
            (*state)[r] *= e;
        }
    }
}

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
            decay(&state, &a, k.dt);
            for (var r = 0u; r < 8u; r++) {
                let n = lane + LANES * r;
                if (n < n_) {
                    state[r] += ldbn(k.b, n, k.f.x) * k.xd;
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
            decay(&state, &a, spans[k]);
            for (var r = 0u; r < 8u; r++) {
                let n = lane + LANES * r;
                if (n < n_) {
                    state[r] += ends[k * 128u + n];
                }
            }
        }
    }
    // every thread has read the initial state before the last chunk writes the new one over
    // it (in place, the two are one cache row)
    workgroupBarrier();
    for (var i0 = 0u; i0 < len; i0 += BATCH) {
        for (var j = 0u; j < BATCH; j++) {
            let t = t0 + i0 + j;
            var part = 0.0;
            if (ok && t < t1) {
                let k = scan_tok(s * t_ + t, row);
                decay(&state, &a, k.dt);
                for (var r = 0u; r < 8u; r++) {
                    let n = lane + LANES * r;
                    if (n < n_) {
                        state[r] += ldbn(k.b, n, k.f.x) * k.xd;
                        part += state[r] * ldcn(k.c, n, k.f.y);
                    }
                }
            }
            ends[c * CW + j * RW + lane] = part;
        }
        workgroupBarrier();
        // a thread per (chunk, token) of the batch sums its 16 parts
        if (ok && lid.x < CHUNKS * BATCH) {
            let cc = lid.x / BATCH;
            let j = lid.x % BATCH;
            let c0 = min(cc * len, t_);
            let t = c0 + i0 + j;
            if (t < min(c0 + len, t_)) {
                var y = 0.0;
                for (var l = 0u; l < LANES; l++) {
                    y += ends[cc * CW + j * RW + l];
                }
                let o = scan_out(s * t_ + t, row);
                st(pu(13u) + o, epi(o, y));
            }
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
