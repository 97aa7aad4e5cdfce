//! The request queue and the one worker thread that owns the model. Handlers submit jobs (one
//! canvas each); the worker takes the oldest job and every waiting job that can share its
//! forwards, samples them as one batch, and reports steps and outcomes over each job's channel.
//!
//! Jobs share a batch when their canvases have one length and their options are equal, and only
//! when the result cannot depend on the batch: greedy choice with a rule that draws no random
//! numbers. Sampling jobs run alone on their own seed, so a seeded request answers the same under
//! any load.
//!
//! The queue is bounded: a submission that does not fit is refused at once (503). A job stops,
//! at the next step, when its client has gone (its cancel flag, or a closed channel) or its
//! deadline has passed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::mpsc::UnboundedSender;

use crate::model::LanguageModel;
use crate::rng::Rng;
use crate::sample::canvas::Canvas;
use crate::sample::denoise::Denoiser;
use crate::sample::events::StepEvent;
use crate::sample::options::DiffusionOptions;

/// The canvas after one denoising step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepUpdate {
    pub step: usize,
    pub total_steps: usize,
    pub tokens: Vec<u32>,
    pub masked: Vec<bool>,
    /// Since the job's batch started.
    pub elapsed: Duration,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        canvas: Canvas,
        steps: usize,
        /// Waiting in the queue, then sampling.
        queued: Duration,
        elapsed: Duration,
        /// Canvases in the batch it ran in.
        batch: usize,
    },
    Cancelled,
    TimedOut,
    Failed(String),
}

/// What the worker reports on a job's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Step(StepUpdate),
    Done(Outcome),
}

/// One canvas to sample.
pub struct Job {
    pub canvas: Canvas,
    pub opts: DiffusionOptions,
    pub seed: u64,
    pub deadline: Instant,
    /// Set when the client has gone.
    pub cancel: Arc<AtomicBool>,
    /// Whether steps are reported (streaming), or only the outcome.
    pub stream_steps: bool,
    /// The job's position in its request, sent with every event.
    pub index: usize,
    pub events: UnboundedSender<(usize, JobEvent)>,
    pub enqueued: Instant,
}

impl Job {
    fn finish(&self, outcome: Outcome) {
        // A closed channel means the client is gone; nobody is left to tell.
        let _ = self.events.send((self.index, JobEvent::Done(outcome)));
    }

    /// Why a job stopped before its canvas was full. The deadline comes first: a handler that
    /// gives up at the deadline also drops its channel.
    fn unfinished(&self) -> Outcome {
        if Instant::now() >= self.deadline {
            Outcome::TimedOut
        } else {
            Outcome::Cancelled
        }
    }

