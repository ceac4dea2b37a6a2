//! Source: GStreamer decodes any input (file, URI) into RGBA frames for the CPU stages.
//!
//! ```text
//! uridecodebin ─┬─ video ─ videoconvert ─ RGBA ─ deinterlace ─ videoflip ─ appsink (bounded) ──▶ Frame
//!               └─ audio ─ (handed to the sink's audio branch, or dropped)
//! ```
//!
//! `deinterlace` (mode auto: only interlaced caps are touched, one frame out per frame in) and `videoflip`
//! (video-direction auto: turns the picture upright by the stream's `image-orientation` tag, which qtdemux reads
//! from a phone's display matrix) pass progressive, upright video through without a copy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::error::{Error, Result};

/// One decoded frame, RGBA with packed rows, mapped writable so later stages can work in place.
pub struct Frame {
    pub index: u64,
    pub pts: Option<gst::ClockTime>,
    pub duration: Option<gst::ClockTime>,
    pub width: u32,
    pub height: u32,
    pub data: gst::buffer::MappedBuffer<gst::buffer::Writable>,
    /// The decoded frame still in CUDA memory (NV12), when decoding stays on the GPU; `data` is then only
    /// the place for the finished frame. Shared where two threads read it (the budgeted policy).
    pub cuda: Option<std::sync::Arc<crate::cuda::gst_cuda::CudaFrame>>,
}

/// Video format of the decoded stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamInfo {
    pub width: u32,
    pub height: u32,
    pub fps: gst::Fraction,
    pub par: gst::Fraction,
}

/// Turns a path or URI into a URI, checking local files first so the common mistakes get plain answers.
pub fn input_uri(input: &str) -> Result<String> {
    if input.contains("://") {
        return Ok(input.to_string());
    }
    let p = Path::new(input);
    let meta = std::fs::metadata(p).map_err(|e| Error::Input {
        path: input.to_string(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file: check the path".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied: the file cannot be read".to_string(),
            _ => format!("cannot open: {e}"),
        },
    })?;
    if meta.is_dir() {
        return Err(Error::Input {
            path: input.to_string(),
            reason: "is a folder: pass a video file (folders are for `matteflow batch`)".into(),
        });
    }
    if meta.len() == 0 {
        return Err(Error::Input { path: input.to_string(), reason: "is empty (0 bytes): nothing to convert".into() });
    }
    std::fs::File::open(p).map_err(|e| Error::Input { path: input.to_string(), reason: format!("cannot be read: {e}") })?;
    let abs = std::fs::canonicalize(p).map_err(|e| Error::io(format!("resolving {input}"), e))?;
    gst::glib::filename_to_uri(&abs, None)
        .map(|u| u.to_string())
        .map_err(|e| Error::Input { path: input.to_string(), reason: format!("cannot be turned into a URI: {e}") })
}

/// Explains a GStreamer error from the decoding side in the user's terms.
pub fn explain_decode_error(input: &str, err: &gst::message::Error) -> Error {
    let e = err.error();
    let debug = err.debug().map(|d| d.to_string()).unwrap_or_default();
    let reason = if e.matches(gst::StreamError::TypeNotFound) || e.matches(gst::StreamError::WrongType) {
        "is not a video file GStreamer can read (its type was not recognised)".to_string()
    } else if e.matches(gst::StreamError::Demux) || e.matches(gst::StreamError::Decode) || e.matches(gst::StreamError::Format) {
        format!("is damaged or truncated ({e}); re-copy or re-export it")
    } else if e.matches(gst::ResourceError::NotFound) || e.matches(gst::ResourceError::OpenRead) {
        format!("cannot be opened ({e})")
    } else {
        format!("{e}{}", if debug.is_empty() { String::new() } else { format!(" ({})", first_line(&debug)) })
    };
    Error::Input { path: input.to_string(), reason }
}

fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s)
}

/// The media type ("video/x-raw", "audio/x-raw", …) of a pad decodebin just exposed.
pub fn pad_media_type(pad: &gst::Pad) -> Option<String> {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    caps.structure(0).map(|s| s.name().to_string())
}

/// Links the first video pad `dec` (uridecodebin) exposes to `head`'s sink pad; other pads stay unlinked.
pub fn link_video_pads(dec: &gst::Element, head: &gst::Element) {
    let head = head.downgrade();
    dec.connect_pad_added(move |_, pad| {
        let video = pad_media_type(pad).is_some_and(|t| t.starts_with("video/"));
        if let (true, Some(h)) = (video, head.upgrade()) {
            let sink = h.static_pad("sink").unwrap();
            if !sink.is_linked() {
                let _ = pad.link(&sink);
            }
        }
    });
}

