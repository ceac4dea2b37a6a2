//! `matteflow probe FILE`: what a conversion will do to an input, before a long batch: size, rotation, scan
//! type, streams, frame-rate mode and the size each output gets. GStreamer's Discoverer reads the file (no
//! decoding of the whole file); photos and animations are read by [`crate::images`].

use std::fmt::Write as _;
use std::path::Path;

use gstreamer as gst;
use gstreamer_pbutils as pbutils;
use gstreamer_pbutils::prelude::*;

use crate::error::{Error, Result};
use crate::images::ImageInput;

/// The report, as lines of text.
pub fn probe(input: &str) -> Result<String> {
    gst::init()?;
    let uri = crate::source::input_uri(input)?;
    if !input.contains("://") {
        if let Some(image) = ImageInput::sniff(Path::new(input)) {
            return probe_image(input, image);
        }
    }
    let discoverer = pbutils::Discoverer::new(gst::ClockTime::from_seconds(20)).map_err(|e| Error::Gst(e.to_string()))?;
    let info = discoverer.discover_uri(&uri).map_err(|e| Error::Input { path: input.into(), reason: format!("cannot be read: {e}") })?;
    let videos = info.video_streams();
    let mut out = String::new();
    let _ = writeln!(out, "{input}");
    if let Some(d) = info.duration() {
        let _ = writeln!(out, "  duration      {:.3} s", d.nseconds() as f64 / 1e9);
    }
    let _ = writeln!(out, "  streams       {} video, {} audio, {} other", videos.len(), info.audio_streams().len(),
        info.stream_list().len().saturating_sub(videos.len() + info.audio_streams().len()));
    if videos.is_empty() {
        let _ = writeln!(out, "  no video stream: nothing to convert");
        return Ok(out);
    }
    for (i, v) in videos.iter().enumerate() {
        let _ = writeln!(out, "  video {i}{}", if i == 0 { " (converted; `matteflow convert --video-stream N` picks another)" } else { "" });
        describe_video(&mut out, v);
    }
    Ok(out)
}

fn describe_video(out: &mut String, v: &pbutils::DiscovererVideoInfo) {
    let (w, h) = (v.width(), v.height());
    let fps = v.framerate();
    let par = v.par();
    let orientation = v.tags().and_then(|t| t.get::<gst::tags::ImageOrientation>().map(|o| o.get().to_string()));
    let turned = orientation.as_deref().is_some_and(|o| o.contains("90") || o.contains("270"));
    let codec = v.caps().and_then(|c| c.structure(0).map(|s| s.name().to_string())).unwrap_or_default();
    let _ = writeln!(out, "    codec       {codec}");
    let _ = writeln!(out, "    stored      {w}×{h}, pixel aspect {}/{}", par.numer(), par.denom());
    let _ = writeln!(out, "    rotation    {}", match &orientation {
        Some(o) if o != "rotate-0" => format!("{o}: turned upright before matting and written upright"),
        _ => "none".into(),
    });
    let _ = writeln!(out, "    scan        {}", if v.is_interlaced() { "interlaced: deinterlaced (`matteflow convert --no-deinterlace` keeps the fields)" } else { "progressive" });
    // A variable-rate MP4 has no frame rate in its container; parsers then report none or the bitstream's time
    // scale (1000000/1).
    let variable = fps.numer() == 0 || fps.numer() as f64 / fps.denom() as f64 > 1000.0;
    let _ = writeln!(out, "    frame rate  {}", if variable {
        "variable: each frame keeps its timestamp (H.264 without B-frames)".to_string()
    } else {
        format!("{}/{} ({:.3} fps), constant", fps.numer(), fps.denom(), fps.numer() as f64 / fps.denom() as f64)
    });
    let (ow, oh) = if turned { (h, w) } else { (w, h) };
    let (ew, eh) = crate::evenpad::even_size(ow, oh);
    let _ = writeln!(out, "    output      {ow}×{oh} (.mov, .mkv, .webm, PNG frames)");
    if (ew, eh) != (ow, oh) {
        let _ = writeln!(out, "                {ew}×{eh} in H.264 (.mp4): padded to even with the edge pixels");
    }
}

fn probe_image(input: &str, image: ImageInput) -> Result<String> {
    let mut frames = crate::images::frames(Path::new(input), image)?;
    let first = frames.next().ok_or_else(|| Error::Input { path: input.into(), reason: "has no frames".into() })??;
    let (w, h) = first.rgba.dimensions();
    let count = 1 + frames.count();
    let mut out = format!("{input}\n  {}\n  size          {w}×{h} (upright)\n  frames        {count}\n", image.describe());
    let _ = writeln!(out, "  output        {w}×{h} (.png/.webp with alpha, .jpg composite; video containers{})",
        if image.animated { "" } else { ": one frame of 1 s" });
    Ok(out)
}
