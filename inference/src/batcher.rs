//! Dynamic batching. Handlers tokenize and submit token ids to a bounded queue; one batching
//! thread per model forms batches bounded by size, tokens and a maximum wait, runs the encoder
//! off the async runtime and answers each caller on its own channel. The encoder packs a batch
//! without padding, so texts of any lengths share a batch at no extra cost and the batch runs
//! as one pass: the largest matrix products the traffic allows.
//!
//! The wait timer (Triton's `max_queue_delay`) only applies when the previous batch held more
//! than one text: a lone client gains nothing from waiting, a busy server gains full batches.
//!
//! Limits follow the device: a GPU pass of a thousand short texts costs little more than one
//! of thirty, so GPU batches are larger, by count and by tokens. A backend with several lanes
//! (the CUDA backend has two streams) gets as many batching threads, taking turns at the queue:
//! while one batch computes, the next one is formed and its copies overlap that compute.
use crate::error::RequestError;
use crate::metrics::Metrics;
use nudge_model::{NluModel, NluOutput};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How the batcher forms batches.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    /// Most texts in one encoder batch (unset: 32 on a CPU, 1,024 on a GPU).
    pub max_batch_size: Option<usize>,
    /// Most tokens (all texts' together) in one encoder pass (unset: 8,192 on a CPU, 32,768
    /// on a GPU).
    pub max_batch_tokens: Option<usize>,
    /// Longest a text waits for company once the server is busy, in microseconds.
    pub max_wait_us: u64,
    /// Texts that may wait in the queue; beyond it calls get RESOURCE_EXHAUSTED (unset: 1,024
    /// on a CPU, 8,192 on a GPU).
    pub queue_capacity: Option<usize>,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: None,
            max_batch_tokens: None,
            max_wait_us: 2000,
            queue_capacity: None,
        }
    }
}

/// A [`BatcherConfig`] with the device's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most texts per batch.
    pub max_batch_size: usize,
    /// Most tokens per batch.
    pub max_batch_tokens: usize,
    /// Longest wait for company, microseconds.
    pub max_wait_us: u64,
    /// Queue capacity, texts.
    pub queue_capacity: usize,
}

impl BatcherConfig {
    /// The limits on a GPU (`gpu`) or a CPU.
    pub fn limits(&self, gpu: bool) -> BatchLimits {
        let (size, tokens, queue) = if gpu { (1024, 32_768, 8192) } else { (32, 8192, 1024) };
        BatchLimits {
            max_batch_size: self.max_batch_size.unwrap_or(size),
            max_batch_tokens: self.max_batch_tokens.unwrap_or(tokens),
            max_wait_us: self.max_wait_us,
            queue_capacity: self.queue_capacity.unwrap_or(queue),
        }
    }
}

/// What a text's caller gets back.
#[derive(Debug)]
pub struct Answer {
    /// Encoder and head outputs for the text.
    pub output: NluOutput,
    /// Time spent waiting in the queue.
    pub queue_time: Duration,
    /// Time of the batch's encoder pass.
    pub compute_time: Duration,
    /// Texts in that batch.
    pub batch_size: usize,
    /// The device that ran it (`cpu`, `cuda:0`).
    pub device: Arc<str>,
}

struct Job {
    ids: Vec<u32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Answer, RequestError>>,
}

/// A model and its batching thread. Dropping the last handle lets the thread drain and stop.
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    model: Arc<NluModel>,
    metrics: Metrics,
}

