//! Micro-benchmarks of the pure session queue (`labgate::queue::Queue`) at 10^3 to 10^6
//! sessions: create, position lookup (`view`, `touch`), heartbeat, delete from the middle,
//! promotion (delete the head) and reaping (k stale among n), plus live heap bytes per
//! session measured by a counting global allocator.
//!
//! Owns only measurement: it must never assert timings (figures are printed, not
//! judged) and never touch I/O beyond printing. Every benchmark keeps the queue at its
//! size (what an operation adds or removes is undone outside the timed region), so the
//! figure for 10^6 is the cost of one operation on a queue of 10^6.
//!
//! Run: `cargo bench --bench queue` (about two minutes). Criterion prints its own
//! report per benchmark; the table at the end gathers the medians so the growth from
//! 10^3 to 10^6 reads in one place.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use labgate::queue::{EndReason, Queue, SessionId, Timeouts};

// ------------------------------------------------------------------ counting allocator

/// Counts live heap bytes so a queue's footprint can be read before and after building
/// it. Hand-written because it is a dozen lines over `System`; a crate would add nothing.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

// ------------------------------------------------------------------ fixture

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// Criterion's minimum; with short windows the whole run stays around two minutes.
const SAMPLES: usize = 10;
const WARM_UP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_millis(1500);

/// Sessions made stale per `reap` call in the reaping benchmark.
const REAP_K: usize = 100;

/// The production defaults: 300 s active, 600 s waiting.
const TIMEOUTS: Timeouts = Timeouts {
    active: Duration::from_secs(300),
    waiting: Duration::from_secs(600),
};

/// A queue of `n` sessions and the ids in it. `now` runs far ahead of `t0` (a
/// simulated 10^7 s), so ordinary operations never make anyone stale while the reaping
/// benchmark can still create sessions last seen at `t0` that are stale at `t0 + 601 s`.
struct Fixture {
    q: Queue,
    ids: IdSet,
    t0: Instant,
    now: Instant,
    rng: fastrand::Rng,
}

impl Fixture {
    /// Also returns the live heap bytes the queue itself took to hold `n` sessions.
    fn new(n: usize) -> (Self, isize) {
        let t0 = Instant::now();
        let mut f = Fixture {
            q: Queue::new(TIMEOUTS),
            ids: IdSet::default(),
            t0,
            now: t0 + Duration::from_secs(10_000_000),
            rng: fastrand::Rng::with_seed(0x1ab_9a7e),
        };
        let mut made = Vec::with_capacity(n);
        let before = live_bytes();
        for _ in 0..n {
            made.push(f.fresh());
        }
        let queue_bytes = live_bytes() - before;
        f.ids = IdSet::from(made);
        (f, queue_bytes)
    }

    /// Time moves forward by a microsecond per operation, so refreshes move keys in the
    /// deadline index as they do in production.
    fn tick(&mut self) -> Instant {
        self.now += Duration::from_micros(1);
        self.now
    }

    /// Creates a session (untimed helper) and returns its id.
    fn fresh(&mut self) -> SessionId {
        let id = SessionId::random();
        let now = self.tick();
        self.q.create(id, now).expect("fresh random id");
        id
    }

    /// A uniformly chosen live session other than the head (a WAITING one).
    fn waiting(&mut self) -> SessionId {
        let head = self.q.active().expect("non-empty").id;
        loop {
            let id = self.ids.list[self.rng.usize(..self.ids.list.len())];
            if id != head {
                return id;
            }
        }
    }
}

/// The benchmark's own record of live ids: uniform random picks and O(1) removal by id
/// (a swap-remove plus an index), so bookkeeping never costs O(n) between samples.
#[derive(Default)]
struct IdSet {
    list: Vec<SessionId>,
    at: HashMap<SessionId, usize>,
}

impl From<Vec<SessionId>> for IdSet {
    fn from(list: Vec<SessionId>) -> Self {
        let at = list.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        IdSet { list, at }
    }
}

impl IdSet {
    fn insert(&mut self, id: SessionId) {
        self.at.insert(id, self.list.len());
        self.list.push(id);
    }

    fn remove(&mut self, id: &SessionId) {
        if let Some(i) = self.at.remove(id) {
            self.list.swap_remove(i);
            if let Some(moved) = self.list.get(i) {
                self.at.insert(*moved, i);
            }
        }
    }
}

