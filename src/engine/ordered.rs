//! The ordered policy: every frame matted, in order, up to `batch` consecutive frames per inference call.
//! A call is two steps so that a caller can put them on two threads:
//! - [`Ordered::matte`] (the model's thread): preprocess, infer, mask steps — and on the device the composites
//!   too, queued on the GPU;
//! - [`Finisher::finish`]: on the host the composite, on the device the download of the finished frames (on a
//!   stream of its own, overlapping the next call's inference). Out come buffers for the encoder.

use std::time::{Duration, Instant};

use gstreamer as gst;

use super::{Matter, MatteSettings, Placement, StepTimes};
use crate::composite::{Composite, CpuComposite};
use crate::cuda::stages::{CallTimes, Downloader, Queued};
use crate::error::{Error, Result};
use crate::source::Frame;

/// The frames of one call, matted, waiting for [`Finisher::finish`].
pub enum Matted {
    /// Frames with their alphas, to composite on the host.
    Host(Vec<(Frame, Vec<u8>)>),
    /// Frames whose composites are queued on the GPU, to download.
    Device(Vec<Frame>, Queued),
}

pub struct Ordered {
    matter: Matter,
    batch: usize,
}

impl Ordered {
    /// `batch` as the model allows it (see `OnnxSegmenter::configure_batch`).
    pub fn new(matter: Matter, batch: usize) -> Self {
        Ordered { matter, batch: batch.max(1) }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// A new batch size (after a model change: ask the new model with `OnnxSegmenter::configure_batch`).
    pub fn set_batch(&mut self, batch: usize) {
        self.batch = batch.max(1);
    }

    /// With `on` (an encoder that takes 4:2:0 next), the device stages convert finished frames to I420 where their
    /// size allows it (as `videoconvert` would), and the finisher downloads those; the host's frames stay RGBA.
    pub fn set_i420(&mut self, on: bool) {
        if let Matter::Device(m) = &mut self.matter {
            m.stages.set_i420(on);
        }
    }

    pub fn matter_mut(&mut self) -> &mut Matter {
        &mut self.matter
    }

    /// Mattes up to `batch` consecutive frames. On the device, frames of one call share a size: a size change
    /// inside the group splits it (one [`Matted`] per part, in order).
    pub fn matte(&mut self, mut frames: Vec<Frame>) -> Result<(Vec<Matted>, StepTimes)> {
        if frames.len() > self.batch {
            return Err(Error::config(format!("{} frames for a batch of {}", frames.len(), self.batch)));
        }
        match &mut self.matter {
            Matter::Host(m) => {
                let views: Vec<(&[u8], u32, u32)> = frames.iter().map(|f| (&f.data[..], f.width, f.height)).collect();
                let (alphas, t) = m.alphas(&views)?;
                drop(views);
                Ok((vec![Matted::Host(frames.into_iter().zip(alphas).collect())], t))
            }
            Matter::Device(m) => {
                let mut out = Vec::new();
                let mut t = StepTimes::default();
                while !frames.is_empty() {
                    let size = (frames[0].width, frames[0].height);
                    let split = frames.iter().position(|f| (f.width, f.height) != size).unwrap_or(frames.len());
                    let rest = frames.split_off(split);
                    let mut group = std::mem::replace(&mut frames, rest);
                    let (gt, queued) = m.stages.submit(&mut m.seg, &mut group, self.batch)?;
                    t.preprocess += gt.preprocess;
                    t.infer += gt.infer;
                    t.postprocess += gt.post_composite;
                    out.push(Matted::Device(group, queued));
                }
                Ok((out, t))
            }
        }
    }
}

/// The second step of a call: composite (host) or download (device), then hand out buffers.
pub enum Finisher {
    Host(CpuComposite),
    /// The downloads, and the model's GPU time so far.
    Device(Downloader, ModelTime),
}

/// The model's time on the GPU over the device calls after the first (whose run holds the provider's warm-up),
/// and their frames; and the same over the calls whose run was queued behind work the GPU had not finished
/// (`behind`: timed with no wait for the host inside). The other calls found the GPU idle, waiting for the host.
/// Over the same calls, the rest of the stages' stream: the preprocessing, the postprocessing + composites, and
/// the gaps between one call's composites and the next call's preprocessing.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ModelTime {
    pub calls: u64,
    pub frames: u64,
    pub time: Duration,
    pub behind_calls: u64,
    pub behind_frames: u64,
    pub behind_time: Duration,
    pub pre_time: Duration,
    pub post_time: Duration,
    pub gap_time: Duration,
}

