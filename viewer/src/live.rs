//! The worker thread: loads the model on its own backend, compiles the prompt and decode
//! graphs, then generates token by token, sending each step's caches and timings to the UI
//! through a channel (the UI never waits on the GPU).

use crate::snapshot::{CacheView, GraphView};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;
use weft_backends::Backend;
use weft_graph::export;
use weft_models::gguf::GgufFile;
use weft_models::sampling::argmax;
use weft_models::{MemoryConfig, Session};

/// A compiled graph with its exports.
#[derive(Clone, Debug, Default)]
pub struct GraphBundle {
    pub view: GraphView,
    pub dot: String,
    pub json: String,
}

/// What the worker reports.
#[derive(Debug)]
pub enum Update {
    Loaded {
        model: String,
        backend: String,
        prompt: GraphBundle,
        decode: GraphBundle,
    },
    Step {
        tokens: usize,
        caches: CacheView,
        decode: GraphView,
        step_time: Duration,
    },
    Error(String),
    Done,
}

/// What to run.
pub struct LiveConfig {
    pub model: PathBuf,
    pub backend: Box<dyn FnOnce() -> Result<Box<dyn Backend>, String> + Send>,
    /// Prompt token ids (the viewer needs no tokenizer).
    pub prompt: Vec<i32>,
    pub max_tokens: usize,
    pub ctx: usize,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("model", &self.model)
            .field("prompt", &self.prompt.len())
            .finish()
    }
}

fn bundle(title: &str, plan: &weft_graph::Plan, times: &[(u32, Duration)]) -> GraphBundle {
    GraphBundle {
        view: GraphView::from_plan(title, plan, times),
        dot: export::to_dot(&plan.graph, Some(plan)),
        json: export::to_json(&plan.graph, Some(plan)),
    }
}

fn work(cfg: LiveConfig, tx: &Sender<Update>) -> Result<(), String> {
    let gguf = GgufFile::open(&cfg.model).map_err(|e| e.to_string())?;
    let be = (cfg.backend)()?;
    let backend = be.name();
    let mut s = Session::new(
        &gguf,
        be,
        MemoryConfig {
            cells: cfg.ctx,
            sequences: 1,
            ..Default::default()
        },
        |_, _| {},
    )
    .map_err(|e| e.to_string())?;
    let n_prompt = cfg.prompt.len().max(1);
    let (_, pp) = s.graph_for(n_prompt).map_err(|e| e.to_string())?;
    s.clear();
    let (_, dp) = s.graph_for(1).map_err(|e| e.to_string())?;
    s.clear();
    let model = cfg
        .model
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let _ = tx.send(Update::Loaded {
        model,
        backend,
        prompt: bundle(&format!("prompt ubatch of {n_prompt} tokens"), &pp, &[]),
        decode: bundle("decode step", &dp, &[]),
    });
    s.set_profiling(true);
    let prompt = if cfg.prompt.is_empty() {
        vec![0]
    } else {
        cfg.prompt
    };
    let mut row = s
        .decode(&[(0, &prompt)])
        .map_err(|e| e.to_string())?
        .remove(0);
    let nv = s.n_vocab();
    for _ in 0..cfg.max_tokens {
        let next = argmax(&row[row.len() - nv..]);
        let start = std::time::Instant::now();
        row = s
            .decode(&[(0, &[next])])
            .map_err(|e| e.to_string())?
            .remove(0);
        let step_time = start.elapsed();
        let times: Vec<(u32, Duration)> = s
            .last_timings()
            .unwrap_or_default()
            .iter()
            .map(|t| (t.node.0, t.time))
            .collect();
        let decode = s
            .last_plan()
            .map(|p| GraphView::from_plan("decode step", p, &times))
            .unwrap_or_default();
        let update = Update::Step {
            tokens: s.memory().seq_len(0),
            caches: CacheView::from_session(&s),
            decode,
            step_time,
        };
        if tx.send(update).is_err() {
            return Ok(()); // the window closed
        }
        if s.memory().kv.used() + 1 >= cfg.ctx && s.memory().has_attention() {
            break;
        }
    }
    Ok(())
}

/// Starts the worker; updates arrive on the returned channel.
pub fn spawn(cfg: LiveConfig) -> Receiver<Update> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        if let Err(e) = work(cfg, &tx) {
            let _ = tx.send(Update::Error(e));
        }
        let _ = tx.send(Update::Done);
    });
    rx
}
