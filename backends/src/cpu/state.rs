//! Recurrent state rows picked from a layer's state cache by sequence slot, for the scans that
//! update their state where it lives (`Op::SsmScan` and `Op::GatedDeltaNet` with slots).

use crate::{BackendError, Result};

/// The rows `slots[s]` of `cache` (rows of `per` values), one per sequence, mutable at once.
pub fn slot_rows<'a>(
    cache: &'a mut [f32],
    per: usize,
    slots: &[i32],
    op: &'static str,
    node: &str,
) -> Result<Vec<&'a mut [f32]>> {
    let mut rows: Vec<Option<&mut [f32]>> = cache.chunks_mut(per.max(1)).map(Some).collect();
    let n_rows = rows.len();
    let mut mine = Vec::with_capacity(slots.len());
    for &slot in slots {
        let Some(entry) = usize::try_from(slot).ok().and_then(|r| rows.get_mut(r)) else {
            return Err(BackendError::IndexOutOfRange {
                op,
                node: node.to_string(),
                index: slot as i64,
                len: n_rows,
            });
        };
        mine.push(entry.take().ok_or_else(|| BackendError::BadInput {
            name: "slots".into(),
            detail: format!("{node}: slot {slot} appears twice in one {op}"),
        })?);
    }
    Ok(mine)
}
