//! Memory planning: one activation arena for a whole graph run.
//!
//! Contract:
//! - **Schedule**: the graph's own node order (creation order, a topological order that keeps
//!   reads of a cache before the `store_rows` that overwrites it). Views, inputs and externals
//!   are not scheduled; every other node is one step.
//! - **What lives in the arena**: host inputs (written before step 0) and the result of every
//!   scheduled node except `store_rows` (which writes its cache in place). Externals (weights,
//!   caches) live in their own buffers; views occupy their base's storage.
//! - **Live range** of an arena tensor: from the step that writes it (inputs: before step 0)
//!   to the last step that reads it directly or through a view; outputs live to the end.
//! - **Placement**: best fit among the free blocks (coalesced), else at the top of the arena.
//!   Offsets and sizes are multiples of [`ARENA_ALIGN`] bytes (the strictest GPU binding
//!   alignment), so every tensor can be bound on its own.
//! - **In place**: an elementwise node (unary, binary, fused) takes over the block of a source
//!   that dies at that very step when the source is dense, has the node's shape and byte size,
//!   is not an input or output, and every read of that storage by the node uses the same dense
//!   layout, so element `i` is read before element `i` is written and never again.
//! - Two tensors whose live ranges overlap never overlap in memory, except a node and the source
//!   whose block it took in place (its range ends at the step where the node's begins).

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::passes::{PassOptions, optimize};

/// Alignment of arena offsets and sizes in bytes.
pub const ARENA_ALIGN: usize = 256;

/// Where a tensor sits in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub offset: usize,
    pub bytes: usize,
}

/// The scheduled, placed graph a backend compiles.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub graph: Graph,
    /// Nodes that execute, in order.
    pub schedule: Vec<NodeId>,
    /// Arena placement of each node that owns arena storage.
    pub slots: Vec<Option<Slot>>,
    /// Per node with a slot: (first step, last step) in schedule positions; inputs start at 0
    /// and outputs end at `schedule.len()`.
    pub live: Vec<Option<(usize, usize)>>,
    /// Per node: the source whose block it reuses in place.
    pub in_place_of: Vec<Option<NodeId>>,
    pub arena_bytes: usize,
    /// Bytes if every arena tensor had its own allocation.
    pub naive_bytes: usize,
}

/// Planner settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    pub passes: PassOptions,
    /// Reuse memory of dead tensors (off gives every tensor its own block).
    pub reuse: bool,
    pub in_place: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            passes: PassOptions::default(),
            reuse: true,
            in_place: true,
        }
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN).max(1) * ARENA_ALIGN
}

/// Free blocks of the arena, sorted by offset and coalesced.
#[derive(Debug, Default)]
struct FreeList {
    blocks: Vec<(usize, usize)>,
    top: usize,
}

impl FreeList {
    fn alloc(&mut self, bytes: usize) -> usize {
        let best = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.1 >= bytes)
            .min_by_key(|(_, b)| b.1)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let (off, size) = self.blocks[i];
            if size == bytes {
                self.blocks.remove(i);
            } else {
                self.blocks[i] = (off + bytes, size - bytes);
            }
            return off;
        }
        // Grow: a free block touching the top is extended rather than wasted.
        if let Some(&(off, size)) = self.blocks.last()
            && off + size == self.top
        {
            self.blocks.pop();
            self.top = off + bytes;
            return off;
        }
        let off = self.top;
        self.top += bytes;
        off
    }

    fn free(&mut self, off: usize, bytes: usize) {
        let i = self.blocks.partition_point(|b| b.0 < off);
        self.blocks.insert(i, (off, bytes));
        if i + 1 < self.blocks.len() && self.blocks[i].0 + self.blocks[i].1 == self.blocks[i + 1].0
        {
            self.blocks[i].1 += self.blocks[i + 1].1;
            self.blocks.remove(i + 1);
        }
        if i > 0 && self.blocks[i - 1].0 + self.blocks[i - 1].1 == self.blocks[i].0 {
            self.blocks[i - 1].1 += self.blocks[i].1;
            self.blocks.remove(i);
        }
    }
}

/// Runs the passes on `graph` and plans its memory.
pub fn plan(graph: &Graph, opts: PlanOptions) -> Plan {
    let g = optimize(graph, opts.passes);
    place(g, opts)
}

