//! Frames of concurrent files in one inference call (`matteflow batch --batch N`): one thread owns a handle on
//! the shared session; each file's pipeline sends it a frame's tensor and waits for the mask. The thread
//! takes the first waiting frame, gathers more until it has N or a short window has passed (no waiting at
//! all when every connected file already sent one), runs them as one call, and answers each.
//!
//! ```text
//! file 1 ─ preprocess ─┐                                  ┌─▶ postprocess ─ file 1
//! file 2 ─ preprocess ─┼─▶ [mf-batch: gather ≤ N, ≤ window] ┼─▶ postprocess ─ file 2
//! file 3 ─ preprocess ─┘        one call [N, …]            └─▶ postprocess ─ file 3
//! ```
//!
//! A frame's mask does not depend on which other frames shared its call (see `batched.rs` on padding).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{LowResMask, OnnxSegmenter, Segmenter};
use crate::error::{Error, Result};
use crate::preprocess::ModelInput;

/// Frames per call when `--batch` is not given and the model runs on a GPU. On the CPU the default is 1:
/// ONNX Runtime already spreads one frame over all cores, and a batch of 4 measured no faster per frame
/// (docs/BENCHMARKS.md).
pub const DEFAULT_GPU_BATCH: usize = 4;

/// How long the batching thread waits for more frames once the first one arrived.
pub const BATCH_WINDOW: Duration = Duration::from_millis(3);

/// What the batching thread did: calls made, frames run, the largest call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub calls: u64,
    pub frames: u64,
    pub largest: usize,
}

type Reply = std::result::Result<(ModelInput, LowResMask), String>;

struct Request {
    input: ModelInput,
    mask: LowResMask,
    reply: Sender<Reply>,
}

/// The batching thread. Dropping it lets the thread end once every client is gone.
pub struct BatchServer {
    tx: Sender<Request>,
    clients: Arc<AtomicUsize>,
    stats: Arc<Mutex<BatchStats>>,
    size: usize,
}

/// A file's connection to the batching thread.
pub struct BatchClient {
    tx: Sender<Request>,
    clients: Arc<AtomicUsize>,
}

impl BatchServer {
    /// Starts the thread on `segmenter` (a handle on the shared session) with up to `requested` frames per
    /// call, fewer where the model cannot take them (said once, see [`OnnxSegmenter::configure_batch`]).
    pub fn start(mut segmenter: OnnxSegmenter, requested: usize, explicit: bool, window: Duration) -> Result<BatchServer> {
        let size = segmenter.configure_batch(requested, explicit);
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let clients = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Mutex::new(BatchStats::default()));
        {
            let (clients, stats) = (clients.clone(), stats.clone());
            std::thread::Builder::new()
                .name("mf-batch".into())
                .spawn(move || serve(segmenter, rx, size, window, &clients, &stats))
                .map_err(|e| Error::io("starting the batching thread", e))?;
        }
        Ok(BatchServer { tx, clients, stats, size })
    }

    /// Frames per call, at most.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn client(&self) -> BatchClient {
        self.clients.fetch_add(1, Ordering::SeqCst);
        BatchClient { tx: self.tx.clone(), clients: self.clients.clone() }
    }

    pub fn stats(&self) -> BatchStats {
        *self.stats.lock().unwrap()
    }
}

impl Clone for BatchClient {
    fn clone(&self) -> Self {
        self.clients.fetch_add(1, Ordering::SeqCst);
        BatchClient { tx: self.tx.clone(), clients: self.clients.clone() }
    }
}

impl Drop for BatchClient {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BatchClient {
    /// Runs one frame through the shared thread; blocks until its mask is back. `input` is lent to the thread
    /// (not copied) and returned.
    pub fn run(&self, input: &mut ModelInput, mask: &mut LowResMask) -> Result<()> {
        let stopped = || Error::Runtime("the batching inference thread has stopped (see the error before this one)".into());
        let (reply, answer) = crossbeam_channel::bounded(1);
        let req = Request { input: std::mem::take(input), mask: std::mem::take(mask), reply };
        self.tx.send(req).map_err(|_| stopped())?;
        match answer.recv() {
            Ok(Ok((i, m))) => {
                *input = i;
                *mask = m;
                Ok(())
            }
            Ok(Err(e)) => Err(Error::Runtime(e)),
            Err(_) => Err(stopped()),
        }
    }
}

fn serve(
    mut seg: OnnxSegmenter,
    rx: Receiver<Request>,
    size: usize,
    window: Duration,
    clients: &AtomicUsize,
    stats: &Mutex<BatchStats>,
) {
    while let Ok(first) = rx.recv() {
        let mut reqs = vec![first];
        let deadline = Instant::now() + window;
        // Each client waits for its answer, so with every client's frame in hand more waiting gains nothing.
        while reqs.len() < size && reqs.len() < clients.load(Ordering::SeqCst) {
            match rx.recv_deadline(deadline) {
                Ok(r) => reqs.push(r),
                Err(_) => break,
            }
        }
        // Frames of different sizes (dynamic-size models, files of other aspect ratios) go in separate calls.
        while !reqs.is_empty() {
            let shape = reqs[0].input.shape;
            let (mut group, rest): (Vec<Request>, Vec<Request>) = reqs.into_iter().partition(|r| r.input.shape == shape);
            reqs = rest;
            let mut masks: Vec<LowResMask> = group.iter_mut().map(|r| std::mem::take(&mut r.mask)).collect();
            let result = {
                let inputs: Vec<&ModelInput> = group.iter().map(|r| &r.input).collect();
                seg.run_batch(&inputs, &mut masks)
            };
            {
                let mut s = stats.lock().unwrap();
                s.calls += 1;
                s.frames += group.len() as u64;
                s.largest = s.largest.max(group.len());
            }
            for (r, m) in group.into_iter().zip(masks) {
                let answer = match &result {
                    Ok(()) => Ok((r.input, m)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = r.reply.send(answer);
            }
        }
    }
}
