//! A span's compute on its own thread, shared by many sessions: continuous batching.
//!
//! [`EngineWorker::spawn`] moves a [`Compute`] onto a dedicated thread. Callers send it
//! jobs through a bounded channel and await a oneshot each. The thread blocks for one
//! job, then takes every job already waiting and runs them in arrival order, except
//! that consecutive steps go to the engine together in one `step_batch`: sessions that
//! step at the same moment share decodes, and a step that arrives while a batch runs
//! joins the next one. A step's error goes to that step alone.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Compute, EngineError, LoadedSpan, SessionConfig, SessionId, StepInput, StepOutput, StepRequest};

/// Jobs queued before senders wait.
const QUEUE: usize = 256;

enum Job {
    Open(SessionConfig, oneshot::Sender<Result<SessionId, EngineError>>),
    Step(StepRequest, oneshot::Sender<Result<StepOutput, EngineError>>),
    Close(SessionId, oneshot::Sender<Result<(), EngineError>>),
    /// Keep this many positions; rewind (drafts rejected) or truncate (a new generation).
    Truncate(SessionId, u32, bool, oneshot::Sender<Result<(), EngineError>>),
    Stats(oneshot::Sender<WorkerStats>),
}

/// Counters of a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Steps run.
    pub steps: u64,
    /// Engine batches they ran in.
    pub batches: u64,
    /// Sessions open now.
    pub sessions: usize,
}

/// A cloneable handle to a compute thread.
#[derive(Clone)]
pub struct EngineWorker {
    /// Declared before `_thread`: the last handle closes the queue, then joins.
    tx: mpsc::Sender<Job>,
    _thread: Arc<WorkerThread>,
    span: LoadedSpan,
    n_embd: u32,
    max_sessions: u32,
    ctx_per_session: u32,
}

impl EngineWorker {
    /// Moves `compute` onto its own thread. When every handle is dropped the thread runs
    /// the jobs already queued and ends, and the last drop waits for that.
    pub fn spawn(compute: Box<dyn Compute>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (span, n_embd, max_sessions) = (compute.span(), compute.n_embd(), compute.max_sessions());
        let ctx_per_session = compute.ctx_per_session();
        let handle = std::thread::Builder::new().name("nak-engine".into()).spawn(move || run(compute, rx))?;
        let thread = Arc::new(WorkerThread(Some(handle)));
        Ok(Self { tx, _thread: thread, span, n_embd, max_sessions, ctx_per_session })
    }

    /// What the span holds.
    pub fn span(&self) -> LoadedSpan {
        self.span
    }

    /// Hidden-state width.
    pub fn n_embd(&self) -> u32 {
        self.n_embd
    }

    /// Sessions the engine may hold at once.
    pub fn max_sessions(&self) -> u32 {
        self.max_sessions
    }

    /// Context length of each session.
    pub fn ctx_per_session(&self) -> u32 {
        self.ctx_per_session
    }

    /// Queues a job and returns the receiver of its reply.
    async fn send<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<oneshot::Receiver<T>, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(job(tx)).await.map_err(|_| EngineError::WorkerStopped)?;
        Ok(rx)
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, EngineError> {
        self.send(job).await?.await.map_err(|_| EngineError::WorkerStopped)
    }

    /// Opens a session.
    pub async fn open_session(&self, cfg: SessionConfig) -> Result<SessionId, EngineError> {
        self.ask(|tx| Job::Open(cfg, tx)).await?
    }

    /// Runs one step, batched with whatever other sessions step meanwhile.
    pub async fn step(&self, session: SessionId, input: StepInput) -> Result<StepOutput, EngineError> {
        self.step_request(StepRequest::new(session, input)).await
    }

    /// The same for a step with row tokens.
    pub async fn step_request(&self, request: StepRequest) -> Result<StepOutput, EngineError> {
        self.ask(|tx| Job::Step(request, tx)).await?
    }

