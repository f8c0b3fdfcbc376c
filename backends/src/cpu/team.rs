//! A team of spinning helper threads for the CPU backend's parallel loops.
//!
//! A decode step runs hundreds of small nodes, each a few tens of microseconds of work. A pool
//! whose idle threads sleep pays a wake-up (a futex and a reschedule) per node, often as long as
//! the node itself. Here helpers spin between loops, as ggml's threads do, and park only after
//! [`SPIN`] without work; the thread that starts a loop takes chunks too.
//!
//! One loop runs at a time: a loop started while another runs (from another thread, or nested
//! inside a chunk) runs its chunks on the calling thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_micros(300);
/// How long a parked helper sleeps before it looks again (bounds a missed wake-up).
const NAP: Duration = Duration::from_millis(2);

/// The chunk body, with its lifetime erased; only called for claimed chunks of its own epoch.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    chunks: usize,
}

// SAFETY: the pointee is `Sync`; `run` keeps it alive until every claimed chunk is done.
unsafe impl Send for Job {}

struct Shared {
    /// The current job and its epoch.
    job: Mutex<(u32, Option<Job>)>,
    /// `epoch << 32 | next chunk`: a chunk is claimed by a compare-exchange that also checks the
    /// epoch, so a late helper can never claim a chunk of a later job with an earlier body.
    counter: AtomicU64,
    /// Chunks finished in the current epoch.
    done: AtomicUsize,
    panicked: AtomicBool,
    /// Held by the thread whose loop runs.
    busy: Mutex<()>,
    sleepers: AtomicUsize,
    wake: Condvar,
    wake_lock: Mutex<()>,
}

/// The helpers and the state they share.
pub struct Team {
    shared: &'static Shared,
    threads: usize,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads)
            .finish()
    }
}

/// The process-wide team, sized like rayon's pool (`RAYON_NUM_THREADS` sets both).
pub fn global() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(rayon::current_num_threads()))
}

impl Team {
    fn new(threads: usize) -> Team {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: Mutex::new((0, None)),
            counter: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: Mutex::new(()),
            sleepers: AtomicUsize::new(0),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
        }));
        let threads = threads.max(1);
        for i in 1..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("weft-cpu-{i}"))
                .spawn(move || helper(shared));
            if spawned.is_err() {
                return Team { shared, threads: i };
            }
        }
        Team { shared, threads }
    }

    /// Threads that run a loop's chunks (helpers plus the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(c)` once for every `c < chunks`, spread over the team.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.shared.busy.try_lock() {
            // (the chunk counter is the low 32 bits of `counter`)
            Ok(g) if self.threads > 1 && chunks > 1 && chunks < u32::MAX as usize => g,
            _ => return (0..chunks).for_each(f),
        };
        let s = self.shared;
        // SAFETY: only the lifetime is erased. Helpers call `f` only for chunks they claimed in
        // this epoch, and this function returns only after all of those chunks are done.
        let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let epoch = {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            job.0 = job.0.wrapping_add(1);
            job.1 = Some(Job { f: erased, chunks });
            s.done.store(0, Ordering::Relaxed);
            s.counter.store((job.0 as u64) << 32, Ordering::Release);
            job.0
        };
        if s.sleepers.load(Ordering::Acquire) > 0 {
            let _l = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        work(s, epoch, chunks, f);
        while s.done.load(Ordering::Acquire) < chunks {
            std::hint::spin_loop();
        }
        s.job.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        drop(guard);
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU kernel panicked on a helper thread");
        }
    }

    /// Splits `data` into chunks of `len` (the last may be shorter) and calls `f(index, chunk)`
    /// for each, spread over the team.
    pub fn chunks_mut<T: Send>(
        &self,
        data: &mut [T],
        len: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let len = len.max(1);
        let total = data.len();
        let base = data.as_mut_ptr() as usize;
        self.run(total.div_ceil(len), &|c| {
            let start = c * len;
            let n = len.min(total - start);
            // SAFETY: chunk `c` is handed out exactly once, chunks are disjoint and inside
            // `data`, which stays mutably borrowed until `run` returns.
            let chunk = unsafe { std::slice::from_raw_parts_mut((base as *mut T).add(start), n) };
            f(c, chunk);
        });
    }
}

/// Claims and runs chunks of `epoch` until none are left.
fn work(s: &Shared, epoch: u32, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    loop {
        let v = s.counter.load(Ordering::Acquire);
        let c = (v & 0xFFFF_FFFF) as usize;
        if (v >> 32) as u32 != epoch || c >= chunks {
            return;
        }
        if s.counter
            .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        if catch_unwind(AssertUnwindSafe(|| f(c))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

fn helper(s: &'static Shared) {
    let mut seen = 0u32;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = (s.counter.load(Ordering::Acquire) >> 32) as u32;
        if epoch != seen {
            seen = epoch;
            let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
            if let (e, Some(job)) = job
                && e == epoch
            {
                // SAFETY: `work` calls it only for chunks claimed in `epoch`, which keeps the
                // job's owner waiting in `run` until they are done.
                let f = unsafe { &*job.f };
                work(s, epoch, job.chunks, f);
            }
            idle_since = Instant::now();
            continue;
        }
        spins += 1;
        // Reading the clock costs more than a spin: look at it now and then.
        if !spins.is_multiple_of(256) || idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        s.sleepers.fetch_add(1, Ordering::AcqRel);
        let lock = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
        if (s.counter.load(Ordering::Acquire) >> 32) as u32 == seen {
            let _ = s.wake.wait_timeout(lock, NAP);
        }
        s.sleepers.fetch_sub(1, Ordering::AcqRel);
        idle_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        let team = Team::new(3);
        for n in [0usize, 1, 2, 7, 100] {
            let mut v = vec![0u32; n * 5 + 3];
            team.chunks_mut(&mut v, 5, |c, ch| {
                for x in ch.iter_mut() {
                    *x += c as u32 + 1;
                }
            });
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, (i / 5) as u32 + 1);
            }
        }
    }

    #[test]
    fn nested_and_concurrent_loops_finish() {
        let team = std::sync::Arc::new(Team::new(2));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let team = team.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        team.run(8, &|c| {
                            team.run(2, &|d| {
                                sum.fetch_add(c * 2 + d, Ordering::Relaxed);
                            })
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), (0..16).sum::<usize>());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    }

    #[test]
    fn a_panicking_chunk_panics_the_caller() {
        let team = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(64, &|c| assert!(c != 40, "chunk 40"));
        }));
        assert!(r.is_err());
        team.run(4, &|_| {}); // still usable
    }
}
