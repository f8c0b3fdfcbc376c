// Mixture-of-experts product for prompts, tiled as `matmul_rows`: out[t, u, n] = x[t, u or 0]
// · w[ids[t, u], n]. A workgroup of 256 threads per (expert e, 64 weight rows) takes the
// (token, slot) rows that chose e, as `moe_rows` listed them in the workspace, 64 at a time:
// their x rows gathered and the expert's 64 weight rows staged once per step of 16 for all of
// them (where the one-row form reads an expert's rows again for every row that chose it), each
// thread accumulating a 4 × 4 block. With PAIR (`matmul_id_pair`'s fused form) a second weight
// of the same shape (source 3) is multiplied alongside and the two results meet in `tile_out`
// (the pair's epilogue); results go through `tile_out` either way.
// Sources and params: as `matmul_id`'s (PAIR: `matmul_id_pair`'s; 10 wb_off), then 11 the
// workspace's offset. The dispatch has E × ⌈N / 64⌉ workgroups.

const TK: u32 = 16u;
const XS: u32 = 17u;
var<workgroup> xs: array<vec4<f32>, 272>;
var<workgroup> ws: array<vec4<f32>, 272>;
var<workgroup> wbs: array<vec4<f32>, 272>;
// this tile's rows (t·U + u), and how many rows chose the expert
var<workgroup> rows_: array<u32, 64>;
var<workgroup> count_: u32;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n_ = pu(1u);
    let k_ = pu(2u);
    let tiles = (n_ + 63u) / 64u;
    let gw = wid.y * nwg.x + wid.x;
    let e = gw / tiles;
    if (e >= pu(8u)) {
        return;
    }
    let n0 = (gw % tiles) * 64u;
    let cols = min(64u, n_ - n0);
    let total = pu(9u) / n_;
    let list = pu(11u) + e * total;
    if (lid.x == 0u) {
        count_ = aw(pu(11u) + pu(8u) * total + e);
    }
    let count = workgroupUniformLoad(&count_);
    let wa = pu(4u) + (e * n_ + n0) * k_;
    let wb = pu(10u) + (e * n_ + n0) * k_;
    let tx = lid.x % 16u;
    let ty = lid.x / 16u;
    let kk = lid.x % TK;
    let q = lid.x / TK;
    for (var r0 = 0u; r0 < count; r0 += 64u) {
        let rows = min(64u, count - r0);
        if (lid.x < 64u) {
            rows_[lid.x] = select(0u, aw(list + r0 + lid.x), lid.x < rows);
        }
        workgroupBarrier();
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        var a2 = vec4<f32>(0.0);
        var a3 = vec4<f32>(0.0);
        var b0 = vec4<f32>(0.0);
        var b1 = vec4<f32>(0.0);
        var b2 = vec4<f32>(0.0);
        var b3 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < k_; k0 += TK) {
            let k = k0 + kk;
            var xv = vec4<f32>(0.0);
            var wv = vec4<f32>(0.0);
            var bv = vec4<f32>(0.0);
            for (var i = 0u; i < 4u; i++) {
                let r = 4u * q + i;
                if (k < k_ && r < rows) {
                    let tu = rows_[r];
                    let t = tu / pu(0u);
                    let u = tu % pu(0u);
                    xv[i] = ld0(pu(3u) + (t * pu(7u) + select(u, 0u, pu(7u) == 1u)) * k_ + k);
                }
                if (k < k_ && r < cols) {
                    wv[i] = ld1(wa + r * k_ + k);
                    if (PAIR) {
                        bv[i] = ldb(wb + r * k_ + k);
                    }
                }
            }
            xs[kk * XS + q] = xv;
            ws[kk * XS + q] = wv;
            wbs[kk * XS + q] = bv;
            workgroupBarrier();
            for (var s = 0u; s < TK; s++) {
                let x = xs[s * XS + ty];
                let w = ws[s * XS + tx];
                a0 += x.x * w;
                a1 += x.y * w;
                a2 += x.z * w;
                a3 += x.w * w;
                if (PAIR) {
                    let v = wbs[s * XS + tx];
                    b0 += x.x * v;
                    b1 += x.y * v;
                    b2 += x.z * v;
                    b3 += x.w * v;
                }
            }
            workgroupBarrier();
        }
        let acc = array<vec4<f32>, 4>(a0, a1, a2, a3);
        let accb = array<vec4<f32>, 4>(b0, b1, b2, b3);
        for (var i = 0u; i < 4u; i++) {
            let m = 4u * ty + i;
            if (m < rows) {
                for (var j = 0u; j < 4u; j++) {
                    let n = 4u * tx + j;
                    if (n < cols) {
                        let g = rows_[m] * n_ + n0 + n;
                        st(pu(6u) + g, tile_out(g, acc[i][j], accb[i][j]));
                    }
                }
            }
        }
        // (before the next tile's rows replace these)
        workgroupBarrier();
    }
}
