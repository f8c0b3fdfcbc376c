//! The allocator panel: the arena as a timeline, schedule step across and byte offset down; each
//! arena tensor is a rectangle over its live range and its slot, coloured by op.

use crate::graph_panel::op_colour;
use crate::snapshot::GraphView;
use egui::{Color32, Pos2, Rect, Sense, Stroke, StrokeKind};

pub fn ui(ui: &mut egui::Ui, g: &GraphView) {
    ui.label(format!(
        "arena {:.1} KiB, every tensor on its own {:.1} KiB ({:.0}% saved), {} steps",
        g.arena_bytes as f64 / 1024.0,
        g.naive_bytes as f64 / 1024.0,
        100.0 * (1.0 - g.arena_bytes as f64 / g.naive_bytes.max(1) as f64),
        g.steps
    ));
    let (rect, resp) = ui.allocate_exact_size(ui.available_size(), Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 0.0, ui.visuals().extreme_bg_color);
    let steps = g.steps.max(1) as f32 + 1.0;
    let bytes = g.arena_bytes.max(1) as f32;
    let pointer = ui.input(|i| i.pointer.hover_pos());
    let mut hover = None;
    for n in &g.nodes {
        let (Some((off, size)), Some((a, b))) = (n.slot, n.live) else {
            continue;
        };
        let x0 = rect.min.x + rect.width() * a as f32 / steps;
        let x1 = rect.min.x + rect.width() * (b as f32 + 1.0) / steps;
        let y0 = rect.min.y + rect.height() * off as f32 / bytes;
        let y1 = rect.min.y + rect.height() * (off + size) as f32 / bytes;
        let r = Rect::from_min_max(
            Pos2::new(x0, y0),
            Pos2::new(x1.max(x0 + 1.0), y1.max(y0 + 1.0)),
        );
        painter.rect_filled(r, 0.0, op_colour(n.op));
        painter.rect_stroke(
            r,
            0.0,
            Stroke::new(0.5, Color32::from_gray(60)),
            StrokeKind::Inside,
        );
        if pointer.is_some_and(|p| r.contains(p)) {
            hover = Some(n);
        }
    }
    if let Some(n) = hover {
        resp.on_hover_text(format!(
            "{} ({})\n{:?} {}\nbytes {:?}\nsteps {:?}",
            n.name, n.op, n.shape, n.dtype, n.slot, n.live
        ));
    }
}
