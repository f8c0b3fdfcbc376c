//! The graph panel: the layered DAG with pan (drag) and zoom (scroll), layers collapsible,
//! search by name or op, nodes coloured by op kind with fused nodes outlined, a hover card with
//! shape and dtype, and a click selecting the node for the side panel.

use crate::layout::{COL, Layout, ROW, layout};
use crate::snapshot::{GraphView, NodeView};
use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, StrokeKind, Vec2};
use std::collections::BTreeSet;

pub fn op_colour(op: &str) -> Color32 {
    match op {
        "mul_mat" | "mul_mat_id" | "get_rows" => Color32::from_rgb(244, 177, 131),
        "attention" | "soft_max" | "rope" => Color32::from_rgb(169, 209, 142),
        "ssm_conv" | "ssm_scan" | "gated_delta_net" => Color32::from_rgb(197, 163, 217),
        "fused" => Color32::from_rgb(255, 230, 153),
        "store_rows" => Color32::from_rgb(255, 153, 153),
        "input" | "external" | "view" => Color32::from_rgb(210, 210, 210),
        _ => Color32::from_rgb(189, 215, 238),
    }
}

/// The node with id `id` (ids are indices into the graph's node list).
fn node(g: &GraphView, id: u32) -> Option<&NodeView> {
    g.nodes
        .get(id as usize)
        .filter(|n| n.id == id)
        .or_else(|| g.nodes.iter().find(|n| n.id == id))
}

/// Interactive state of the panel.
#[derive(Debug)]
pub struct GraphPanel {
    pub offset: Vec2,
    pub zoom: f32,
    pub collapsed: BTreeSet<usize>,
    pub search: String,
    pub selected: Option<u32>,
    pub show_leaves: bool,
    pub show_times: bool,
    cache: Option<(usize, BTreeSet<usize>, bool, Layout)>,
}

impl Default for GraphPanel {
    fn default() -> Self {
        GraphPanel {
            offset: Vec2::new(20.0, 20.0),
            zoom: 0.8,
            collapsed: BTreeSet::new(),
            search: String::new(),
            selected: None,
            show_leaves: false,
            show_times: true,
            cache: None,
        }
    }
}

