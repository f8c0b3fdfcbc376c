// The rows of a mixture's product that chose each expert, for `matmul_id_rows`: a workgroup
// per expert e lists the (token, slot) rows i = t·U + u whose id (clamped into [0, E), as
// `matmul_id` reads it) is e, in the workspace, in no particular order, and after all E lists
// their counts. Sources and params: as `matmul_id`'s (its own or its pair's), then 11 the
// workspace's offset (E lists of T·U words, then E counts).

var<workgroup> cnt_: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = wid.y * nwg.x + wid.x;
    if (e >= pu(8u)) {
        return;
    }
    let rows = pu(9u) / pu(1u);
    if (lid.x == 0u) {
        atomicStore(&cnt_, 0u);
    }
    workgroupBarrier();
    for (var i = lid.x; i < rows; i += 256u) {
        let id = u32(clamp(ldi2(pu(5u) + i), 0, i32(pu(8u)) - 1));
        if (id == e) {
            let slot = atomicAdd(&cnt_, 1u);
            sti(pu(11u) + e * rows + slot, i32(i));
        }
    }
    workgroupBarrier();
    if (lid.x == 0u) {
        sti(pu(11u) + pu(8u) * rows + e, i32(atomicLoad(&cnt_)));
    }
}
