//! The viewer window: tabs for the graph, the allocator, timings and caches; a side panel for
//! the selected node; export to DOT and JSON; a debug overlay with the frame time.

use crate::graph_panel::{GraphPanel, node_details};
use crate::live::{GraphBundle, Update};
use crate::snapshot::CacheView;
use crate::{allocator_panel, caches_panel, timings_panel};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Graph,
    Allocator,
    Timings,
    Caches,
}

/// The viewer's state; `update` feeds it from the worker, `ui` draws it.
#[derive(Debug)]
pub struct ViewerApp {
    pub tab: Tab,
    /// Show the prompt ubatch's graph instead of the decode step's.
    pub show_prompt: bool,
    pub model: String,
    pub backend: String,
    pub prompt: GraphBundle,
    pub decode: GraphBundle,
    pub caches: CacheView,
    pub tokens: usize,
    pub step_time: Duration,
    pub status: String,
    pub graph: GraphPanel,
    pub overlay: bool,
    frame_ms: f32,
    rx: Option<Receiver<Update>>,
}

impl ViewerApp {
    /// A viewer fed by a worker.
    pub fn live(rx: Receiver<Update>) -> ViewerApp {
        ViewerApp {
            rx: Some(rx),
            status: "loading…".into(),
            ..ViewerApp::still(
                GraphBundle::default(),
                GraphBundle::default(),
                CacheView::default(),
            )
        }
    }

    /// A viewer of fixed data (used by the snapshot tests).
    pub fn still(prompt: GraphBundle, decode: GraphBundle, caches: CacheView) -> ViewerApp {
        ViewerApp {
            tab: Tab::Graph,
            show_prompt: false,
            model: String::new(),
            backend: String::new(),
            prompt,
            decode,
            caches,
            tokens: 0,
            step_time: Duration::ZERO,
            status: String::new(),
            graph: GraphPanel::default(),
            overlay: true,
            frame_ms: 0.0,
            rx: None,
        }
    }

    /// Applies every update waiting in the channel (never blocks).
    pub fn poll(&mut self) {
        let Some(rx) = &self.rx else { return };
        while let Ok(u) = rx.try_recv() {
            match u {
                Update::Loaded {
                    model,
                    backend,
                    prompt,
                    decode,
                } => {
                    self.model = model;
                    self.backend = backend;
                    self.prompt = prompt;
                    self.decode = decode;
                    self.status = "generating".into();
                }
                Update::Step {
                    tokens,
                    caches,
                    decode,
                    step_time,
                } => {
                    self.tokens = tokens;
                    self.caches = caches;
                    self.decode.view = decode;
                    self.step_time = step_time;
                }
                Update::Error(e) => self.status = format!("error: {e}"),
                Update::Done => {
                    if !self.status.starts_with("error") {
                        self.status = "done".into();
                    }
                }
            }
        }
    }

    fn export(&mut self) {
        let g = if self.show_prompt {
            &self.prompt
        } else {
            &self.decode
        };
        let base = if self.show_prompt {
            "weft-prompt-graph"
        } else {
            "weft-decode-graph"
        };
        let r = std::fs::write(format!("{base}.dot"), &g.dot)
            .and_then(|_| std::fs::write(format!("{base}.json"), &g.json));
        self.status = match r {
            Ok(()) => format!("wrote {base}.dot and {base}.json"),
            Err(e) => format!("export failed: {e}"),
        };
    }

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let started = Instant::now();
        self.poll();
        egui::Panel::top("top").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("weft viewer");
                ui.label(format!("{} on {}", self.model, self.backend));
                ui.separator();
                for (tab, name) in [
                    (Tab::Graph, "Graph"),
                    (Tab::Allocator, "Allocator"),
                    (Tab::Timings, "Timings"),
                    (Tab::Caches, "Caches"),
                ] {
                    ui.selectable_value(&mut self.tab, tab, name);
                }
                ui.separator();
                ui.selectable_value(&mut self.show_prompt, false, "decode step");
                ui.selectable_value(&mut self.show_prompt, true, "prompt ubatch");
                if ui.button("export DOT + JSON").clicked() {
                    self.export();
                }
                ui.checkbox(&mut self.overlay, "overlay");
            });
            ui.label(format!(
                "{} · {} tokens · last step {:.1} ms",
                self.status,
                self.tokens,
                self.step_time.as_secs_f64() * 1e3
            ));
        });
        let g = if self.show_prompt {
            &self.prompt.view
        } else {
            &self.decode.view
        };
        if let Some(sel) = self.graph.selected.filter(|_| self.tab == Tab::Graph) {
            egui::Panel::right("node")
                .min_size(260.0)
                .show(ui, |ui| node_details(ui, g, sel));
        }
        egui::CentralPanel::default().show(ui, |ui| {
            ui.label(format!(
                "{}: {} nodes, {} dispatches",
                g.title,
                g.nodes.len(),
                g.dispatches
            ));
            match self.tab {
                Tab::Graph => self.graph.ui(ui, g),
                Tab::Allocator => allocator_panel::ui(ui, g),
                Tab::Timings => timings_panel::ui(ui, g, &self.backend),
                Tab::Caches => caches_panel::ui(ui, &self.caches),
            }
        });
        // Time spent building this frame (smoothed): what the UI costs, not the repaint cadence.
        self.frame_ms = 0.8 * self.frame_ms + 0.2 * started.elapsed().as_secs_f32() * 1e3;
        if self.overlay {
            let r = ui.max_rect();
            let text = format!("ui {:.2} ms/frame · {} nodes", self.frame_ms, g.nodes.len());
            let colour = ui.visuals().weak_text_color();
            ui.painter().text(
                r.right_bottom() - egui::vec2(8.0, 8.0),
                egui::Align2::RIGHT_BOTTOM,
                text,
                egui::FontId::monospace(12.0),
                colour,
            );
        }
        if self.rx.is_some() {
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        ViewerApp::ui(self, ui);
    }
}