impl GraphPanel {
    /// The layout, recomputed only when the graph or the collapsed layers change.
    fn layout(&mut self, g: &GraphView) -> &Layout {
        let key = g.nodes.len() ^ g.dispatches << 20;
        let stale = !matches!(&self.cache, Some((k, c, l, _)) if *k == key && *c == self.collapsed && *l == self.show_leaves);
        if stale {
            self.cache = Some((
                key,
                self.collapsed.clone(),
                self.show_leaves,
                layout(&g.nodes, &self.collapsed, self.show_leaves),
            ));
        }
        match &self.cache {
            Some((_, _, _, l)) => l,
            None => unreachable!("filled above"),
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, g: &GraphView) {
        ui.horizontal(|ui| {
            let label = ui.label("search");
            ui.text_edit_singleline(&mut self.search)
                .labelled_by(label.id);
            let layers: BTreeSet<usize> = g.nodes.iter().filter_map(|n| n.layer).collect();
            if ui.button("collapse layers").clicked() {
                self.collapsed = layers.clone();
            }
            if ui.button("expand layers").clicked() {
                self.collapsed.clear();
            }
            ui.checkbox(&mut self.show_leaves, "inputs, weights, views");
            ui.checkbox(&mut self.show_times, "time bars");
        });
        let max_time = g
            .nodes
            .iter()
            .filter_map(|n| n.time)
            .max()
            .unwrap_or_default()
            .as_secs_f32()
            .max(1e-9);
        let zoom = self.zoom;
        let offset = self.offset;
        let search = self.search.to_lowercase();
        let show_times = self.show_times;
        let selected = self.selected;
        let lay = self.layout(g).clone();
        let (rect, resp) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 0.0, ui.visuals().extreme_bg_color);
        let to_screen = |x: f32, y: f32| rect.min + offset + Vec2::new(x, y) * zoom;
        let size = Vec2::new(COL * 0.85, ROW * 0.6) * zoom;
        for &(a, b) in &lay.edges {
            let (pa, pb) = (&lay.boxes[a], &lay.boxes[b]);
            let from = to_screen(pa.x, pa.y) + Vec2::new(size.x / 2.0, size.y);
            let to = to_screen(pb.x, pb.y) + Vec2::new(size.x / 2.0, 0.0);
            painter.line_segment([from, to], Stroke::new(1.0, Color32::from_gray(130)));
        }
        let mut hovered: Option<u32> = None;
        let pointer = ui.input(|i| i.pointer.hover_pos());
        for b in &lay.boxes {
            let min = to_screen(b.x, b.y);
            let r = Rect::from_min_size(min, size);
            if !r.intersects(rect) {
                continue;
            }
            let first: Option<&NodeView> = node(g, b.nodes[0]);
            let op = if b.collapsed_layer.is_some() {
                "layer"
            } else {
                first.map_or("", |n| n.op)
            };
            let fill = if b.collapsed_layer.is_some() {
                Color32::from_rgb(230, 230, 250)
            } else {
                op_colour(op)
            };
            let hit = !search.is_empty()
                && b.nodes.iter().any(|id| {
                    g.nodes.iter().any(|n| {
                        n.id == *id
                            && (n.name.to_lowercase().contains(&search) || n.op.contains(&search))
                    })
                });
            painter.rect_filled(r, 4.0 * zoom, fill);
            let fused = first.is_some_and(|n| n.fused) && b.collapsed_layer.is_none();
            let stroke = if selected.is_some_and(|s| b.nodes.contains(&s)) {
                Stroke::new(3.0, Color32::from_rgb(30, 90, 200))
            } else if hit {
                Stroke::new(3.0, Color32::from_rgb(220, 40, 40))
            } else if fused {
                Stroke::new(2.0, Color32::from_rgb(170, 120, 0))
            } else {
                Stroke::new(1.0, Color32::from_gray(90))
            };
            painter.rect_stroke(r, 4.0 * zoom, stroke, StrokeKind::Inside);
            if show_times {
                let t: f32 = b
                    .nodes
                    .iter()
                    .filter_map(|id| g.nodes.iter().find(|n| n.id == *id)?.time)
                    .map(|d| d.as_secs_f32())
                    .sum();
                if t > 0.0 {
                    let w = (t / max_time).min(1.0) * r.width();
                    painter.rect_filled(
                        Rect::from_min_size(
                            Pos2::new(r.min.x, r.max.y - 4.0 * zoom),
                            Vec2::new(w, 4.0 * zoom),
                        ),
                        0.0,
                        Color32::from_rgb(200, 60, 60),
                    );
                }
            }
            if zoom > 0.35 {
                let text = if b.collapsed_layer.is_some() {
                    format!("{} ({} nodes)", b.label, b.nodes.len())
                } else {
                    b.label.clone()
                };
                painter.text(
                    r.center(),
                    Align2::CENTER_CENTER,
                    text,
                    FontId::monospace(11.0 * zoom.min(1.5)),
                    Color32::BLACK,
                );
            }
            if pointer.is_some_and(|p| r.contains(p)) {
                hovered = Some(b.nodes[0]);
                if resp.clicked() {
                    self.selected = Some(b.nodes[0]);
                    if let Some(l) = b.collapsed_layer {
                        self.collapsed.remove(&l);
                    }
                }
            }
        }
        if let Some(n) = hovered.and_then(|id| node(g, id)) {
            resp.clone().on_hover_text(format!(
                "{}\n{} {:?} {}{}",
                n.name,
                n.op,
                n.shape,
                n.dtype,
                if n.detail.is_empty() {
                    String::new()
                } else {
                    format!("\n{}", n.detail)
                }
            ));
        }
        if resp.dragged() {
            self.offset += resp.drag_delta();
        }
        if resp.hovered() {
            let scroll = ui.input(|i| i.smooth_scroll_delta.y);
            if scroll != 0.0 {
                let before = self.zoom;
                self.zoom = (self.zoom * (1.0 + scroll * 0.002)).clamp(0.05, 4.0);
                if let Some(p) = pointer {
                    let rel = p - rect.min - self.offset;
                    self.offset -= rel * (self.zoom / before - 1.0);
                }
            }
        }
    }
}

/// The side panel of the selected node: sources, consumers, arena slot, live range, time.
pub fn node_details(ui: &mut egui::Ui, g: &GraphView, id: u32) {
    let Some(n) = g.nodes.iter().find(|n| n.id == id) else {
        return;
    };
    ui.heading(&n.name);
    egui::Grid::new("node").num_columns(2).show(ui, |ui| {
        ui.label("op");
        ui.label(n.op);
        ui.end_row();
        if !n.detail.is_empty() {
            ui.label("program");
            ui.label(&n.detail);
            ui.end_row();
        }
        ui.label("shape");
        ui.label(format!("{:?} {}", n.shape, n.dtype));
        ui.end_row();
        ui.label("layer");
        ui.label(n.layer.map_or("-".into(), |l| l.to_string()));
        ui.end_row();
        ui.label("arena");
        ui.label(
            n.slot
                .map_or("-".into(), |(o, b)| format!("offset {o}, {b} bytes")),
        );
        ui.end_row();
        ui.label("live");
        ui.label(
            n.live
                .map_or("-".into(), |(a, b)| format!("steps {a}..={b}")),
        );
        ui.end_row();
        ui.label("time");
        ui.label(
            n.time
                .map_or("-".into(), |t| format!("{:.1} µs", t.as_secs_f64() * 1e6)),
        );
        ui.end_row();
    });
    ui.separator();
    ui.label("sources");
    for s in &n.srcs {
        if let Some(m) = g.nodes.iter().find(|m| m.id == *s) {
            ui.label(format!("  #{} {} {:?}", m.id, m.name, m.shape));
        }
    }
    ui.label("consumers");
    for m in g.nodes.iter().filter(|m| m.srcs.contains(&id)) {
        ui.label(format!("  #{} {} {:?}", m.id, m.name, m.shape));
    }
}
