//! The caches panel: KV cells in use per sequence and as a map, recurrent slots and checkpoints,
//! bytes per layer.

use crate::snapshot::CacheView;
use egui::{Color32, Pos2, Rect, Sense, Vec2};

const SEQ_COLOURS: [Color32; 6] = [
    Color32::from_rgb(66, 133, 244),
    Color32::from_rgb(219, 68, 55),
    Color32::from_rgb(15, 157, 88),
    Color32::from_rgb(244, 160, 0),
    Color32::from_rgb(171, 71, 188),
    Color32::from_rgb(0, 172, 193),
];

pub fn ui(ui: &mut egui::Ui, c: &CacheView) {
    ui.label(format!(
        "KV cells {} / {} used; recurrent slots {} / {}; checkpoints {} ({:.1} KiB)",
        c.cells_used,
        c.cells,
        c.slots_used,
        c.slots,
        c.checkpoints.iter().sum::<usize>(),
        c.checkpoint_bytes as f64 / 1024.0
    ));
    egui::Grid::new("seqs").striped(true).show(ui, |ui| {
        ui.label("sequence");
        ui.label("tokens");
        ui.label("KV cells");
        ui.label("checkpoints");
        ui.end_row();
        for (q, t) in c.tokens.iter().enumerate() {
            ui.colored_label(SEQ_COLOURS[q % SEQ_COLOURS.len()], format!("{q}"));
            ui.label(t.to_string());
            ui.label(c.cells_per_seq.get(q).copied().unwrap_or(0).to_string());
            ui.label(c.checkpoints.get(q).copied().unwrap_or(0).to_string());
            ui.end_row();
        }
    });
    ui.separator();
    ui.label("KV cell map (one square per cell, coloured by its first sequence)");
    let per_row = 64usize;
    let side = (ui.available_width() / per_row as f32).clamp(3.0, 12.0);
    let rows = c.cell_map.len().div_ceil(per_row).min(64);
    let (rect, _) = ui.allocate_exact_size(
        Vec2::new(side * per_row as f32, side * rows as f32),
        Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    for (i, &(_, seqs)) in c.cell_map.iter().take(rows * per_row).enumerate() {
        let min = rect.min + Vec2::new((i % per_row) as f32 * side, (i / per_row) as f32 * side);
        let colour = if seqs == 0 {
            Color32::from_gray(225)
        } else {
            SEQ_COLOURS[seqs.trailing_zeros() as usize % SEQ_COLOURS.len()]
        };
        painter.rect_filled(
            Rect::from_min_size(min, Vec2::splat(side - 1.0)),
            0.0,
            colour,
        );
    }
    ui.separator();
    ui.label("bytes per layer");
    let max = c.layers.iter().map(|l| l.bytes).max().unwrap_or(1).max(1) as f32;
    for (i, l) in c.layers.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.label(format!("{i:>3} {:<9}", l.kind));
            let (r, _) = ui.allocate_exact_size(Vec2::new(240.0, 10.0), Sense::hover());
            ui.painter().rect_filled(
                Rect::from_min_size(r.min, Vec2::new(240.0 * l.bytes as f32 / max, 10.0)),
                0.0,
                Color32::from_rgb(120, 150, 200),
            );
            ui.label(format!("{:.1} KiB", l.bytes as f64 / 1024.0));
            let _ = Pos2::ZERO;
        });
    }
}