    /// Queues a step and returns at once with the receiver of its result: the step runs
    /// in order with the jobs sent before and after it, while the caller goes on.
    pub async fn queue_step(&self, request: StepRequest) -> Result<StepReceiver, EngineError> {
        self.send(|tx| Job::Step(request, tx)).await
    }

    /// Closes a session.
    pub async fn close_session(&self, session: SessionId) -> Result<(), EngineError> {
        self.ask(|tx| Job::Close(session, tx)).await?
    }

    /// Closes a session without waiting (from a `Drop`): queued behind the jobs sent
    /// before; lost only when the queue is full or the worker stopped, which the log says.
    pub fn close_soon(&self, session: SessionId) {
        let (tx, _) = oneshot::channel();
        if self.tx.try_send(Job::Close(session, tx)).is_err() {
            tracing::warn!(session, "could not queue the closing of an engine session");
        }
    }

    /// Keeps the first `n_keep` positions of a session's cache.
    pub async fn truncate(&self, session: SessionId, n_keep: u32) -> Result<(), EngineError> {
        self.ask(|tx| Job::Truncate(session, n_keep, false, tx)).await?
    }

    /// Drops rejected drafts from `n_keep` on ([`super::SpanEngine::rewind`]).
    pub async fn rewind(&self, session: SessionId, n_keep: u32) -> Result<(), EngineError> {
        self.ask(|tx| Job::Truncate(session, n_keep, true, tx)).await?
    }

    /// Counters.
    pub async fn stats(&self) -> Result<WorkerStats, EngineError> {
        self.ask(Job::Stats).await
    }
}

/// The compute thread, joined when the last handle drops: a step still running when the
/// process exits would compute on a backend that the exit is tearing down.
struct WorkerThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WorkerThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::warn!("an engine thread panicked");
            }
        }
    }
}

type StepReply = oneshot::Sender<Result<StepOutput, EngineError>>;

/// The result of a step queued with [`EngineWorker::queue_step`].
pub type StepReceiver = oneshot::Receiver<Result<StepOutput, EngineError>>;

fn run(mut compute: Box<dyn Compute>, mut rx: mpsc::Receiver<Job>) {
    let mut stats = WorkerStats::default();
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        let mut batch: Vec<(StepRequest, StepReply)> = Vec::new();
        let mut in_batch = HashSet::new();
        for job in jobs {
            // A step of a session already in the batch must wait for that one's result.
            let flush_first = match &job {
                Job::Step(r, _) => in_batch.contains(&r.session),
                _ => true,
            };
            if flush_first && !batch.is_empty() {
                run_batch(compute.as_mut(), std::mem::take(&mut batch), &mut stats);
                in_batch.clear();
            }
            match job {
                Job::Step(request, reply) => {
                    in_batch.insert(request.session);
                    batch.push((request, reply));
                }
                Job::Open(cfg, reply) => {
                    let _ = reply.send(compute.open_session(cfg));
                }
                Job::Close(session, reply) => {
                    let _ = reply.send(compute.close_session(session));
                }
                Job::Truncate(session, n_keep, rewind, reply) => {
                    let kept = if rewind { compute.rewind(session, n_keep) } else { compute.truncate(session, n_keep) };
                    let _ = reply.send(kept);
                }
                Job::Stats(reply) => {
                    let _ = reply.send(WorkerStats { sessions: compute.n_sessions(), ..stats });
                }
            }
        }
        if !batch.is_empty() {
            run_batch(compute.as_mut(), batch, &mut stats);
        }
    }
}

fn run_batch(compute: &mut dyn Compute, batch: Vec<(StepRequest, StepReply)>, stats: &mut WorkerStats) {
    let (requests, replies): (Vec<StepRequest>, Vec<StepReply>) = batch.into_iter().unzip();
    stats.steps += requests.len() as u64;
    stats.batches += 1;
    let results = compute.step_batch(requests);
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}
