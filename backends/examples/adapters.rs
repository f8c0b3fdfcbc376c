//! Lists the GPU adapters wgpu finds and the one weft would choose.

#![allow(clippy::print_stdout)]

use weft_backends::Backend;

fn main() {
    for line in weft_backends::wgpu::list_adapters() {
        println!("{line}");
    }
    match weft_backends::WgpuBackend::new(&weft_backends::WgpuOptions::default()) {
        Ok(b) => println!("chosen: {}", b.name()),
        Err(e) => println!("no usable adapter: {e}"),
    }
}
