//! Errors of the wgpu backend: no matching adapter, buffers larger than the device allows,
//! shader compilation failures naming the kernel. Skipped without an adapter, except under CI.

#![allow(clippy::unwrap_used)]

use weft_backends::{Backend, BackendError, WgpuBackend, WgpuOptions};
use weft_graph::{DType, GraphBuilder, PlanOptions, plan};

fn backend() -> Option<WgpuBackend> {
    match WgpuBackend::new(&WgpuOptions::default()) {
        Ok(b) => Some(b),
        Err(e) if weft_backends::env_flag("CI") => {
            panic!("CI requires a GPU adapter for the wgpu tests: {e}")
        }
        Err(e) => {
            eprintln!("skipping wgpu test: {e}");
            None
        }
    }
}

#[test]
fn wgpu_unknown_adapter_names_the_available_ones() {
    let Some(be) = backend() else { return };
    let e = WgpuBackend::new(&WgpuOptions {
        adapter: Some("no-such-gpu-xyz".into()),
        ..Default::default()
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BackendError::NoAdapter(_)), "{msg}");
    assert!(
        msg.contains("no-such-gpu-xyz") && msg.contains(&be.adapter_info().name),
        "{msg}"
    );
    // and by index
    assert!(
        WgpuBackend::new(&WgpuOptions {
            adapter: Some("0".into()),
            ..Default::default()
        })
        .is_ok()
    );
}

#[test]
fn wgpu_buffers_beyond_the_device_limits_are_errors() {
    let Some(mut be) = backend() else { return };
    let e = be.alloc(usize::MAX / 2).unwrap_err();
    assert!(matches!(e, BackendError::TooLarge { .. }), "{e}");
    // a weight that fits one buffer but not one storage binding
    let limit = be.limits().max_storage_buffer_binding_size as usize;
    let Ok(buf) = be.alloc(limit + 1024) else {
        return;
    };
    let mut b = GraphBuilder::new();
    let n = (limit + 1024) / 4;
    let w = b.weight("huge", &[n / 256, 256], DType::F32, buf).unwrap();
    // as the activations of a matmul it is read whole: only weights split into row ranges
    let x = b.input("x", &[1, 256], DType::F32).unwrap();
    let y = b.matmul(w, x).unwrap();
    b.output(y, "y").unwrap();
    let e = be
        .compile(&plan(&b.finish(), PlanOptions::default()))
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::TooLarge { what, .. } if what.contains("huge")),
        "{e}"
    );
}

#[test]
fn wgpu_shader_failures_name_the_kernel() {
    let Some(mut be) = backend() else { return };
    let e = be
        .check_wgsl(
            "broken_kernel",
            "@compute @workgroup_size(64) fn main() { let x: u32 = 1.5; }",
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            BackendError::Shader {
                kernel: "broken_kernel",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("broken_kernel"), "{msg}");
}

#[test]
fn wgpu_a_lost_device_is_an_error_not_a_hang() {
    let Some(mut be) = backend() else { return };
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4], DType::F32).unwrap();
    let y = b.silu(x).unwrap();
    b.output(y, "y").unwrap();
    let prog = be
        .compile(&plan(&b.finish(), PlanOptions::default()))
        .unwrap();
    assert!(
        be.run(prog, &[("x", weft_backends::HostData::F32(&[1.0; 4]))])
            .is_ok()
    );
    be.destroy_device();
    let e = be
        .run(prog, &[("x", weft_backends::HostData::F32(&[1.0; 4]))])
        .unwrap_err();
    assert!(matches!(e, BackendError::Device(_)), "{e}");
    assert!(
        e.to_string().contains("lost"),
        "the error says the device was lost: {e}"
    );
}
