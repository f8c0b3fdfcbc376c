// out[b, m, n] = Σ_k x[b, m, k] · w[wb, n, k]; one workgroup per output element, 64 threads
// splitting k. Source 0: x (dense F32); source 1: w (any dtype, dense).
// Params: 0 M, 1 N, 2 K, 3 x_off, 4 w_off, 5 out_off, 6 xb1 (inner batch dim of x),
// 7 wb0, 8 wb1 (w's batch dims, 1 = broadcast), 9 total outputs, 10 output row stride (N of the
// whole product), 11 first output column: a weight larger than one storage binding runs as
// several dispatches, each over a range of its rows (N = that range's rows). Used for decode
// (M = 1); `matmul_rows` takes prompts.

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let m_ = pu(0u);
    let n_ = pu(1u);
    let k_ = pu(2u);
    let n = g % n_;
    let m = (g / n_) % m_;
    let b = g / (n_ * m_);
    let b0 = b / pu(6u);
    let b1 = b % pu(6u);
    let wb = select(b0, 0u, pu(7u) == 1u) * pu(8u) + select(b1, 0u, pu(8u) == 1u);
    let xrow = pu(3u) + (b * m_ + m) * k_;
    let wrow = pu(4u) + (wb * n_ + n) * k_;
    var acc = 0.0;
    if (g < pu(9u)) {
        for (var k = lid.x; k < k_; k += 64u) {
            acc += ld0(xrow + k) * ld1(wrow + k);
        }
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && g < pu(9u)) {
        st(pu(5u) + (b * m_ + m) * pu(10u) + pu(11u) + n, red[0]);
    }
}
