//! NV12 frames made by GStreamer, and GStreamer's own RGBA of them: what the NV12 conversion is held to (the
//! CPU test in tests/chroma.rs, `matteflow gpu-check`).
//!
//! ```text
//! <any raw video> ─ videoconvert ─ videoscale ─ NV12 ─ appsink ──▶ HostNv12 (relabelled: matrix, range, siting)
//! HostNv12 ─ appsrc ─ videoconvert n-threads=N ─ RGBA ─ appsink ──▶ what the CPU stages would see
//! ```

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::nv12::{Nv12Planes, YuvColor};
use crate::error::{Error, Result};

fn gst_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Gst(format!("{what}: {e}"))
}

/// An NV12 frame in host memory, laid out as its `info` says (GStreamer's default strides and offsets).
#[derive(Debug, Clone)]
pub struct HostNv12 {
    pub data: Vec<u8>,
    pub info: gst_video::VideoInfo,
}

impl HostNv12 {
    /// A frame of a sample (its planes copied into the default layout of its caps).
    pub fn from_sample(sample: &gst::Sample) -> Result<HostNv12> {
        let caps = sample.caps().ok_or_else(|| Error::Gst("NV12 sample without caps".into()))?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| gst_err("NV12 caps", e))?;
        if info.format() != gst_video::VideoFormat::Nv12 {
            return Err(Error::Gst(format!("expected NV12, got {:?}", info.format())));
        }
        let buffer = sample.buffer_owned().ok_or_else(|| Error::Gst("NV12 sample without buffer".into()))?;
        let frame = gst_video::VideoFrame::from_buffer_readable(buffer, &info).map_err(|_| Error::Gst("NV12 buffer cannot be mapped".into()))?;
        let y = frame.plane_data(0).map_err(|e| gst_err("NV12 plane", e))?;
        let uv = frame.plane_data(1).map_err(|e| gst_err("NV12 plane", e))?;
        let stride = frame.plane_stride();
        let data = default_layout(&info, [(y, stride[0] as usize), (uv, stride[1] as usize)]);
        Ok(HostNv12 { data, info })
    }

    /// A frame of `info`'s size from pitched planes (e.g. a host copy of a decoder's CUDA buffer).
    pub fn from_planes(planes: &Nv12Planes, info: gst_video::VideoInfo) -> HostNv12 {
        let uv = &planes.data[planes.uv_offset..];
        let data = default_layout(&info, [(planes.data, planes.pitch), (uv, planes.pitch)]);
        HostNv12 { data, info }
    }

    /// The same bytes, described by other caps: `colorimetry` and `site` (an empty site: no `chroma-site` field;
    /// all-unknown colorimetry: no `colorimetry` field). The description is read back from those caps, as
    /// `videoconvert` and the decoder path read theirs (GStreamer fills in defaults there).
    pub fn relabel(&self, colorimetry: gst_video::VideoColorimetry, site: gst_video::VideoChromaSite) -> Result<HostNv12> {
        let built = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, self.info.width(), self.info.height())
            .colorimetry(&colorimetry)
            .chroma_site(site)
            .fps(self.info.fps())
            .build()
            .map_err(|e| gst_err("NV12 caps", e))?;
        let caps = built.to_caps().map_err(|e| gst_err("NV12 caps", e))?;
        let info = gst_video::VideoInfo::from_caps(&caps).map_err(|e| gst_err("NV12 caps", e))?;
        if info.size() != self.data.len() || info.offset() != self.info.offset() {
            return Err(Error::Gst("relabelled NV12 frame has another layout".into()));
        }
        Ok(HostNv12 { data: self.data.clone(), info })
    }

    /// How its caps say its values are read.
    pub fn color(&self) -> YuvColor {
        YuvColor::from_info(&self.info)
    }

    pub fn planes(&self) -> Nv12Planes<'_> {
        Nv12Planes {
            data: &self.data,
            width: self.info.width() as usize,
            height: self.info.height() as usize,
            pitch: self.info.stride()[0] as usize,
            uv_offset: self.info.offset()[1],
        }
    }
}

/// The Y and UV planes (each with its row pitch) copied into the default layout of `info`.
fn default_layout(info: &gst_video::VideoInfo, planes: [(&[u8], usize); 2]) -> Vec<u8> {
    let mut data = vec![0u8; info.size()];
    let (w, h) = (info.width() as usize, info.height() as usize);
    for (p, ((src, src_pitch), (rows, row_bytes))) in planes.into_iter().zip([(h, w), (h.div_ceil(2), w.div_ceil(2) * 2)]).enumerate() {
        let (off, stride) = (info.offset()[p], info.stride()[p] as usize);
        for r in 0..rows {
            data[off + r * stride..][..row_bytes].copy_from_slice(&src[r * src_pitch..][..row_bytes]);
        }
    }
    data
}

/// The error a pipeline posted, or `what` when none did.
fn bus_error(pipeline: &gst::Pipeline, what: &str) -> Error {
    let msg = pipeline.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(e)) => Error::Gst(format!("{what}: {} ({:?})", e.error(), e.debug())),
        _ => Error::Gst(what.to_string()),
    }
}

/// Where test frames come from: a gst-launch description of raw video (`launch`, e.g. `videotestsrc
/// pattern=ball` or `filesrc location=clip.mp4 ! decodebin`), scaled to `size` if given.
#[derive(Debug, Clone)]
pub struct FrameSource {
    pub label: String,
    pub launch: String,
    pub size: Option<(u32, u32)>,
}

impl FrameSource {
    pub fn new(label: &str, launch: &str, size: Option<(u32, u32)>) -> FrameSource {
        FrameSource { label: label.into(), launch: launch.into(), size }
    }