/// The video branch: videoconvert ! RGBA ! deinterlace ! videoflip ! appsink, added to `pipeline` and returned
/// unlinked at its head. `deinterlace`: false leaves interlaced frames as they are (both fields woven).
pub fn video_branch(pipeline: &gst::Pipeline, max_buffers: u32, deinterlace: bool) -> Result<(gst::Element, gst_app::AppSink)> {
    // The GPU stages reproduce this converter's output, thread stripes included (cuda::nv12).
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", crate::cuda::nv12::VIDEOCONVERT_THREADS).build()?;
    let rgba = gst::ElementFactory::make("capsfilter")
        .property("caps", gst::Caps::builder("video/x-raw").field("format", "RGBA").build())
        .build()?;
    let deint = gst::ElementFactory::make("deinterlace").build()?;
    // One frame out per frame in (the default, "all", would double the frame rate).
    deint.set_property_from_str("fields", "top");
    deint.set_property_from_str("mode", if deinterlace { "auto" } else { "disabled" });
    let flip = gst::ElementFactory::make("videoflip").build()?;
    flip.set_property_from_str("video-direction", "auto");
    let appsink = gst_app::AppSink::builder()
        .caps(&gst::Caps::builder("video/x-raw").field("format", "RGBA").build())
        .max_buffers(max_buffers)
        .drop(false)
        .sync(false)
        .build();
    pipeline.add_many([&convert, &rgba, &deint, &flip, appsink.upcast_ref()])?;
    gst::Element::link_many([&convert, &rgba, &deint, &flip, appsink.upcast_ref()])?;
    Ok((convert, appsink))
}

/// Pulls the next frame, mapping it writable (no copy when the decoder handed us the only reference).
pub fn pull_frame(appsink: &gst_app::AppSink, index: u64, timeout: Duration) -> Option<Result<Frame>> {
    let sample = appsink.try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))?;
    Some(frame_from_sample(sample, index))
}

/// Pulls the next frame decoded into CUDA memory (the device appsink of `cuda::gst_cuda`). With `nvdec`, samples
/// of access units are decoded there (and its frames come first); at the end of the stream it gives the
/// pictures it still holds.
pub fn pull_cuda_frame(appsink: &gst_app::AppSink, nvdec: Option<&mut crate::cuda::nvdec::AuSource>, index: u64, timeout: Duration) -> Option<Result<Frame>> {
    let Some(n) = nvdec else {
        let sample = appsink.try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))?;
        return Some(cuda_frame_from_sample(sample, index));
    };
    loop {
        if let Some((cuda, pts, duration)) = n.next_frame() {
            return Some(device_frame(cuda, index, pts, duration));
        }
        let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64)) else {
            if !appsink.is_eos() {
                return None;
            }
            if let Err(e) = n.finish() {
                return Some(Err(e));
            }
            let (cuda, pts, duration) = n.next_frame()?;
            return Some(device_frame(cuda, index, pts, duration));
        };
        if !sample.caps().is_some_and(crate::cuda::nvdec::AuSource::takes) {
            return Some(cuda_frame_from_sample(sample, index));
        }
        if let Err(e) = n.push(&sample) {
            return Some(Err(e));
        }
    }
}

/// A sample's timestamp as running time (its segment applied; the timestamp as is without a time segment).
pub fn running_pts(sample: &gst::Sample) -> Option<gst::ClockTime> {
    let pts = sample.buffer()?.pts();
    match sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned()) {
        Some(seg) => pts.and_then(|p| seg.to_running_time(p)),
        None => pts,
    }
}

fn cuda_frame_from_sample(sample: gst::Sample, index: u64) -> Result<Frame> {
    let cuda = crate::cuda::gst_cuda::CudaFrame::map(&sample)?;
    let src = sample.buffer().ok_or_else(|| Error::Gst("decoded sample without buffer".into()))?;
    device_frame(cuda, index, running_pts(&sample), src.duration())
}

/// A frame whose pixels are on the device (`cuda`), with a host buffer for the finished frame.
pub fn device_frame(cuda: crate::cuda::gst_cuda::CudaFrame, index: u64, pts: Option<gst::ClockTime>, duration: Option<gst::ClockTime>) -> Result<Frame> {
    let (w, h) = (cuda.width, cuda.height);
    let data = gst::Buffer::with_size((w * h * 4) as usize)
        .map_err(|e| Error::Gst(format!("cannot allocate a frame: {e}")))?
        .into_mapped_buffer_writable()
        .map_err(|_| Error::Gst("cannot map a frame".into()))?;
    Ok(Frame { index, pts, duration, width: w, height: h, data, cuda: Some(std::sync::Arc::new(cuda)) })
}

