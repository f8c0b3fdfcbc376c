//! The timings panel: per-node time sorted, and totals per op kind.

use crate::snapshot::GraphView;
use std::collections::BTreeMap;
use std::time::Duration;

pub fn ui(ui: &mut egui::Ui, g: &GraphView, backend: &str) {
    let mut rows: Vec<_> = g
        .nodes
        .iter()
        .filter_map(|n| n.time.map(|t| (t, n)))
        .collect();
    if rows.is_empty() {
        ui.label("no timings yet (they arrive with the first decode step)");
        return;
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let total: Duration = rows.iter().map(|r| r.0).sum();
    ui.label(format!(
        "{backend}: {} kernels, {:.3} ms in total",
        rows.len(),
        total.as_secs_f64() * 1e3
    ));
    let mut per_op: BTreeMap<&str, (Duration, usize)> = BTreeMap::new();
    for (t, n) in &rows {
        let e = per_op.entry(n.op).or_default();
        e.0 += *t;
        e.1 += 1;
    }
    let mut per_op: Vec<_> = per_op.into_iter().collect();
    per_op.sort_by_key(|p| std::cmp::Reverse(p.1.0));
    ui.columns(2, |cols| {
        cols[0].heading("by op");
        egui::Grid::new("per_op")
            .striped(true)
            .show(&mut cols[0], |ui| {
                for (op, (t, n)) in &per_op {
                    ui.label(*op);
                    ui.label(format!("{n}×"));
                    ui.label(format!("{:.1} µs", t.as_secs_f64() * 1e6));
                    ui.label(format!(
                        "{:.0}%",
                        100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12)
                    ));
                    ui.end_row();
                }
            });
        cols[1].heading("slowest nodes");
        egui::ScrollArea::vertical().show(&mut cols[1], |ui| {
            egui::Grid::new("nodes").striped(true).show(ui, |ui| {
                for (t, n) in rows.iter().take(200) {
                    ui.label(format!("#{}", n.id));
                    ui.label(&n.name);
                    ui.label(n.op);
                    ui.label(format!("{:.1} µs", t.as_secs_f64() * 1e6));
                    ui.end_row();
                }
            });
        });
    });
}
