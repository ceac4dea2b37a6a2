//! The budgeted policy: the model runs on its own thread and only ever on the newest frame. While it is busy,
//! new frames are not queued for it (they are "skipped stale") and are composited with the latest mask
//! ("reused"), so a slow model lowers the mask rate, never the output rate, and latency never builds up.
//!
//! ```text
//! frame ──▶ [worker idle and frame % every == 0?] ──yes──▶ worker: Matter (preprocess → infer → mask steps) ──▶ mask
//!   │                                                                                                          │
//!   └──▶ wait for this frame's mask until the budget runs out, else use the latest one ◀──────────────────────┘
//! ```
//!
//! The worker's [`Matter`] and the caller's [`super::Compositor`] are on the same side (host or device); on the
//! device the mask stays in GPU memory and the compositor, on its own stream, reads it there. A frame is RGBA in
//! host memory (the worker gets a copy) or, on the device, NV12 that the decoder left in CUDA memory (the worker
//! gets another reference to the same frame: both sides only read it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{FrameRef, Mask, Matter, MatteSettings, Picture, Placement};
use crate::error::{Error, Result};
use crate::infer::OnnxSegmenter;
use crate::live::stats::{LiveStats, Measure};
use crate::postprocess::PostprocessConfig;

pub enum ToWorker {
    Frame { idx: u64, picture: Picture, w: u32, h: u32 },
    Post(PostprocessConfig),
    Swap(Box<OnnxSegmenter>),
    /// The next frame does not follow the last one (a seek): temporal state starts afresh.
    Reset,
}

pub struct Done {
    pub idx: u64,
    pub mask: Result<Mask>,
}

/// Starts the model thread with `seg` on the stages at `place` (built on that thread: device IO binding is per
/// thread). Errors building them are returned here.
pub fn spawn_worker(
    seg: OnnxSegmenter,
    settings: &MatteSettings,
    place: Placement,
    stats: Arc<LiveStats>,
) -> Result<(Sender<ToWorker>, Receiver<Done>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<ToWorker>();
    let (dtx, drx) = crossbeam_channel::unbounded::<Done>();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(1);
    let settings = settings.clone();
    let h = std::thread::Builder::new()
        .name("mf-model".into())
        .spawn(move || {
            let mut matter = match Matter::open(seg, &settings, &place) {
                Ok(m) => {
                    let _ = ready_tx.send(Ok(()));
                    m
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            work(&mut matter, settings.post, &rx, &dtx, &stats);
        })
        .map_err(|e| Error::io("starting the model thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((tx, drx, h)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::config("the model thread stopped while starting")),
    }
}

/// The model thread's loop: settings and model changes between frames, a mask for each frame handed in.
fn work(matter: &mut Matter, mut post: PostprocessConfig, rx: &Receiver<ToWorker>, dtx: &Sender<Done>, stats: &LiveStats) {
    for msg in rx.iter() {
        match msg {
            ToWorker::Post(p) => {
                if p != post {
                    post = p;
                    matter.set_post(post);
                }
            }
            ToWorker::Reset => matter.reset(post),
            ToWorker::Swap(s) => {
                matter.swap_model(*s, post);
                tracing::warn!("now matting with model {}", matter.segmenter().model().manifest.name);
            }
            ToWorker::Frame { idx, picture, w, h } => {
                let t0 = Instant::now();
                let mask = matter.mask(picture.pixels(), w, h).map(|(m, t)| {
                    stats.record(Measure::Infer, t.infer);
                    m
                });
                // A decoded frame goes back to the decoder as soon as neither side reads it.
                drop(picture);
                stats.record(Measure::Matte, t0.elapsed());
                stats.inferred.fetch_add(1, Ordering::Relaxed);
                if dtx.send(Done { idx, mask }).is_err() {
                    break;
                }
            }
        }
    }
}

/// How long a frame waits for the very first mask.
const FIRST_MASK_WAIT: Duration = Duration::from_secs(3);

/// Per-frame decisions of the compositing thread: when to hand a frame to the model, which mask to use.
pub struct MaskScheduler {
    tx: Sender<ToWorker>,
    rx: Receiver<Done>,
    busy: Option<u64>,
    latest: Option<Mask>,
    count: u64,
}

/// Which mask a frame got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskUse {
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
        self.latest = Some(d.mask?);
        Ok(())
    }

    /// Submits the frame to the model when it is free and the frame is due, then waits until `deadline` for
    /// its mask. Returns the mask to use (borrowed from the latest one) and how it was obtained.
    pub fn mask_for(
        &mut self,
        idx: u64,
        frame: FrameRef,
        w: u32,
        h: u32,
        every: u32,
        deadline: Instant,
        stats: &LiveStats,
    ) -> Result<(Option<&Mask>, MaskUse)> {
        while let Ok(d) = self.rx.try_recv() {
            self.take(d)?;
        }
        let due = self.count % every.max(1) as u64 == 0;
        self.count += 1;
        let mut submitted = false;
        if due {
            if self.busy.is_none() {
                self.tx
                    .send(ToWorker::Frame { idx, picture: frame.to_picture(), w, h })
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
            Some(m) if (m.width, m.height) == (w, h) => Ok((Some(m), if fresh { MaskUse::Fresh } else { MaskUse::Reused })),
            _ => Ok((None, MaskUse::None)),
        }
    }

    /// Forgets the latest mask (after a pause, the old one no longer matches the picture).
    pub fn forget(&mut self) {
        self.latest = None;
    }
}
