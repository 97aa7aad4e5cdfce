//! A spinning team for batch-1 decoding. Between two products of a decode step rayon's idle
//! workers yield and go to sleep, so each of the ~200 products of a token pays a futex wake-up
//! and the yields on its critical path (perf: sleep, wake and yield ~15% of a Q8_0 token, with
//! products of a few µs each). Inside `with_team` the pool's other workers spin on one atomic
//! word instead, and `for_each` hands them the tasks of the current op by compare-and-swap.
//!
//! Only the ops that call `for_each` are shared; any other parallel op inside the team runs on
//! the calling thread alone (the helpers are busy spinning), which at batch 1 costs little.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;

/// `state` packs the op's epoch, its task count and the next unclaimed task.
const FIELD: u32 = 20;
const MASK: u64 = (1 << FIELD) - 1;
const EPOCH_SHIFT: u32 = 2 * FIELD;
/// The most rows (batch × positions) a forward or head runs on a team: the ops the team does
/// not share (norms, activations, softmax) grow with the rows and run on one thread there.
const TEAM_ROWS: usize = 64;
/// Spins of an idle helper before it starts yielding its core between checks.
const SPINS_BEFORE_YIELD: u32 = 1 << 16;

type Task = dyn Fn(usize) + Sync;

struct Team {
    /// epoch (24 bits) | tasks of the current op (20) | next unclaimed task (20).
    state: AtomicU64,
    /// The current op's task, valid while any of its tasks is unfinished. Written by the
    /// owner only when every task of the previous op is done, before `state` publishes it.
    task: UnsafeCell<*const Task>,
    done: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `task` is written by the owner alone, only while no helper holds a claim (every task
// of the previous op is done), and read by a helper only after a claim whose acquire synchronises
// with the release store that published it.
unsafe impl Sync for Team {}

thread_local! {
    /// The team this thread owns, while `with_team` runs on it.
    static OWNED: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            task: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Task),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// The next task of the current op, if any is left.
    fn claim(&self) -> Option<usize> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let (n, next) = ((s >> FIELD) & MASK, s & MASK);
            if next >= n {
                return None;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(next as usize),
                Err(now) => s = now,
            }
        }
    }

    /// Runs claimed task `i` (a panic is recorded, and re-raised by the owner).
    fn execute(&self, i: usize) {
        // SAFETY: a claim of the current op keeps its task alive until `done` counts it.
        let task = unsafe { &**self.task.get() };
        if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
            self.panicked.store(true, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Release);
    }

    /// The owner's side of an op: publish, work alongside the helpers, wait for the last task.
    fn run<'a>(&self, n: usize, task: &'a (dyn Fn(usize) + Sync + 'a)) {
        // SAFETY (lifetime): `task` is only called through this pointer until `done` reaches n,
        // and this function returns only after that.
        let erased: *const Task =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Task>(task) };
        unsafe { *self.task.get() = erased };
        self.done.store(0, Ordering::Relaxed);
        let epoch = ((self.state.load(Ordering::Relaxed) >> EPOCH_SHIFT) + 1) & 0xFF_FFFF;
        self.state.store(
            (epoch << EPOCH_SHIFT) | ((n as u64) << FIELD),
            Ordering::Release,
        );
        // A task that itself calls `for_each` (a head's products inside attention) must not
        // republish over this op: on this thread it runs without the team meanwhile.
        let owned = OWNED.with(|o| o.replace(std::ptr::null()));
        while let Some(i) = self.claim() {
            self.execute(i);
        }
        OWNED.with(|o| o.set(owned));
        while self.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of the decode team panicked");
        }
    }

    /// A helper's side: take tasks as they appear until the owner stops the team.
    fn help(&self) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            match self.claim() {
                Some(i) => {
                    self.execute(i);
                    idle = 0;
                }
                None if idle < SPINS_BEFORE_YIELD => {
                    idle += 1;
                    std::hint::spin_loop();
                }
                None => std::thread::yield_now(),
            }
        }
    }
}

/// Clears the owner's mark and releases the helpers, also when `f` unwinds.
struct Owned<'a>(&'a Team);

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        OWNED.with(|o| o.set(std::ptr::null()));
        self.0.stop.store(true, Ordering::Release);
    }
}

/// Runs `f` on a worker of rayon's pool with the pool's other workers spinning as a team for
/// the `for_each` calls inside it: one decode step. Nested calls run `f` in the outer team.
pub fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    super::cpu::on_pool(|| {
        let threads = rayon::current_num_threads();
        if threads < 2 || !OWNED.with(|o| o.get().is_null()) {
            return f();
        }
        let team = Team::new();
        rayon::scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| team.help());
            }
            OWNED.with(|o| o.set(&team));
            let _owned = Owned(&team);
            f()
        })
    })
}

