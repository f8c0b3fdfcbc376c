//! Snapshot tests: the main panels, rendered headlessly (wgpu on lavapipe in CI) for a fixture
//! model's compiled graphs and caches, compared with the stored images in `tests/snapshots/`.
//! Set `UPDATE_SNAPSHOTS=1` to rewrite the images after an intended change.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use weft_backends::CpuBackend;
use weft_models::gguf::GgufFile;
use weft_models::{MemoryConfig, Session};
use weft_viewer::live::GraphBundle;
use weft_viewer::snapshot::{CacheView, GraphView};
use weft_viewer::{Tab, ViewerApp};

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(arch)
        .join(format!("{arch}-f32.gguf"))
}

/// A viewer of the llama fixture after a prompt of 5 tokens and 3 decode steps on the CPU,
/// with timings replaced by a deterministic stand-in (real times change every run).
fn app(arch: &str) -> ViewerApp {
    let gguf = GgufFile::open(fixture(arch)).unwrap();
    let mut s = Session::new(
        &gguf,
        Box::new(CpuBackend::new()),
        MemoryConfig {
            cells: 64,
            sequences: 2,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    let (_, pp) = s.graph_for(5).unwrap();
    s.clear();
    s.decode(&[(0, &[1, 2, 3, 4, 5]), (1, &[9, 8])]).unwrap();
    for t in 0..3 {
        s.decode(&[(0, &[t])]).unwrap();
    }
    let plan = s.last_plan().unwrap().clone();
    let times: Vec<(u32, std::time::Duration)> = plan
        .schedule
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.0,
                std::time::Duration::from_micros(10 + (i as u64 * 37) % 90),
            )
        })
        .collect();
    let bundle =
        |title: &str, p: &weft_graph::Plan, t: &[(u32, std::time::Duration)]| GraphBundle {
            view: GraphView::from_plan(title, p, t),
            dot: String::new(),
            json: String::new(),
        };
    let mut app = ViewerApp::still(
        bundle("prompt ubatch of 5 tokens", &pp, &[]),
        bundle("decode step", &plan, &times),
        CacheView::from_session(&s),
    );
    app.model = format!("{arch}-f32.gguf");
    app.backend = "cpu".into();
    app.status = "snapshot".into();
    app.overlay = false;
    app
}

fn render(name: &str, mut app: ViewerApp) {
    let mut harness = egui_kittest::Harness::builder()
        .with_size(egui::vec2(1100.0, 700.0))
        .build_ui(move |ui| app.ui(ui));
    harness.run();
    harness.snapshot(name);
}

#[test]
fn graph_panel_snapshot() {
    render("graph_decode", app("llama"));
}

#[test]
fn graph_panel_collapsed_layers_and_selection_snapshot() {
    let mut a = app("mamba");
    a.graph.collapsed = [1usize].into_iter().collect();
    a.graph.selected = a
        .decode
        .view
        .nodes
        .iter()
        .find(|n| n.op == "ssm_scan")
        .map(|n| n.id);
    render("graph_mamba_collapsed", a);
}

#[test]
fn allocator_panel_snapshot() {
    let mut a = app("llama");
    a.tab = Tab::Allocator;
    a.show_prompt = true;
    render("allocator_prompt", a);
}

#[test]
fn timings_panel_snapshot() {
    let mut a = app("llama");
    a.tab = Tab::Timings;
    render("timings_decode", a);
}

#[test]
fn caches_panel_snapshot() {
    let mut a = app("llama");
    a.tab = Tab::Caches;
    render("caches", a);
}

#[test]
fn a_graph_of_thousands_of_nodes_lays_out() {
    // thousands of nodes: a long random graph stands in for a big model
    let (g, _) = weft_graph::testing::random_graph(5, 8000);
    let p = weft_graph::plan(&g, weft_graph::PlanOptions::default());
    let view = GraphView::from_plan("big", &p, &[]);
    assert!(view.nodes.len() > 2000, "{} nodes", view.nodes.len());
    let start = std::time::Instant::now();
    let l = weft_viewer::layout::layout(&view.nodes, &Default::default(), false);
    assert!(!l.boxes.is_empty());
    eprintln!(
        "layout of {} nodes: {:?}",
        view.nodes.len(),
        start.elapsed()
    );
}
