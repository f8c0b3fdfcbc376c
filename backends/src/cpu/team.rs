//! A team of spinning helper threads for the CPU backend's parallel loops.
//!
//! A decode step runs hundreds of small nodes, each a few tens of microseconds of work. A pool
//! whose idle threads sleep pays a wake-up (a futex and a reschedule) per node, often as long as
//! the node itself. Here helpers spin between loops, as ggml's threads do, and park only after
//! [`SPIN`] without work; the thread that starts a loop takes chunks too.
//!
//! Each thread owns a contiguous run of a loop's chunks and takes them in order, then takes
//! what is left of the others' runs from their ends. A mat-vec's rows are then read as one
//! stream per thread (the hardware's prefetches ahead of a chunk land in the same thread's next
//! chunk, not in another thread's), and claiming a chunk touches a cache line no other thread
//! writes until the stealing starts.
//!
//! One loop runs at a time: a loop started while another runs (from another thread, or nested
//! inside a chunk) runs its chunks on the calling thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_micros(300);
/// How long a parked helper sleeps before it looks again (bounds a missed wake-up).
const NAP: Duration = Duration::from_millis(2);

/// The chunk body, with its lifetime erased; only called while its `run` waits.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    threads: usize,
}

// SAFETY: the pointee is `Sync`; `run` keeps it alive until every thread that took it is done.
unsafe impl Send for Job {}

/// One thread's run of chunks, `front << 32 | end`: its owner takes `front`, others take
/// `end − 1`, each by a compare-exchange.
#[repr(align(128))]
struct Run(AtomicU64);

impl Run {
    fn set(&self, front: usize, end: usize) {
        self.0
            .store(((front as u64) << 32) | end as u64, Ordering::Release);
    }

    /// The next chunk from the front (the owner) or the end (anyone else), if any is left.
    fn take(&self, from_front: bool) -> Option<usize> {
        let mut v = self.0.load(Ordering::Acquire);
        loop {
            let (front, end) = (v >> 32, v & 0xFFFF_FFFF);
            if front >= end {
                return None;
            }
            let (next, chunk) = if from_front {
                (v + (1 << 32), front)
            } else {
                (v - 1, end - 1)
            };
            match self
                .0
                .compare_exchange_weak(v, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(chunk as usize),
                Err(now) => v = now,
            }
        }
    }
}

struct Shared {
    /// The current job and its epoch; helpers take it under this lock and count themselves
    /// in `inside` before they let go of it.
    job: Mutex<(u32, Option<Job>)>,
    /// The epoch of the last job published: helpers watch it.
    epoch: AtomicU32,
    /// Every thread's run of the current job's chunks (the caller's is the first).
    runs: Box<[Run]>,
    /// Chunks finished in the current job.
    done: AtomicUsize,
    /// Helpers holding the current job's body.
    inside: AtomicUsize,
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
        let threads = threads.max(1);
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: Mutex::new((0, None)),
            epoch: AtomicU32::new(0),
            runs: (0..threads).map(|_| Run(AtomicU64::new(0))).collect(),
            done: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: Mutex::new(()),
            sleepers: AtomicUsize::new(0),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
        }));
        for i in 1..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("weft-cpu-{i}"))
                .spawn(move || helper(shared, i));
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
            // (a run's ends are 32-bit halves of one word)
            Ok(g) if self.threads > 1 && chunks > 1 && chunks < u32::MAX as usize => g,
            _ => return (0..chunks).for_each(f),
        };
        let s = self.shared;
        // SAFETY: only the lifetime is erased. Helpers take `f` under the job lock and count
        // themselves in `inside` until they drop it; this function clears the job and waits
        // for `inside` to reach 0 before it returns.
        let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            let n = self.threads;
            for (t, run) in s.runs[..n].iter().enumerate() {
                run.set(t * chunks / n, (t + 1) * chunks / n);
            }
            s.done.store(0, Ordering::Relaxed);
            job.0 = job.0.wrapping_add(1);
            job.1 = Some(Job {
                f: erased,
                threads: n,
            });
            s.epoch.store(job.0, Ordering::Release);
        }
        if s.sleepers.load(Ordering::Acquire) > 0 {
            let _l = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        work(s, 0, self.threads, f);
        while s.done.load(Ordering::Acquire) < chunks {
            std::hint::spin_loop();
        }
        s.job.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        while s.inside.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
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

/// Thread `me` of `threads` runs the chunks of its own run from the front, then those left in
/// the others' runs from their ends, until none is left; then counts what it ran as done.
fn work(s: &Shared, me: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let mut ran = 0;
    let mut take = |t: usize, front: bool| {
        while let Some(c) = s.runs[t].take(front) {
            if catch_unwind(AssertUnwindSafe(|| f(c))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
            ran += 1;
        }
    };
    take(me, true);
    for i in 1..threads {
        take((me + i) % threads, false);
    }
    s.done.fetch_add(ran, Ordering::AcqRel);
}

fn helper(s: &'static Shared, me: usize) {
    let mut seen = 0u32;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = s.epoch.load(Ordering::Acquire);
        if epoch != seen {
            seen = epoch;
            let job = {
                let job = s.job.lock().unwrap_or_else(|e| e.into_inner());
                match *job {
                    (e, Some(job)) if e == epoch => {
                        s.inside.fetch_add(1, Ordering::AcqRel);
                        Some(job)
                    }
                    _ => None,
                }
            };
            if let Some(job) = job {
                // SAFETY: the job's owner waits in `run` until `inside` drops back to 0.
                let f = unsafe { &*job.f };
                work(s, me, job.threads, f);
                s.inside.fetch_sub(1, Ordering::AcqRel);
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
        if s.epoch.load(Ordering::Acquire) == seen {
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
    fn each_thread_takes_its_own_run_in_order() {
        let team = Team::new(3);
        for chunks in [2usize, 3, 10, 100, 1000] {
            let order = Mutex::new(vec![]);
            team.run(chunks, &|c| {
                let name = std::thread::current().name().map(str::to_owned);
                order.lock().unwrap().push((name, c));
                std::hint::black_box((0..200).sum::<u64>());
            });
            let order = order.into_inner().unwrap();
            let mut seen: Vec<usize> = order.iter().map(|o| o.1).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..chunks).collect::<Vec<_>>());
            // the caller's run is the first third, helper `t`'s the `t`-th: every thread takes
            // the chunks of its own run in increasing order from its start (the others', from
            // their ends). Who gets going first is up to the scheduler: on a loaded machine a
            // helper may take its own run and steal the rest before the caller takes any.
            let caller = std::thread::current().name().map(str::to_owned);
            for t in 0..3 {
                let run = t * chunks / 3..(t + 1) * chunks / 3;
                let owner = if t == 0 {
                    caller.clone()
                } else {
                    Some(format!("weft-cpu-{t}"))
                };
                let own: Vec<usize> = order
                    .iter()
                    .filter(|o| run.contains(&o.1) && o.0 == owner)
                    .map(|o| o.1)
                    .collect();
                assert!(own.windows(2).all(|w| w[0] < w[1]), "{owner:?}: {order:?}");
                assert!(own.first().is_none_or(|&c| c == run.start), "{order:?}");
                let stolen: Vec<usize> = order
                    .iter()
                    .filter(|o| run.contains(&o.1) && o.0 != owner)
                    .map(|o| o.1)
                    .collect();
                assert!(
                    stolen.iter().all(|&c| own.iter().all(|&o| o < c)),
                    "{order:?}"
                );
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