fn frame_from_sample(sample: gst::Sample, index: u64) -> Result<Frame> {
    let caps = sample.caps().ok_or_else(|| Error::Gst("decoded sample without caps".into()))?;
    let info = gstreamer_video::VideoInfo::from_caps(caps).map_err(|e| Error::Gst(format!("bad video caps: {e}")))?;
    // Timestamps become running time: containers with an edit list (most MP4s with B-frames) start their
    // media timeline later than 0, and the output must present each frame when the input did.
    let pts = running_pts(&sample);
    let mut buffer = sample.buffer_owned().ok_or_else(|| Error::Gst("decoded sample without buffer".into()))?;
    drop(sample);
    if buffer.pts() != pts {
        buffer.make_mut().set_pts(pts);
    }
    let (w, h) = (info.width(), info.height());
    let stride = info.stride()[0] as usize;
    if stride != w as usize * 4 {
        // Rare (RGBA rows are 4-byte aligned already): repack so stages see packed rows.
        let map = buffer.map_readable().map_err(|e| Error::Gst(e.to_string()))?;
        let mut packed = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h as usize {
            packed.extend_from_slice(&map[y * stride..y * stride + w as usize * 4]);
        }
        drop(map);
        let mut nb = gst::Buffer::from_mut_slice(packed);
        {
            let nbm = nb.get_mut().unwrap();
            nbm.set_pts(buffer.pts());
            nbm.set_duration(buffer.duration());
        }
        buffer = nb;
    }
    let pts = buffer.pts();
    let duration = buffer.duration();
    buffer.make_mut();
    let data = buffer.into_mapped_buffer_writable().map_err(|_| Error::Gst("cannot map decoded frame".into()))?;
    Ok(Frame { index, pts, duration, width: w, height: h, data, cuda: None })
}

pub fn stream_info(caps: &gst::CapsRef) -> Option<StreamInfo> {
    let s = caps.structure(0)?;
    Some(StreamInfo {
        width: s.get::<i32>("width").ok()? as u32,
        height: s.get::<i32>("height").ok()? as u32,
        fps: s.get::<gst::Fraction>("framerate").unwrap_or(gst::Fraction::new(0, 1)),
        par: s.get::<gst::Fraction>("pixel-aspect-ratio").unwrap_or(gst::Fraction::new(1, 1)),
    })
}

/// A video decoded at a fixed size, restarting from the beginning at its end (video backgrounds).
pub struct LoopingVideo {
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    path: PathBuf,
}

impl LoopingVideo {
    pub fn open(path: &Path, w: u32, h: u32) -> Result<Self> {
        let uri = input_uri(&path.display().to_string())?;
        let pipeline = gst::Pipeline::new();
        let dec = gst::ElementFactory::make("uridecodebin").property("uri", &uri).build()?;
        let conv = gst::ElementFactory::make("videoconvert").build()?;
        let scale = gst::ElementFactory::make("videoscale").build()?;
        let appsink = gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGBA")
                    .field("width", w as i32)
                    .field("height", h as i32)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            )
            .max_buffers(2)
            .sync(false)
            .build();
        pipeline.add_many([&dec, &conv, &scale, appsink.upcast_ref()])?;
        gst::Element::link_many([&conv, &scale, appsink.upcast_ref()])?;
        link_video_pads(&dec, &conv);
        pipeline.set_state(gst::State::Playing)?;
        Ok(LoopingVideo { pipeline, appsink, path: path.to_path_buf() })
    }

    fn bus_error(&self) -> Option<Error> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                return Some(explain_decode_error(&self.path.display().to_string(), &e));
            }
        }
        None
    }

    /// Copies the next frame (packed RGBA) into `out`.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> Result<()> {
        // Wait in short steps so a broken file is reported as soon as its error is posted, not after the
        // whole wait (up to 30 s, a slow decoder's first frame included).
        for _attempt in 0..300 {
            if let Some(s) = self.appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                let buf = s.buffer().ok_or_else(|| Error::Gst("background sample without buffer".into()))?;
                let map = buf.map_readable().map_err(|e| Error::Gst(e.to_string()))?;
                out.clear();
                out.extend_from_slice(&map);
                return Ok(());
            }
            if let Some(e) = self.bus_error() {
                return Err(Error::Config(format!("background video: {e}")));
            }
            if self.appsink.is_eos() {
                self.pipeline
                    .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
                    .map_err(|e| Error::Gst(format!("cannot loop background video: {e}")))?;
            }
        }
        Err(Error::Config(format!("background video {} produced no frames", self.path.display())))
    }
}

impl Drop for LoopingVideo {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Decodes up to `max` frames of a file into packed RGBA (for evaluation and tools, not the streaming path).
pub fn decode_frames(path: &Path, max: usize) -> Result<Vec<(u32, u32, Vec<u8>)>> {
    gst::init()?;
    let uri = input_uri(&path.display().to_string())?;
    let pipeline = gst::Pipeline::new();
    let dec = gst::ElementFactory::make("uridecodebin").property("uri", &uri).build()?;
    pipeline.add(&dec)?;
    let (head, appsink) = video_branch(&pipeline, 4, true)?;
    link_video_pads(&dec, &head);
    pipeline.set_state(gst::State::Playing)?;
    let mut out = Vec::new();
    while out.len() < max {
        match pull_frame(&appsink, out.len() as u64, Duration::from_secs(10)) {
            Some(Ok(f)) => out.push((f.width, f.height, f.data.to_vec())),
            Some(Err(e)) => {
                let _ = pipeline.set_state(gst::State::Null);
                return Err(e);
            }
            None => break,
        }
    }
    let bus = pipeline.bus().unwrap();
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(e) = msg.view() {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(explain_decode_error(&path.display().to_string(), &e));
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    Ok(out)
}
