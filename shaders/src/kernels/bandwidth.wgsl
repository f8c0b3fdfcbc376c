// The memory bandwidth probe behind `weft bench --bandwidth` on a GPU: a plain copy of 16-byte
// words, one per thread, as a mat-vec reads its weights (a buffer-to-buffer copy goes through
// the copy engines on some GPUs, well below what shaders reach). Dispatched over (x, y)
// workgroups of 256 threads when the words outnumber one dimension's limit.

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i < arrayLength(&src)) {
        dst[i] = src[i];
    }
}
