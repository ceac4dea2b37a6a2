//! Matting within a budget. The model runs on its own thread and only ever on the newest frame: while it is
//! busy, new frames are not queued for it (they are "skipped stale") and are composited with the latest
//! mask ("reused"), so a slow model lowers the mask rate, never the output rate, and latency never builds up.
//!
//! ```text
//! frame ──▶ [worker idle and frame % every == 0?] ──yes──▶ worker: preprocess → infer → postprocess ──▶ alpha
//!   │                                                                                                    │
//!   └──▶ wait for this frame's alpha until the budget runs out, else use the latest one ◀────────────────┘
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::stats::{LiveStats, Measure};
use crate::config::BackgroundSpec;
use crate::error::{Error, Result};
use crate::infer::{LowResMask, OnnxSegmenter, Segmenter};
use crate::postprocess::{CpuPostprocess, Postprocess, PostprocessConfig};
use crate::preprocess::{CpuPreprocess, ModelInput, Preprocess};

/// What can change while running (through the control endpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    pub background: BackgroundSpec,
    pub post: PostprocessConfig,
    /// Frames pass through unmatted.
    pub paused: bool,
    /// Run the model on every Nth frame only (1 = every frame the model has time for).
    pub infer_every: u32,
    /// The model in use (a shipped or installed manifest name).
    pub model: String,
}

/// Settings shared between the control endpoint and the stage threads. Each change bumps a generation
/// counter so the stages pick it up between frames.
pub struct Controls {
    settings: Mutex<Settings>,
    generation: AtomicU64,
    pub(crate) worker: Mutex<Option<Sender<ToWorker>>>,
}