    fn abandoned(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

/// Jobs share a batch when their canvases are the same in any batch: no random draw decides
/// anything (`DiffusionOptions::deterministic`).
fn batchable(a: &Job, b: &Job) -> bool {
    a.canvas.len() == b.canvas.len() && a.opts == b.opts && a.opts.deterministic()
}

/// Counters shown by `GET /health`.
#[derive(Debug, Default)]
pub struct Stats {
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
    pub failed: AtomicU64,
    /// Submissions refused because the queue was full.
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    /// Canvases over all batches (÷ batches = mean batch size).
    pub batched: AtomicU64,
    pub forwards: AtomicU64,
    /// Canvases in the batch being sampled now.
    pub running: AtomicU64,
}

impl Stats {
    fn count(&self, o: &Outcome) {
        let c = match o {
            Outcome::Done { .. } => &self.completed,
            Outcome::Cancelled => &self.cancelled,
            Outcome::TimedOut => &self.timed_out,
            Outcome::Failed(_) => &self.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Waiting {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The bounded queue between the handlers and the worker.
pub struct Queue {
    waiting: Mutex<Waiting>,
    ready: Condvar,
    pub capacity: usize,
    pub max_batch: usize,
    pub stats: Stats,
}

/// The queue had no room for a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub waiting: usize,
}

impl Queue {
    pub fn new(capacity: usize, max_batch: usize) -> Self {
        Self {
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
            max_batch: max_batch.max(1),
            stats: Stats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // A panic while holding the lock cannot leave the deque half-updated; keep serving.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs waiting now.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues all of `jobs` or none of them.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), Full> {
        let mut w = self.lock();
        if w.closed || w.jobs.len() + jobs.len() > self.capacity {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Full {
                waiting: w.jobs.len(),
            });
        }
        w.jobs.extend(jobs);
        self.ready.notify_one();
        Ok(())
    }

    /// Stops the worker once the batch in hand is done; waiting jobs are failed.
    pub fn close(&self) {
        let mut w = self.lock();
        w.closed = true;
        for j in w.jobs.drain(..) {
            j.finish(Outcome::Failed("the server is shutting down".into()));
        }
        self.ready.notify_all();
    }

    /// The next batch: the oldest live job and the waiting jobs that can share its forwards.
    /// Blocks until there is one; `None` once the queue is closed.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut w = self.lock();
        loop {
            if w.closed {
                return None;
            }
            let now = Instant::now();
            // Jobs whose client left or whose time ran out while waiting never reach the model.
            let (live, dead): (VecDeque<Job>, VecDeque<Job>) = w
                .jobs
                .drain(..)
                .partition(|j| !j.abandoned() && j.deadline > now);
            w.jobs = live;
            for j in dead {
                let o = j.unfinished();
                self.stats.count(&o);
                j.finish(o);
            }
            if let Some(first) = w.jobs.pop_front() {
                let mut batch = vec![first];
                let mut k = 0;
                while k < w.jobs.len() && batch.len() < self.max_batch {
                    if batchable(&batch[0], &w.jobs[k]) {
                        batch.extend(w.jobs.remove(k));
                    } else {
                        k += 1;
                    }
                }
                return Some(batch);
            }
            w = self.ready.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The worker loop: runs until `close`. Owns nothing but borrows the model, so the caller
    /// decides which thread holds it.
    pub fn work(&self, model: &dyn LanguageModel, device: &Device) {
        while let Some(jobs) = self.next_batch() {
            self.stats
                .running
                .store(jobs.len() as u64, Ordering::Relaxed);
            self.run_batch(model, device, jobs);
            self.stats.running.store(0, Ordering::Relaxed);
        }
    }

    fn run_batch(&self, model: &dyn LanguageModel, device: &Device, jobs: Vec<Job>) {
        let start = Instant::now();
        let mut canvases: Vec<Canvas> = jobs.iter().map(|j| j.canvas.clone()).collect();
        let mut on_step = |e: &StepEvent| {
            let j = &jobs[e.canvas];
            if !j.stream_steps {
                return;
            }
            let update = StepUpdate {
                step: e.step,
                total_steps: e.total_steps,
                tokens: e.tokens.to_vec(),
                masked: e.masked.to_vec(),
                elapsed: start.elapsed(),
            };
            if j.events.send((j.index, JobEvent::Step(update))).is_err() {
                j.cancel.store(true, Ordering::Relaxed);
            }
        };
        let stop = |b: usize| jobs[b].abandoned() || Instant::now() >= jobs[b].deadline;
        let mut rng = Rng::seed(jobs[0].seed);
        // A bug in sampling must cost this batch, not the server.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let denoiser = Denoiser {
                model,
                device,
                opts: &jobs[0].opts,
            };
            denoiser.sample_until(&mut canvases, &mut rng, &mut on_step, &stop)
        }));
        let report = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.fail(&jobs, format!("sampling failed: {e}")),
            Err(_) => return self.fail(&jobs, "sampling panicked; see the server log".into()),
        };
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .batched
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        self.stats
            .forwards
            .fetch_add(report.forwards as u64, Ordering::Relaxed);
        for ((j, canvas), steps) in jobs.iter().zip(canvases).zip(report.steps) {
            let o = if canvas.num_masked() == 0 {
                Outcome::Done {
                    canvas,
                    steps,
                    queued: start - j.enqueued,
                    elapsed: start.elapsed(),
                    batch: jobs.len(),
                }
            } else {
                j.unfinished()
            };
            self.stats.count(&o);
            j.finish(o);
        }
    }

    fn fail(&self, jobs: &[Job], msg: String) {
        for j in jobs {
            let o = Outcome::Failed(msg.clone());
            self.stats.count(&o);
            j.finish(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::filter::TokenChoice;
    use crate::sample::head_rows::HeadRows;
    use crate::sample::options::Sampler;
    use crate::sample::unmask::Rule;

    fn job(len: usize, opts: DiffusionOptions) -> Job {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Job {
            canvas: Canvas::prefix(&[1], len, 7).unwrap(),
            opts,
            seed: 0,
            deadline: Instant::now() + Duration::from_secs(60),
            cancel: Arc::default(),
            stream_steps: false,
            index: 0,
            events: tx,
            enqueued: Instant::now(),
        }
    }

    #[test]
    fn only_deterministic_jobs_of_one_shape_share_a_batch() {
        let greedy = DiffusionOptions::reference(4);
        let sampled = DiffusionOptions {
            choice: TokenChoice::from_flags(0.8, None, None),
            ..greedy.clone()
        };
        let random_order = DiffusionOptions {
            sampler: Sampler::Ranked(Rule::Random),
            head_rows: HeadRows::Needed,
            ..greedy.clone()
        };
        assert!(batchable(&job(4, greedy.clone()), &job(4, greedy.clone())));
        assert!(!batchable(&job(4, greedy.clone()), &job(5, greedy.clone())));
        assert!(!batchable(&job(4, sampled.clone()), &job(4, sampled)));
        assert!(!batchable(
            &job(4, random_order.clone()),
            &job(4, random_order)
        ));
    }

    #[test]
    fn a_full_queue_refuses_whole_submissions() {
        let q = Queue::new(2, 4);
        let opts = DiffusionOptions::reference(2);
        assert!(q.submit(vec![job(3, opts.clone())]).is_ok());
        assert_eq!(
            q.submit(vec![job(3, opts.clone()), job(3, opts.clone())]),
            Err(Full { waiting: 1 })
        );
        assert_eq!(q.len(), 1);
        assert!(q.submit(vec![job(3, opts)]).is_ok());
        assert_eq!(q.stats.rejected.load(Ordering::Relaxed), 1);
    }
}
