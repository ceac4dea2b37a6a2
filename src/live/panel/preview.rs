//! The panel's MJPEG previews: the output, and on request the original (the input frame before matting), each
//! scaled down to [`PREVIEW_WIDTH`] and encoded as JPEG on one thread of its own (`mf-preview`), only while
//! someone watches that view.
//!
//! ```text
//! frame loop ── due()? ──▶ offer(Original, input frame)  ─┐  (channel of 2: a busy encoder drops frames,
//!            ── matte ──▶ offer(Output, output frame)    ─┴▶ mf-preview: scale, JPEG ─▶ latest[view] ─▶ watchers
//! ```
//!
//! Both views are taken from the same frame (one timer), so side by side they show the same instant.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;

/// The preview's frame interval (5 fps) and width.
const PREVIEW_INTERVAL: Duration = Duration::from_millis(200);
const PREVIEW_WIDTH: u32 = 480;

pub(super) type Jpeg = Option<Arc<Vec<u8>>>;

/// What a preview stream shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The matted output, as the outputs get it.
    Output,
    /// The input frame before matting.
    Original,
}

impl View {
    const ALL: [View; 2] = [View::Output, View::Original];

    fn index(self) -> usize {
        self as usize
    }

    /// The name used in `/preview.mjpg?view=…` and in the status.
    pub fn name(self) -> &'static str {
        match self {
            View::Output => "output",
            View::Original => "original",
        }
    }

    pub fn from_name(s: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// One view's latest JPEG and how many watch it.
struct Stream {
    latest: Arc<tokio::sync::watch::Sender<Jpeg>>,
    watchers: AtomicUsize,
}

/// Which views want the current frame (see [`Preview::due`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Due {
    pub output: bool,
    pub original: bool,
}

/// A frame to encode: which view, RGBA pixels, width, height.
type Raw = (View, Vec<u8>, u32, u32);

pub struct Preview {
    frames: crossbeam_channel::Sender<Raw>,
    streams: [Stream; 2],
    last: Mutex<Option<Instant>>,
}

impl Preview {
    pub fn start() -> crate::error::Result<Arc<Preview>> {
        let (tx, rx) = crossbeam_channel::bounded::<Raw>(2);
        let streams: [Stream; 2] = std::array::from_fn(|_| Stream {
            latest: Arc::new(tokio::sync::watch::Sender::new(None)),
            watchers: AtomicUsize::new(0),
        });
        let outs: Vec<_> = streams.iter().map(|s| s.latest.clone()).collect();
        std::thread::Builder::new()
            .name("mf-preview".into())
            .spawn(move || {
                // Ends when the Preview (the only sender) is dropped.
                while let Ok((view, rgba, w, h)) = rx.recv() {
                    if let Some(j) = encode(rgba, w, h) {
                        outs[view.index()].send_replace(Some(Arc::new(j)));
                    }
                }
            })
            .map_err(|e| crate::error::Error::io("starting the preview thread", e))?;
        Ok(Arc::new(Preview { frames: tx, streams, last: Mutex::new(None) }))
    }

    /// Called by the frame loop once per frame, before matting: which views to offer this frame. Cheap (two
    /// atomic loads) while nobody watches; otherwise true at most every [`PREVIEW_INTERVAL`].
    pub fn due(&self) -> Due {
        let watched = |v: View| self.streams[v.index()].watchers.load(Ordering::Relaxed) > 0;
        let (output, original) = (watched(View::Output), watched(View::Original));
        if !output && !original {
            return Due::default();
        }
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < PREVIEW_INTERVAL) {
            return Due::default();
        }
        *last = Some(Instant::now());
        Due { output, original }
    }

    /// Hands one frame (tightly packed RGBA) to the encoder; dropped when the encoder is still busy.
    pub fn offer(&self, view: View, rgba: &[u8], w: u32, h: u32) {
        if rgba.len() == (w * h * 4) as usize {
            let _ = self.frames.try_send((view, rgba.to_vec(), w, h));
        }
    }

    /// Hands a captured RGBA sample to the encoder (rows copied out of its stride).
    pub fn offer_sample(&self, view: View, sample: &gst::Sample) {
        let (Some(buf), Some(info)) = (sample.buffer(), sample.caps().and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok())) else {
            return;
        };
        if info.format() != gstreamer_video::VideoFormat::Rgba {
            return;
        }
        let Ok(map) = buf.map_readable() else { return };
        let (w, h, stride) = (info.width() as usize, info.height() as usize, info.stride()[0] as usize);
        if h == 0 || stride < w * 4 || map.len() < stride * (h - 1) + w * 4 {
            return;
        }
        let mut rgba = Vec::with_capacity(w * h * 4);
        for row in map.chunks(stride).take(h) {
            rgba.extend_from_slice(&row[..w * 4]);
        }
        let _ = self.frames.try_send((view, rgba, w as u32, h as u32));
    }

    /// The newest JPEG of a view, and a watcher counted while the returned guard lives.
    pub(super) fn watch(self: &Arc<Self>, view: View) -> (tokio::sync::watch::Receiver<Jpeg>, Watching) {
        let s = &self.streams[view.index()];
        s.watchers.fetch_add(1, Ordering::Relaxed);
        (s.latest.subscribe(), Watching(self.clone(), view))
    }

    /// How many watch each view: `{"output": n, "original": m}`.
    pub fn watchers(&self) -> serde_json::Value {
        let n = |v: View| self.streams[v.index()].watchers.load(Ordering::Relaxed);
        serde_json::json!({ "output": n(View::Output), "original": n(View::Original) })
    }
}

fn encode(rgba: Vec<u8>, w: u32, h: u32) -> Option<Vec<u8>> {
    let img = image::RgbaImage::from_raw(w, h, rgba)?;
    let tw = PREVIEW_WIDTH.min(w);
    let th = ((h as u64 * tw as u64) / w as u64).max(1) as u32;
    let small = image::DynamicImage::ImageRgba8(image::imageops::thumbnail(&img, tw, th)).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 70).encode_image(&small).ok()?;
    Some(out)
}

/// Counts a watcher of one view while its stream lives.
pub(super) struct Watching(Arc<Preview>, View);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.streams[self.1.index()].watchers.fetch_sub(1, Ordering::Relaxed);
    }
}