impl Controls {
    pub fn new(s: Settings) -> Arc<Self> {
        Arc::new(Controls { settings: Mutex::new(s), generation: AtomicU64::new(0), worker: Mutex::new(None) })
    }
    pub fn get(&self) -> Settings {
        self.settings.lock().unwrap().clone()
    }
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    /// Applies a change; the postprocess settings also go to the model thread.
    pub fn update(&self, f: impl FnOnce(&mut Settings)) {
        let post = {
            let mut s = self.settings.lock().unwrap();
            f(&mut s);
            s.post
        };
        if let Some(w) = self.worker.lock().unwrap().as_ref() {
            let _ = w.send(ToWorker::Post(post));
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
    /// Hands a newly loaded model to the model thread, which switches between frames.
    pub fn swap_model(&self, name: String, seg: OnnxSegmenter) -> Result<()> {
        let tx = self.worker.lock().unwrap().clone().ok_or_else(|| Error::config("not running"))?;
        tx.send(ToWorker::Swap(Box::new(seg))).map_err(|_| Error::config("the model thread has stopped"))?;
        self.update(|s| s.model = name);
        Ok(())
    }
}

pub(crate) enum ToWorker {
    Frame { idx: u64, data: Vec<u8>, w: u32, h: u32 },
    Post(PostprocessConfig),
    Swap(Box<OnnxSegmenter>),
}

pub(crate) struct Done {
    pub idx: u64,
    pub w: u32,
    pub h: u32,
    pub alpha: Result<Vec<u8>>,
}

/// Starts the model thread. `slow` adds a delay to every inference (to test behaviour under a slow model).
pub(crate) fn spawn_worker(
    segmenter: OnnxSegmenter,
    post: PostprocessConfig,
    slow: Duration,
    stats: Arc<LiveStats>,
) -> Result<(Sender<ToWorker>, Receiver<Done>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<ToWorker>();
    let (dtx, drx) = crossbeam_channel::unbounded::<Done>();
    let h = std::thread::Builder::new()
        .name("mf-model".into())
        .spawn(move || {
            let mut seg = segmenter;
            let mut post_cfg = post;
            let mut pre = CpuPreprocess::new(&seg.model().manifest);
            let mut postp = CpuPostprocess::for_manifest(post_cfg, &seg.model().manifest);
            let mut input = ModelInput::default();
            let mut mask = LowResMask::default();
            for msg in rx.iter() {
                match msg {
                    ToWorker::Post(p) => {
                        if p != post_cfg {
                            post_cfg = p;
                            postp = CpuPostprocess::for_manifest(post_cfg, &seg.model().manifest);
                        }
                    }
                    ToWorker::Swap(s) => {
                        seg = *s;
                        pre = CpuPreprocess::new(&seg.model().manifest);
                        postp = CpuPostprocess::for_manifest(post_cfg, &seg.model().manifest);
                        tracing::warn!("now matting with model {}", seg.model().manifest.name);
                    }
                    ToWorker::Frame { idx, data, w, h } => {
                        let t0 = Instant::now();
                        let r = (|| -> Result<Vec<u8>> {
                            pre.run(&data, w, h, &mut input)?;
                            let t1 = Instant::now();
                            seg.run(&input, &mut mask)?;
                            if !slow.is_zero() {
                                std::thread::sleep(slow);
                            }
                            stats.record(Measure::Infer, t1.elapsed());
                            let mut alpha = Vec::new();
                            postp.run(&data, &input, &mask, w, h, &mut alpha)?;
                            Ok(alpha)
                        })();
                        stats.record(Measure::Matte, t0.elapsed());
                        stats.inferred.fetch_add(1, Ordering::Relaxed);
                        if dtx.send(Done { idx, w, h, alpha: r }).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting the model thread", e))?;
    Ok((tx, drx, h))
}

/// How long a frame waits for the very first mask.
const FIRST_MASK_WAIT: Duration = Duration::from_secs(3);

/// Per-frame decisions of the compositing thread: when to hand a frame to the model, which mask to use.
pub(crate) struct MaskScheduler {
    tx: Sender<ToWorker>,
    rx: Receiver<Done>,
    busy: Option<u64>,
    latest: Option<(u32, u32, Vec<u8>)>,
    count: u64,
}

/// Which mask a frame got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskUse {
    /// The mask computed from this very frame.
    Fresh,
    /// An earlier frame's mask.
    Reused,
    /// No mask yet (start-up) or paused: the frame passes through unmatted.
    None,
}

impl MaskScheduler {
    pub fn new(tx: Sender<ToWorker>, rx: Receiver<Done>) -> Self {
        MaskScheduler { tx, rx, busy: None, latest: None, count: 0 }
    }

    fn take(&mut self, d: Done) -> Result<()> {
        if self.busy == Some(d.idx) {
            self.busy = None;
        }
        let a = d.alpha?;
        self.latest = Some((d.w, d.h, a));
        Ok(())
    }

    /// Submits the frame to the model when it is free and the frame is due, then waits until `deadline` for
    /// its mask. Returns the mask to use (borrowed from the latest one) and how it was obtained.
    pub fn mask_for(
        &mut self,
        idx: u64,
        frame: &[u8],
        w: u32,
        h: u32,
        every: u32,
        deadline: Instant,
        stats: &LiveStats,
    ) -> Result<(Option<&[u8]>, MaskUse)> {
        while let Ok(d) = self.rx.try_recv() {
            self.take(d)?;
        }
        let due = self.count % every.max(1) as u64 == 0;
        self.count += 1;
        let mut submitted = false;
        if due {
            if self.busy.is_none() {
                self.tx
                    .send(ToWorker::Frame { idx, data: frame.to_vec(), w, h })
                    .map_err(|_| Error::Runtime("the model thread stopped".into()))?;
                self.busy = Some(idx);
                submitted = true;
            } else {
                stats.skipped_stale.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut fresh = false;
        // With no mask at all yet (start-up, after a pause), wait for the first one rather than show the
        // unmatted picture: what is behind the user must not leak out.
        let deadline = if self.latest.is_none() { deadline.max(Instant::now() + FIRST_MASK_WAIT) } else { deadline };
        if submitted {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(d) => {
                        let mine = d.idx == idx;
                        self.take(d)?;
                        if mine {
                            fresh = true;
                            break;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                    Err(_) => return Err(Error::Runtime("the model thread stopped".into())),
                }
            }
        }
        match &self.latest {
            Some((mw, mh, a)) if (*mw, *mh) == (w, h) => Ok((Some(a.as_slice()), if fresh { MaskUse::Fresh } else { MaskUse::Reused })),
            _ => Ok((None, MaskUse::None)),
        }
    }

    /// Forgets the latest mask (after a pause, the old one no longer matches the picture).
    pub fn forget(&mut self) {
        self.latest = None;
    }
}