/// `f` on a team when it works on the CPU over at most `TEAM_ROWS` rows (a decode token, a
/// dual-cache window, a few head rows); otherwise where it is called (a GPU stream stays on its
/// own thread; a full canvas keeps rayon for the ops the team does not share).
pub fn with_team_if_small<R: Send>(
    device: &candle_core::Device,
    rows: usize,
    f: impl FnOnce() -> R + Send,
) -> R {
    match device.is_cpu() && rows <= TEAM_ROWS {
        true => with_team(f),
        false => f(),
    }
}

/// `task(i)` for every i < n, in parallel: on the current thread's team inside `with_team`,
/// otherwise on rayon's pool.
pub fn for_each(n: usize, task: impl Fn(usize) + Sync) {
    let team = OWNED.with(Cell::get);
    if team.is_null() || n < 2 {
        (0..n).into_par_iter().for_each(&task);
    } else {
        assert!(n as u64 <= MASK, "{n} tasks in one op");
        // SAFETY: the mark is set only while `with_team`'s scope, which owns the team, runs.
        unsafe { &*team }.run(n, &task);
    }
}

/// `task(i)` for every i < n, in parallel as `for_each`, the results in order.
pub fn map<R: Send>(n: usize, task: impl Fn(usize) -> R + Sync) -> Vec<R> {
    if OWNED.with(Cell::get).is_null() {
        return (0..n).into_par_iter().map(&task).collect();
    }
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let shared = SharedMut::new(&mut out);
    // SAFETY: task i writes slot i alone.
    for_each(n, |i| unsafe { shared.part(i, 1)[0] = Some(task(i)) });
    out.into_iter()
        .map(|r| r.expect("every task ran"))
        .collect()
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(*mut T);

// SAFETY: users write disjoint ranges only (see `part`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(v: &mut [T]) -> Self {
        Self(v.as_mut_ptr())
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// The range lies within the slice given to `new`, which outlives the use, and no two
    /// parts in use at once overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// The address of element `i`, for writes through strides that `part` cannot express
    /// (the same rules apply to what is written through it). A method, so that closures
    /// capture the whole wrapper rather than its raw pointer.
    pub fn ptr(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Every task runs exactly once, inside and outside a team, over many consecutive ops
    /// (the epoch changes under helpers that spin between them).
    #[test]
    fn every_task_runs_once_per_op() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for team in [false, true] {
            let counts: Vec<AtomicUsize> = (0..97).map(|_| AtomicUsize::new(0)).collect();
            let ops = || {
                for op in 0..500 {
                    let n = 1 + op % 97;
                    for_each(n, |i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            };
            pool.install(|| if team { with_team(ops) } else { ops() });
            let expected: Vec<usize> = (0..97)
                .map(|i| (0..500).filter(|op| i < 1 + op % 97).count())
                .collect();
            let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(got, expected, "team {team}");
        }
    }

    /// Writes through `SharedMut` from team tasks land where they should; a nested team and a
    /// one-thread pool run in place.
    #[test]
    fn disjoint_parts_and_nesting() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0usize; 1000];
            pool.install(|| {
                with_team(|| {
                    with_team(|| {
                        let shared = SharedMut::new(&mut out);
                        for_each(10, |c| {
                            // SAFETY: task c writes its own 100 elements.
                            let part = unsafe { shared.part(c * 100, 100) };
                            for (j, v) in part.iter_mut().enumerate() {
                                *v = c * 100 + j;
                            }
                        });
                    })
                })
            });
            assert!(
                out.iter().enumerate().all(|(i, &v)| i == v),
                "{threads} threads"
            );
        }
    }

    /// A task that calls `for_each` itself runs its inner tasks in full, and the outer op too.
    #[test]
    fn nested_ops_inside_a_task() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let total = AtomicUsize::new(0);
        pool.install(|| {
            with_team(|| {
                for _ in 0..50 {
                    for_each(8, |_| {
                        for_each(16, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        })
                    });
                }
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 50 * 8 * 16);
    }

    /// `map` keeps the order of its results in and out of a team.
    #[test]
    fn map_keeps_order() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let squares: Vec<usize> = (0..300).map(|i| i * i).collect();
        assert_eq!(pool.install(|| map(300, |i| i * i)), squares);
        assert_eq!(pool.install(|| with_team(|| map(300, |i| i * i))), squares);
    }

    /// A panicking task reaches the caller instead of hanging the team.
    #[test]
    fn a_task_panic_reaches_the_owner() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                with_team(|| {
                    for_each(64, |i| assert!(i != 40, "task 40"));
                })
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        assert_eq!(pool.install(|| with_team(|| 7)), 7);
    }
}
