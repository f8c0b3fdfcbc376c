//! weft's viewer: an eframe/egui window showing what a model really runs — the compiled graph
//! (decode step or prompt ubatch), the arena allocator over time, per-node timings and the
//! caches — updated live while a worker thread generates.

mod allocator_panel;
pub mod app;
mod caches_panel;
pub mod graph_panel;
pub mod layout;
pub mod live;
pub mod snapshot;
mod timings_panel;

pub use app::{Tab, ViewerApp};
pub use live::{LiveConfig, Update, spawn};

/// Opens the window and runs until it is closed.
pub fn run(cfg: LiveConfig) -> Result<(), String> {
    let rx = spawn(cfg);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 800.0])
            .with_title("weft viewer"),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "weft viewer",
        options,
        Box::new(|_cc| Ok(Box::new(ViewerApp::live(rx)))),
    )
    .map_err(|e| e.to_string())
}