// ------------------------------------------------------------------ recording

/// Median ns/op per (operation, size), gathered from the samples criterion asks for.
/// Every benchmark goes through `iter_custom`, so each call is one sample (warm-up calls
/// come first; only the last `SAMPLES` calls are kept).
static SAMPLES_NS: Mutex<BTreeMap<(&'static str, usize), Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(op: &'static str, n: usize, iters: u64, took: Duration) -> Duration {
    let per_op = took.as_nanos() as f64 / iters.max(1) as f64;
    let mut all = SAMPLES_NS.lock().unwrap_or_else(|e| e.into_inner());
    all.entry((op, n)).or_default().push(per_op);
    took
}

fn median_ns(op: &'static str, n: usize) -> Option<f64> {
    let all = SAMPLES_NS.lock().unwrap_or_else(|e| e.into_inner());
    let v = all.get(&(op, n))?;
    let mut last: Vec<f64> = v[v.len().saturating_sub(SAMPLES)..].to_vec();
    last.sort_by(f64::total_cmp);
    last.get(last.len() / 2).copied()
}

// ------------------------------------------------------------------ benchmarks

const OPS: [&str; 8] = [
    "create",
    "view",
    "touch",
    "heartbeat",
    "delete_middle",
    "promote",
    "reap_none",
    "reap_k",
];

/// Operations that add or remove a session are timed in batches of this size; the
/// batch is undone outside the timed region, so the queue stays within `BATCH` of n.
const BATCH: u64 = 64;

fn bench_size(c: &mut Criterion, n: usize, bytes_per_session: &mut BTreeMap<usize, f64>) {
    let (mut f, queue_bytes) = Fixture::new(n);
    bytes_per_session.insert(n, queue_bytes as f64 / n as f64);

    let mut g = c.benchmark_group("queue");
    g.sample_size(SAMPLES)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASURE);

    // create: append at the tail (the new session is WAITING).
    g.bench_function(BenchmarkId::new("create", n), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            let mut left = iters;
            let mut made = Vec::with_capacity(BATCH as usize);
            while left > 0 {
                let batch = left.min(BATCH);
                let ids: Vec<SessionId> = (0..batch).map(|_| SessionId::random()).collect();
                let now = f.tick();
                let start = Instant::now();
                for id in &ids {
                    black_box(f.q.create(*id, now).expect("fresh id"));
                }
                took += start.elapsed();
                made.extend(ids);
                for id in made.drain(..) {
                    f.q.remove(&id, EndReason::Deleted, now);
                }
                left -= batch;
            }
            record("create", n, iters, took)
        })
    });

    // view: position of a random WAITING session (an O(log n) rank in the treap).
    g.bench_function(BenchmarkId::new("view", n), |b| {
        b.iter_custom(|iters| {
            let picks: Vec<SessionId> = (0..iters.min(1 << 16)).map(|_| f.waiting()).collect();
            let start = Instant::now();
            for i in 0..iters as usize {
                black_box(f.q.view(&picks[i % picks.len()]));
            }
            record("view", n, iters, start.elapsed())
        })
    });

    // touch: GET /session/{id} (refresh last_seen + position).
    g.bench_function(BenchmarkId::new("touch", n), |b| {
        b.iter_custom(|iters| {
            let picks: Vec<SessionId> = (0..iters.min(1 << 16)).map(|_| f.waiting()).collect();
            let now = f.tick();
            let start = Instant::now();
            for i in 0..iters as usize {
                let at = now + Duration::from_nanos(i as u64);
                black_box(f.q.touch(&picks[i % picks.len()], at));
            }
            let took = start.elapsed();
            f.now = now + Duration::from_nanos(iters);
            record("touch", n, iters, took)
        })
    });

    // heartbeat: POST /session/heartbeat (refresh last_seen only).
    g.bench_function(BenchmarkId::new("heartbeat", n), |b| {
        b.iter_custom(|iters| {
            let picks: Vec<SessionId> = (0..iters.min(1 << 16)).map(|_| f.waiting()).collect();
            let now = f.tick();
            let start = Instant::now();
            for i in 0..iters as usize {
                let at = now + Duration::from_nanos(i as u64);
                black_box(f.q.heartbeat(&picks[i % picks.len()], at));
            }
            let took = start.elapsed();
            f.now = now + Duration::from_nanos(iters);
            record("heartbeat", n, iters, took)
        })
    });

    // delete_middle: remove a random WAITING session; a fresh one replaces it untimed.
    g.bench_function(BenchmarkId::new("delete_middle", n), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(BATCH);
                let mut victims = Vec::with_capacity(batch as usize);
                while victims.len() < batch as usize {
                    let id = f.waiting();
                    f.ids.remove(&id);
                    victims.push(id);
                }
                let now = f.tick();
                let start = Instant::now();
                for id in &victims {
                    black_box(f.q.remove(id, EndReason::Deleted, now));
                }
                took += start.elapsed();
                for _ in 0..batch {
                    let id = f.fresh();
                    f.ids.insert(id);
                }
                left -= batch;
            }
            record("delete_middle", n, iters, took)
        })
    });

    // promote: delete the ACTIVE head, which promotes the next one in the same call.
    g.bench_function(BenchmarkId::new("promote", n), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let head = f.q.active().expect("non-empty").id;
                let now = f.tick();
                let start = Instant::now();
                let change = f.q.remove(&head, EndReason::Deleted, now);
                took += start.elapsed();
                debug_assert!(change.is_some_and(|c| c.promoted.is_some()));
                f.ids.remove(&head);
                let id = f.fresh();
                f.ids.insert(id);
            }
            record("promote", n, iters, took)
        })
    });

    // reap_none: the reaper's usual tick, nobody stale.
    g.bench_function(BenchmarkId::new("reap_none", n), |b| {
        b.iter_custom(|iters| {
            let now = f.tick();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f.q.reap(now));
            }
            record("reap_none", n, iters, start.elapsed())
        })
    });

    // reap_k: REAP_K sessions last seen at t0 (stale at t0 + 601 s) among n fresh ones;
    // one `reap` removes them all. Reported per reap call.
    g.bench_function(BenchmarkId::new("reap_k", n), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            let reap_at = f.t0 + Duration::from_secs(601);
            for _ in 0..iters {
                for _ in 0..REAP_K {
                    f.q.create(SessionId::random(), f.t0).expect("fresh id");
                }
                let start = Instant::now();
                let change = f.q.reap(reap_at);
                took += start.elapsed();
                debug_assert_eq!(change.ended.len(), REAP_K);
                black_box(change);
            }
            record("reap_k", n, iters, took)
        })
    });

    g.finish();
    drop(f);
}