impl Batcher {
    /// Starts the batching threads for `model`: one per lane of its backend.
    pub fn spawn(model: Arc<NluModel>, config: BatcherConfig, metrics: Metrics) -> std::io::Result<Self> {
        let device: Arc<str> = model.device().into();
        let limits = config.limits(device.as_ref() != "cpu");
        let (tx, rx) = sync_channel(limits.queue_capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        for lane in 0..model.lanes().max(1) {
            let worker = Worker {
                rx: rx.clone(),
                model: model.clone(),
                limits,
                device: device.clone(),
                depth: depth.clone(),
                metrics: metrics.clone(),
            };
            std::thread::Builder::new()
                .name(format!("batcher-{}-{lane}", model.name()))
                .spawn(move || {
                    worker.run();
                    // The worker and its model handle are gone: if that was the last handle on
                    // a replaced model, its memory goes back to the system now.
                    crate::memory::release_freed();
                })?;
        }
        Ok(Self {
            tx,
            depth,
            capacity: limits.queue_capacity.max(1),
            model,
            metrics,
        })
    }

    /// The model this batcher runs.
    pub fn model(&self) -> &Arc<NluModel> {
        &self.model
    }

    /// Queues texts (all or none). Each receiver answers once its batch has run; dropping a
    /// receiver (a cancelled call) drops its text before compute.
    pub fn submit(
        &self,
        texts: Vec<Vec<u32>>,
    ) -> Result<Vec<oneshot::Receiver<Result<Answer, RequestError>>>, RequestError> {
        let n = texts.len();
        let before = self.depth.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity {
            self.depth.fetch_sub(n, Ordering::SeqCst);
            return Err(RequestError::QueueFull(before));
        }
        let now = Instant::now();
        let mut out = Vec::with_capacity(n);
        for (i, ids) in texts.into_iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            match self.tx.try_send(Job {
                ids,
                enqueued: now,
                reply,
            }) {
                Ok(()) => out.push(rx),
                Err(e) => {
                    // Unreached while `depth` bounds the channel; the jobs already queued are
                    // dropped with their receivers, so nothing half-answered remains.
                    self.depth.fetch_sub(n - i, Ordering::SeqCst);
                    return Err(match e {
                        TrySendError::Full(_) => RequestError::QueueFull(before),
                        TrySendError::Disconnected(_) => RequestError::ShuttingDown,
                    });
                }
            }
        }
        self.metrics
            .queue_depth
            .with_label_values(&[self.model.name()])
            .set(self.depth.load(Ordering::Relaxed) as i64);
        Ok(out)
    }
}

struct Worker {
    /// Shared by the model's workers; held while forming a batch, released to compute it.
    rx: Arc<Mutex<Receiver<Job>>>,
    model: Arc<NluModel>,
    limits: BatchLimits,
    device: Arc<str>,
    depth: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Worker {
    fn take(&self, job: Job) -> Option<Job> {
        self.depth.fetch_sub(1, Ordering::SeqCst);
        if job.reply.is_closed() {
            self.metrics.dropped.with_label_values(&[self.model.name()]).inc();
            return None;
        }
        Some(job)
    }

    fn run(self) {
        let mut carry: Option<Job> = None;
        let mut last_batch = 1usize;
        loop {
            // A poisoned lock means another worker panicked while forming a batch; the
            // receiver itself is intact, so keep serving with it.
            let rx = self.rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => match self.take(j) {
                        Some(j) => j,
                        None => continue,
                    },
                    Err(_) => return, // every sender gone: the server is shutting down
                },
            };
            let deadline = first.enqueued
                + if last_batch > 1 {
                    Duration::from_micros(self.limits.max_wait_us)
                } else {
                    Duration::ZERO
                };
            let mut tokens = first.ids.len();
            let mut batch = vec![first];
            while batch.len() < self.limits.max_batch_size {
                let next = match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(j) => j,
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        }
                    }
                };
                let Some(job) = self.take(next) else { continue };
                if tokens + job.ids.len() > self.limits.max_batch_tokens {
                    carry = Some(job);
                    break;
                }
                tokens += job.ids.len();
                batch.push(job);
            }
            self.metrics
                .queue_depth
                .with_label_values(&[self.model.name()])
                .set(self.depth.load(Ordering::Relaxed) as i64);
            last_batch = batch.len();
            drop(rx);
            self.execute(batch);
        }
    }

    fn execute(&self, batch: Vec<Job>) {
        let name = self.model.name();
        let start = Instant::now();
        let n = batch.len();
        let real_tokens: usize = batch.iter().map(|j| j.ids.len()).sum();
        let seqs: Vec<&[u32]> = batch.iter().map(|j| j.ids.as_slice()).collect();
        let (outputs, failure) = match self.model.run(&seqs) {
            Ok(o) => (o, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let compute_time = start.elapsed();
        self.metrics.batch_size.with_label_values(&[name]).observe(n as f64);
        self.metrics
            .encoder_batches
            .with_label_values(&[name, &self.device])
            .inc();
        self.metrics
            .batch_tokens
            .with_label_values(&[name])
            .observe(real_tokens as f64);
        self.metrics
            .compute_seconds
            .with_label_values(&[name])
            .observe(compute_time.as_secs_f64());
        if let Some(err) = failure {
            tracing::error!(model = name, error = %err, "encoder pass failed");
            for job in batch {
                let _ = job.reply.send(Err(RequestError::Internal(err.clone())));
            }
            return;
        }
        for (job, output) in batch.into_iter().zip(outputs) {
            let queue_time = start.duration_since(job.enqueued);
            self.metrics
                .queue_seconds
                .with_label_values(&[name])
                .observe(queue_time.as_secs_f64());
            let _ = job.reply.send(Ok(Answer {
                output,
                queue_time,
                compute_time,
                batch_size: n,
                device: self.device.clone(),
            }));
        }
    }
}