/// Plans memory for an already optimized graph.
pub fn place(g: Graph, opts: PlanOptions) -> Plan {
    let n = g.len();
    let schedule: Vec<NodeId> = g
        .ids()
        .filter(|&i| {
            let op = &g.node(i).op;
            !(op.is_view() || op.is_external() || matches!(op, Op::Input { .. }))
        })
        .collect();
    let end = schedule.len();
    let owns_arena = |i: NodeId| {
        let op = &g.node(i).op;
        !(op.is_view() || op.is_external() || matches!(op, Op::StoreRows))
    };
    let mut step_of = vec![0usize; n];
    for (s, &id) in schedule.iter().enumerate() {
        step_of[id.index()] = s;
    }
    let mut live: Vec<Option<(usize, usize)>> = vec![None; n];
    for id in g.ids() {
        if owns_arena(id) {
            let first = if matches!(g.node(id).op, Op::Input { .. }) {
                0
            } else {
                step_of[id.index()]
            };
            live[id.index()] = Some((first, first));
        }
    }
    // Reads: a scheduled node reading any node reads its storage.
    for &id in &schedule {
        for &s in &g.node(id).srcs {
            let base = g.storage_of(s);
            if let Some(r) = live[base.index()].as_mut() {
                r.1 = r.1.max(step_of[id.index()]);
            }
        }
    }
    let mut is_output = vec![false; n];
    for (_, id) in &g.outputs {
        let base = g.storage_of(*id);
        is_output[base.index()] = true;
        if let Some(r) = live[base.index()].as_mut() {
            r.1 = end;
        }
    }

    let mut slots: Vec<Option<Slot>> = vec![None; n];
    let mut in_place_of: Vec<Option<NodeId>> = vec![None; n];
    let mut naive = 0usize;
    let mut fl = FreeList::default();
    let bytes_of = |i: NodeId| {
        let nd = g.node(i);
        align(nd.dtype.bytes_for(nd.numel()).unwrap_or(0))
    };
    for id in g.ids() {
        if matches!(g.node(id).op, Op::Input { .. }) {
            let b = bytes_of(id);
            naive += b;
            slots[id.index()] = Some(Slot {
                offset: if opts.reuse { fl.alloc(b) } else { naive - b },
                bytes: b,
            });
        }
    }
    // Blocks to free after each step.
    let mut dies_at: Vec<Vec<NodeId>> = vec![Vec::new(); end + 1];
    for id in g.ids() {
        if let Some((_, last)) = live[id.index()] {
            dies_at[last].push(id);
        }
    }
    for (step, &id) in schedule.iter().enumerate() {
        if !owns_arena(id) {
            for &d in &dies_at[step] {
                free_slot(&mut fl, &slots, d, opts.reuse);
            }
            continue;
        }
        let b = bytes_of(id);
        naive += b;
        let donor = if opts.in_place && opts.reuse {
            in_place_donor(&g, id, step, &live, &is_output, &slots, b)
        } else {
            None
        };
        let slot = match donor {
            Some(d) => {
                in_place_of[id.index()] = Some(d);
                slots[d.index()].map(|s| Slot {
                    offset: s.offset,
                    bytes: b,
                })
            }
            None => Some(Slot {
                offset: if opts.reuse { fl.alloc(b) } else { naive - b },
                bytes: b,
            }),
        };
        slots[id.index()] = slot;
        for &d in &dies_at[step] {
            if Some(d) != donor {
                free_slot(&mut fl, &slots, d, opts.reuse);
            }
        }
    }
    let arena_bytes = if opts.reuse { fl.top } else { naive };
    Plan {
        graph: g,
        schedule,
        slots,
        live,
        in_place_of,
        arena_bytes,
        naive_bytes: naive,
    }
}

fn free_slot(fl: &mut FreeList, slots: &[Option<Slot>], id: NodeId, reuse: bool) {
    if let (true, Some(s)) = (reuse, slots[id.index()]) {
        fl.free(s.offset, s.bytes);
    }
}

