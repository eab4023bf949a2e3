//! Memory per input of `FanOut::settle` against the hand-written
//! `FuturesUnordered` + `tokio::time::timeout` baseline, at 100 000 inputs
//! that yield once.
//!
//! A counting global allocator records the bytes allocated and the peak of
//! live bytes while one fan-out runs to completion (its result vector
//! included), on a current-thread runtime built and warmed up beforehand.
//! Each variant runs once to warm up, then `RUNS` times; the table shows the
//! median run. A `realloc` counts as freeing the old block and allocating
//! the new one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use fanout::FanOut;
use tokio::runtime::Runtime;
mod common;
use common::{TIMEOUT, futures_unordered_timeout, yield_once};

const N: usize = 100_000;
const RUNS: usize = 5;

// --- the counting allocator -------------------------------------------------

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `System`, counting every byte handed out and the peak of live bytes.
struct Counting;

fn record_alloc(size: usize) {
    ALLOCATED.fetch_add(size, Relaxed);
    ALLOCATIONS.fetch_add(1, Relaxed);
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counters are plain
// atomics and never allocate. (`unsafe` is needed for `GlobalAlloc`; the
// library itself stays `forbid(unsafe_code)`.)
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl's comment.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            record_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl's comment.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; see the impl's comment.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl's comment.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            record_alloc(new_size);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// --- the variants -----------------------------------------------------------

fn inputs() -> impl Iterator<Item = impl Future<Output = Result<u64, u64>>> {
    (0..N as u64).map(yield_once)
}

#[derive(Clone, Copy)]
struct Usage {
    peak: usize,
    allocated: usize,
    allocations: usize,
}

/// Runs `make()` to completion `RUNS` times after one warm-up run; the
/// median of each counter.
fn measure<Fut: Future>(rt: &Runtime, make: impl Fn() -> Fut) -> Usage {
    black_box(rt.block_on(make()));
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let live_before = LIVE.load(Relaxed);
        PEAK.store(live_before, Relaxed);
        let allocated_before = ALLOCATED.load(Relaxed);
        let allocations_before = ALLOCATIONS.load(Relaxed);
        let output = rt.block_on(make());
        let usage = Usage {
            peak: PEAK.load(Relaxed) - live_before,
            allocated: ALLOCATED.load(Relaxed) - allocated_before,
            allocations: ALLOCATIONS.load(Relaxed) - allocations_before,
        };
        drop(black_box(output));
        runs.push(usage);
    }
    let median = |key: fn(&Usage) -> usize| {
        let mut values: Vec<usize> = runs.iter().map(key).collect();
        values.sort_unstable();
        values[values.len() / 2]
    };
    Usage {
        peak: median(|u| u.peak),
        allocated: median(|u| u.allocated),
        allocations: median(|u| u.allocations),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let settle = FanOut::new().timeout(TIMEOUT);
    let settle_c64 = FanOut::new()
        .timeout(TIMEOUT)
        .concurrency(NonZeroUsize::new(64).expect("non-zero"));

    let baseline = measure(&rt, || futures_unordered_timeout(N, yield_once));
    let rows = [
        ("settle_timeout", measure(&rt, || settle.settle(inputs()))),
        (
            "settle_timeout_c64",
            measure(&rt, || settle_c64.settle(inputs())),
        ),
        ("futures_unordered_timeout", baseline),
    ];

    let per_input = |bytes: usize| bytes as f64 / N as f64;
    let ratio = |value: usize, base: usize| value as f64 / base as f64;
    println!("memory: n = {N} inputs that yield once, timeout {TIMEOUT:?}, median of {RUNS} runs");
    println!(
        "{:<27} {:>12} {:>7} {:>12} {:>7} {:>12}",
        "variant", "peak B/input", "ratio", "alloc B/input", "ratio", "allocs/input"
    );
    for (name, usage) in rows {
        println!(
            "{:<27} {:>12.1} {:>6.2}x {:>12.1} {:>6.2}x {:>12.2}",
            name,
            per_input(usage.peak),
            ratio(usage.peak, baseline.peak),
            per_input(usage.allocated),
            ratio(usage.allocated, baseline.allocated),
            usage.allocations as f64 / N as f64,
        );
    }
}