fn print_table(bytes_per_session: &BTreeMap<usize, f64>) {
    println!();
    println!("## labgate::queue::Queue: median time per operation (ns)");
    println!();
    print!("| operation |");
    for n in SIZES {
        print!(" n = {n} |");
    }
    println!(" 10^6 / 10^3 |");
    print!("|---|");
    for _ in SIZES {
        print!("---:|");
    }
    println!("---:|");
    for op in OPS {
        let label = if op == "reap_k" {
            format!("reap_k (k = {REAP_K}, per call)")
        } else {
            op.to_string()
        };
        print!("| {label} |");
        for n in SIZES {
            match median_ns(op, n) {
                Some(ns) => print!(" {ns:.0} |"),
                None => print!(" - |"),
            }
        }
        match (median_ns(op, SIZES[0]), median_ns(op, SIZES[3])) {
            (Some(a), Some(b)) if a > 0.0 => println!(" {:.1}x |", b / a),
            _ => println!(" - |"),
        }
    }
    print!("| heap bytes per session |");
    for n in SIZES {
        match bytes_per_session.get(&n) {
            Some(b) => print!(" {b:.0} |"),
            None => print!(" - |"),
        }
    }
    println!(" |");
    println!();
    println!(
        "(1000x more sessions; a cost linear in n would grow ~1000x. Bytes per session are \
         live heap bytes after creating n sessions, divided by n; the hash map and the treap \
         arena grow by doubling, so the figure moves with how full they are.)"
    );
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASURE)
        .configure_from_args();
    let mut bytes = BTreeMap::new();
    for n in SIZES {
        bench_size(&mut c, n, &mut bytes);
    }
    c.final_summary();
    print_table(&bytes);
}