    /// Up to `max` of its frames as NV12.
    pub fn frames(&self, max: usize) -> Result<Vec<HostNv12>> {
        gst_nv12_frames(&self.launch, self.size, max)
    }
}

/// Up to `max` frames of `launch` (a gst-launch description of raw video, e.g. `videotestsrc pattern=ball` or
/// `filesrc location=clip.mp4 ! decodebin`) converted to NV12, scaled to `size` if given.
pub fn gst_nv12_frames(launch: &str, size: Option<(u32, u32)>, max: usize) -> Result<Vec<HostNv12>> {
    gst::init()?;
    let caps = match size {
        Some((w, h)) => format!("video/x-raw,format=NV12,width={w},height={h}"),
        None => "video/x-raw,format=NV12".into(),
    };
    let desc = format!("{launch} ! videoconvert ! videoscale ! {caps} ! appsink name=nv12 sync=false max-buffers=2");
    let pipeline = gst::parse::launch(&desc).map_err(|e| gst_err(&desc, e))?.downcast::<gst::Pipeline>().map_err(|_| Error::Gst(format!("{desc}: not a pipeline")))?;
    let sink = pipeline.by_name("nv12").and_then(|e| e.downcast::<gst_app::AppSink>().ok()).ok_or_else(|| Error::Gst("no appsink".into()))?;
    pipeline.set_state(gst::State::Playing).map_err(|e| gst_err(&desc, e))?;
    let mut frames = Vec::new();
    let mut failure = None;
    while frames.len() < max {
        match sink.try_pull_sample(gst::ClockTime::from_seconds(20)) {
            Some(s) => match HostNv12::from_sample(&s) {
                Ok(f) => frames.push(f),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            },
            None if sink.is_eos() => break,
            None => {
                failure = Some(bus_error(&pipeline, &desc));
                break;
            }
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    match (failure, frames.is_empty()) {
        (Some(e), _) => Err(e),
        (None, true) => Err(Error::Gst(format!("{desc}: no frames"))),
        (None, false) => Ok(frames),
    }
}

/// GStreamer's RGBA of `frames` (which share their caps): `appsrc ! videoconvert n-threads=threads ! RGBA`, as
/// the CPU stages convert (`source::video_branch`); packed rows of width · 4 bytes.
pub fn videoconvert_rgba(frames: &[HostNv12], threads: u32) -> Result<Vec<Vec<u8>>> {
    gst::init()?;
    let Some(first) = frames.first() else { return Ok(Vec::new()) };
    let caps = first.info.to_caps().map_err(|e| gst_err("NV12 caps", e))?;
    let data: Vec<&[u8]> = frames.iter().map(|f| &f.data[..]).collect();
    let (w, h) = (first.info.width() as usize, first.info.height() as usize);
    videoconvert(&caps, &data, "RGBA", threads)?
        .iter()
        .map(|sample| {
            let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).map_err(|e| gst_err("RGBA caps", e))?;
            let map = sample.buffer().unwrap().map_readable().map_err(|e| gst_err("RGBA buffer", e))?;
            let stride = info.stride()[0] as usize;
            Ok((0..h).flat_map(|r| map[r * stride..r * stride + w * 4].iter().copied()).collect())
        })
        .collect()
}

/// The I420 frame `videoconvert` (with `n-threads=threads`) makes of a packed RGBA frame of `w` × `h`, as the
/// encoder chain of `convert` asks for it (no colorimetry: GStreamer's default for the size), in GStreamer's
/// default layout.
pub fn videoconvert_i420(rgba: &[u8], w: u32, h: u32, threads: u32) -> Result<Vec<u8>> {
    gst::init()?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGBA")
        .field("width", w as i32)
        .field("height", h as i32)
        .field("framerate", gst::Fraction::new(25, 1))
        .build();
    let sample = videoconvert(&caps, &[rgba], "I420", threads)?.pop().ok_or_else(|| Error::Gst("videoconvert gave no frame".into()))?;
    let map = sample.buffer().unwrap().map_readable().map_err(|e| gst_err("I420 buffer", e))?;
    Ok(map.to_vec())
}

/// `frames` (laid out as `caps` says) through `videoconvert n-threads=threads ! video/x-raw,format=out`.
fn videoconvert(caps: &gst::Caps, frames: &[&[u8]], out: &str, threads: u32) -> Result<Vec<gst::Sample>> {
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder().caps(caps).format(gst::Format::Time).build();
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", threads).build()?;
    let sink = gst_app::AppSink::builder().caps(&gst::Caps::builder("video/x-raw").field("format", out).build()).sync(false).build();
    pipeline.add_many([src.upcast_ref(), &convert, sink.upcast_ref()])?;
    gst::Element::link_many([src.upcast_ref(), &convert, sink.upcast_ref()])?;
    pipeline.set_state(gst::State::Playing).map_err(|e| gst_err("videoconvert pipeline", e))?;
    let result = (|| {
        for (i, f) in frames.iter().enumerate() {
            let mut buffer = gst::Buffer::from_slice(f.to_vec());
            buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(40 * i as u64));
            src.push_buffer(buffer).map_err(|e| gst_err("videoconvert pipeline", e))?;
        }
        let _ = src.end_of_stream();
        let mut samples = Vec::with_capacity(frames.len());
        while samples.len() < frames.len() {
            let sample = sink
                .try_pull_sample(gst::ClockTime::from_nseconds(Duration::from_secs(20).as_nanos() as u64))
                .ok_or_else(|| bus_error(&pipeline, &format!("videoconvert to {out} gave no frame")))?;
            samples.push(sample);
        }
        Ok(samples)
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}