impl ModelTime {
    /// Adds one call's times for `frames` frames (the first call is counted, not timed).
    fn add(&mut self, run: Option<CallTimes>, frames: u64) {
        if let Some(r) = run.filter(|_| self.calls > 0) {
            (self.time, self.frames) = (self.time + r.model, self.frames + frames);
            if r.behind {
                (self.behind_time, self.behind_frames, self.behind_calls) = (self.behind_time + r.model, self.behind_frames + frames, self.behind_calls + 1);
            }
            (self.pre_time, self.post_time) = (self.pre_time + r.pre, self.post_time + r.post);
            self.gap_time += r.gap.unwrap_or_default();
        }
        self.calls += 1;
    }
}

impl Finisher {
    /// The finisher for `ordered`'s stages; on the device, downloads get a stream of their own, and frames the
    /// stages converted to I420 ([`Ordered::set_i420`]) go down so, in buffers that carry a `VideoMeta` saying so.
    pub fn open(s: &MatteSettings, place: &Placement) -> Result<Finisher> {
        Ok(match place {
            Placement::Host => Finisher::Host(super::host_compositor(s)?),
            Placement::Device(gpu) => Finisher::Device(Downloader::new(gpu)?, ModelTime::default()),
        })
    }

    /// The finished frames as buffers (timestamps kept), in order, and the time it took.
    pub fn finish(&mut self, m: Matted) -> Result<(Vec<gst::Buffer>, Duration)> {
        let t = Instant::now();
        let frames = match (self, m) {
            (Finisher::Host(c), Matted::Host(pairs)) => {
                let mut out = Vec::with_capacity(pairs.len());
                for (mut f, alpha) in pairs {
                    let (w, h) = (f.width, f.height);
                    let wider = c.run(&mut f.data, w, h, &alpha)?;
                    out.push(to_buffer(f, wider));
                }
                out
            }
            (Finisher::Device(down, model), Matted::Device(mut frames, queued)) => {
                let (_, gpu, i420) = queued.download(down, &mut frames)?;
                model.add(gpu, frames.len() as u64);
                let mut out = Vec::with_capacity(frames.len());
                for f in frames {
                    let mut b = to_buffer(f, None);
                    if let Some(l) = &i420 {
                        l.tag(b.make_mut()).map_err(|e| Error::Gst(format!("an I420 frame: {e}")))?;
                    }
                    out.push(b);
                }
                out
            }
            _ => return Err(Error::config("frames matted on one side (CPU/GPU) finished on the other")),
        };
        Ok((frames, t.elapsed()))
    }

    /// The model's time on the GPU so far (device stages; zero on the host).
    pub fn model_time(&self) -> ModelTime {
        match self {
            Finisher::Device(_, m) => *m,
            Finisher::Host(_) => ModelTime::default(),
        }
    }
}

/// The finished frame as a buffer with the input's timestamps (`wider` replaces the pixels for side-by-side).
pub(crate) fn to_buffer(f: Frame, wider: Option<Vec<u8>>) -> gst::Buffer {
    let (pts, dur) = (f.pts, f.duration);
    let mut buffer = match wider {
        Some(v) => gst::Buffer::from_mut_slice(v),
        None => f.data.into_buffer(),
    };
    let b = buffer.make_mut();
    b.set_pts(pts);
    b.set_dts(gst::ClockTime::NONE);
    b.set_duration(dur);
    buffer
}

#[cfg(test)]
mod tests {
    use super::ModelTime;
    use crate::cuda::stages::CallTimes;
    use std::time::Duration;

    #[test]
    fn model_time_leaves_the_first_call_out_and_splits_the_runs_queued_behind_work() {
        let mut m = ModelTime::default();
        let ms = Duration::from_millis;
        let call = |model, behind, gap: Option<u64>| Some(CallTimes { model: ms(model), behind, pre: ms(1), post: ms(2), gap: gap.map(ms) });
        m.add(call(900, true, None), 1); // warm-up: counted, not timed
        m.add(call(5, true, Some(3)), 1);
        m.add(call(7, false, Some(4)), 1); // found the GPU idle: the host's launch is inside its events
        m.add(call(10, true, Some(0)), 2);
        m.add(None, 1); // no events (a run that was not timed)
        assert_eq!((m.calls, m.frames, m.time), (5, 4, ms(22)));
        assert_eq!((m.behind_calls, m.behind_frames, m.behind_time), (2, 3, ms(15)));
        assert_eq!((m.pre_time, m.post_time, m.gap_time), (ms(3), ms(6), ms(7)));
    }
}