fn in_place_donor(
    g: &Graph,
    id: NodeId,
    step: usize,
    live: &[Option<(usize, usize)>],
    is_output: &[bool],
    slots: &[Option<Slot>],
    bytes: usize,
) -> Option<NodeId> {
    let node = g.node(id);
    if !node.op.is_elementwise() {
        return None;
    }
    if let Op::Fused(p) = &node.op
        && p.head.is_some()
    {
        return None; // a row norm reads its whole row before writing it; keep it simple
    }
    node.srcs.iter().find_map(|&s| {
        let base = g.storage_of(s);
        let b = g.node(base);
        let ok = !matches!(b.op, Op::Input { .. })
            && !is_output[base.index()]
            && live[base.index()].is_some_and(|r| r.1 == step)
            && slots[base.index()].is_some_and(|sl| sl.bytes == bytes)
            && b.dtype == node.dtype
            // every read of that storage by this node is the dense layout of the node's shape
            && node.srcs.iter().filter(|&&o| g.storage_of(o) == base).all(|&o| {
                let l = g.node(o).layout;
                l.shape == node.shape() && l.offset == 0 && l.is_contiguous()
            });
        ok.then_some(base)
    })
}

impl Plan {
    /// Number of kernel launches (scheduled nodes).
    pub fn dispatches(&self) -> usize {
        self.schedule.len()
    }
}

impl Plan {
    /// Checks the contract at the top of this module; returns what is violated.
    pub fn check_invariants(&self) -> Result<(), String> {
        let g = &self.graph;
        let placed: Vec<NodeId> = g
            .ids()
            .filter(|i| self.slots[i.index()].is_some())
            .collect();
        for &i in &placed {
            let s = self.slots[i.index()].ok_or("unreachable")?;
            if s.offset % ARENA_ALIGN != 0 || s.offset + s.bytes > self.arena_bytes {
                return Err(format!(
                    "{}: slot {s:?} misaligned or outside the arena of {} bytes",
                    g.node(i).name,
                    self.arena_bytes
                ));
            }
            let need = g.node(i).dtype.bytes_for(g.node(i).numel()).unwrap_or(0);
            if s.bytes < need {
                return Err(format!(
                    "{}: slot of {} bytes for {need}",
                    g.node(i).name,
                    s.bytes
                ));
            }
            if self.live[i.index()].is_none() {
                return Err(format!("{}: placed but no live range", g.node(i).name));
            }
        }
        for (x, &a) in placed.iter().enumerate() {
            for &b in &placed[x + 1..] {
                let (la, lb) = (
                    self.live[a.index()].unwrap_or_default(),
                    self.live[b.index()].unwrap_or_default(),
                );
                if la.0 > lb.1 || lb.0 > la.1 {
                    continue;
                }
                let (sa, sb) = (
                    self.slots[a.index()].unwrap_or(Slot {
                        offset: 0,
                        bytes: 0,
                    }),
                    self.slots[b.index()].unwrap_or(Slot {
                        offset: 0,
                        bytes: 0,
                    }),
                );
                if sa.offset >= sb.offset + sb.bytes || sb.offset >= sa.offset + sa.bytes {
                    continue;
                }
                let handoff = |src: NodeId, dst: NodeId| {
                    self.in_place_of[dst.index()] == Some(src)
                        && self.live[src.index()].map(|r| r.1)
                            == self.live[dst.index()].map(|r| r.0)
                };
                if !(handoff(a, b) || handoff(b, a)) {
                    return Err(format!(
                        "{} (steps {la:?}, {sa:?}) and {} (steps {lb:?}, {sb:?}) are live together and overlap",
                        g.node(a).name,
                        g.node(b).name
                    ));
                }
            }
        }
        for i in g.ids() {
            if let Some(src) = self.in_place_of[i.index()] {
                let n = g.node(i);
                let ok = n.op.is_elementwise()
                    && self.live[src.index()].map(|r| r.1) == self.live[i.index()].map(|r| r.0)
                    && self.slots[src.index()].map(|s| s.bytes)
                        == self.slots[i.index()].map(|s| s.bytes);
                if !ok {
                    return Err(format!(
                        "{} reuses {} in place unsafely",
                        n.name,
                        g.node(src).name
                    ));
                }
            }
        }
        if self.arena_bytes > self.naive_bytes {
            return Err(format!(
                "arena {} exceeds naive {}",
                self.arena_bytes, self.naive_bytes
            ));
        }
        Ok(())
    }
}
