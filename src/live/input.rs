//! Live inputs: a webcam (V4L2), a network stream (RTSP, RTMP, SRT, HTTP, UDP), a test pattern, or a file
//! played at its own pace. Each becomes a GStreamer pipeline ending in an RGBA appsink that never blocks the
//! source (it keeps the newest few frames and drops older ones).
//!
//! ```text
//! v4l2src ─ caps(WxH@fps, raw or MJPEG) ─ decodebin ─┐
//! videotestsrc is-live ───────────────────────────────┼─ videoconvert ─ videoscale ─ videorate ─ RGBA caps ─ appsink
//! uridecodebin (rtsp://, rtmp://, srt://, file) ──────┘                                        (drop, max 2)
//! ```

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where live frames come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum InputSpec {
    /// `testsrc` or `testsrc:PATTERN` (a videotestsrc pattern: smpte, ball, snow, …), produced live.
    TestPattern(String),
    /// `/dev/videoN` or `v4l2:/dev/videoN`.
    Webcam(String),
    /// rtsp://, rtsps://, rtmp://, rtmps://, srt://, http(s)://, udp://, file://
    Uri(String),
    /// A local file, played at its own frame rate as if it were live.
    File(String),
}

impl std::str::FromStr for InputSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the input is empty: give testsrc, /dev/videoN, a URI or a file".into());
        }
        if s == "testsrc" {
            return Ok(InputSpec::TestPattern("smpte".into()));
        }
        if let Some(p) = s.strip_prefix("testsrc:") {
            return Ok(InputSpec::TestPattern(p.to_string()));
        }
        if let Some(d) = s.strip_prefix("v4l2:") {
            return Ok(InputSpec::Webcam(d.to_string()));
        }
        if s.starts_with("/dev/video") {
            return Ok(InputSpec::Webcam(s.to_string()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            const OK: &[&str] = &["rtsp", "rtsps", "rtspt", "rtmp", "rtmps", "srt", "http", "https", "udp", "file"];
            if OK.contains(&scheme.to_ascii_lowercase().as_str()) {
                return Ok(InputSpec::Uri(s.to_string()));
            }
            return Err(format!(
                "input '{s}': the scheme '{scheme}' is not supported; use rtsp://, rtmp://, srt://, http(s)://, udp:// or file://"
            ));
        }
        Ok(InputSpec::File(s.to_string()))
    }
}

impl TryFrom<String> for InputSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<InputSpec> for String {
    fn from(i: InputSpec) -> String {
        match i {
            InputSpec::TestPattern(p) => format!("testsrc:{p}"),
            InputSpec::Webcam(d) => d,
            InputSpec::Uri(u) | InputSpec::File(u) => u,
        }
    }
}

impl InputSpec {
    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            InputSpec::TestPattern(p) => format!("test pattern '{p}'"),
            InputSpec::Webcam(d) => format!("webcam {d}"),
            InputSpec::Uri(u) => u.clone(),
            InputSpec::File(f) => format!("file {f}"),
        }
    }
}

/// What to ask the source for; unset fields take what it offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

/// The input pipeline and its appsink.
pub struct LiveInput {
    pub pipeline: gst::Pipeline,
    pub appsink: gst_app::AppSink,
    /// Source frames are timestamped on this pipeline's clock; true for cameras, test patterns, network.
    pub live: bool,
    /// The source waits for us (a file, or a network source that is not live): its appsink blocks instead of
    /// dropping and the capture thread takes every frame, so none is lost. Set when the source is known.
    pub paced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::Gst(format!("element '{name}' is missing: install {}", crate::sink::package_of(name))))
}

/// Checks, without opening it, that the input is there: the camera's device node, the file.
pub fn check(spec: &InputSpec) -> Result<()> {
    match spec {
        InputSpec::Webcam(dev) if !Path::new(dev).exists() => Err(Error::Input {
            path: dev.clone(),
            reason: "no such video device: list cameras with `v4l2-ctl --list-devices` (package v4l-utils) and check \
                     the user is in the 'video' group"
                .into(),
        }),
        InputSpec::File(f) => crate::source::input_uri(f).map(|_| ()),
        _ => Ok(()),
    }
}

/// Builds (but does not start) the input pipeline.
pub fn build(spec: &InputSpec, cap: Capture) -> Result<LiveInput> {
    gst::init()?;
    let pipeline = gst::Pipeline::with_name("matteflow-input");
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
    let scale = make("videoscale")?;
    let rate = make("videorate")?;
    // videorate only duplicates/drops to reach a requested rate; it must not invent frames when the
    // source stalls (a live source's gaps are real).
    rate.set_property("drop-only", true);
    let mut caps = gst::Caps::builder("video/x-raw").field("format", "RGBA");
    if let Some(w) = cap.width {
        caps = caps.field("width", w as i32);
    }
    if let Some(h) = cap.height {
        caps = caps.field("height", h as i32);
    }
    if let Some(f) = cap.fps {
        caps = caps.field("framerate", gst::Fraction::new(f as i32, 1));
    }
    let caps = caps.field("pixel-aspect-ratio", gst::Fraction::new(1, 1)).build();
    let capsfilter = gst::ElementFactory::make("capsfilter").property("caps", &caps).build()?;
    let is_file = matches!(spec, InputSpec::File(_));
    let paced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(is_file));
    let appsink = gst_app::AppSink::builder()
        .max_buffers(2)
        // A live source cannot wait: the oldest frame goes (the capture thread takes them at once). A file can.
        .drop(!is_file)
        // A file is paced to its own frame rate as if it were a camera; live sources come at their pace.
        .sync(is_file)
        .build();
    pipeline.add_many([&convert, &scale, &rate, &capsfilter, appsink.upcast_ref()])?;
    gst::Element::link_many([&convert, &scale, &rate, &capsfilter, appsink.upcast_ref()])?;

    let live = match spec {
        InputSpec::TestPattern(p) => {
            let src = make("videotestsrc")?;
            src.set_property("is-live", true);
            let known = src
                .find_property("pattern")
                .and_then(|ps| gst::glib::EnumClass::with_type(ps.value_type()))
                .is_some_and(|c| c.value_by_nick(p).is_some() || c.value_by_name(p).is_some());
            if !known {
                return Err(Error::config(format!(
                    "test pattern '{p}' is unknown: try smpte, ball, snow, colors, circular, gamut, pinwheel (see \
                     `gst-inspect-1.0 videotestsrc`)"
                )));
            }
            src.set_property_from_str("pattern", p);
            // Ask the test source for the requested size directly (no scaling work).
            let mut sc = gst::Caps::builder("video/x-raw");
            sc = sc.field("width", cap.width.unwrap_or(1280) as i32).field("height", cap.height.unwrap_or(720) as i32);
            sc = sc.field("framerate", gst::Fraction::new(cap.fps.unwrap_or(30) as i32, 1));
            let f = gst::ElementFactory::make("capsfilter").property("caps", sc.build()).build()?;
            pipeline.add_many([&src, &f])?;
            gst::Element::link_many([&src, &f, &convert])?;
            true
        }
        InputSpec::Webcam(dev) => {
            check(spec)?;
            let src = make("v4l2src")?;
            src.set_property("device", dev);
            // Let the camera pick raw or MJPEG at the requested mode (most webcams only give 720p30 as MJPEG).
            let mut any = gst::Caps::new_empty();
            for media in ["video/x-raw", "image/jpeg"] {
                let mut b = gst::Caps::builder(media);
                if let Some(w) = cap.width {
                    b = b.field("width", w as i32);
                }
                if let Some(h) = cap.height {
                    b = b.field("height", h as i32);
                }
                if let Some(f) = cap.fps {
                    b = b.field("framerate", gst::Fraction::new(f as i32, 1));
                }
                any.get_mut().unwrap().append(b.build());
            }
            let f = gst::ElementFactory::make("capsfilter").property("caps", &any).build()?;
            let dec = make("decodebin")?;
            pipeline.add_many([&src, &f, &dec])?;
            gst::Element::link_many([&src, &f, &dec])?;
            crate::source::link_video_pads(&dec, &convert);
            true
        }
        InputSpec::Uri(uri) | InputSpec::File(uri) => {
            let uri = if is_file { crate::source::input_uri(uri)? } else { uri.clone() };
            let dec = make("uridecodebin")?;
            dec.set_property("uri", &uri);
            // Network sources: keep their jitter buffers short, this is live. A source that is not live (a
            // file served over HTTP, say) is paced to its own frame rate, like a local file.
            let sink = appsink.clone();
            let paced2 = paced.clone();
            dec.connect("source-setup", false, move |args| {
                let src = args[1].get::<gst::Element>().ok()?;
                let live = src.downcast_ref::<gstreamer_base::BaseSrc>().is_none_or(|b| gstreamer_base::prelude::BaseSrcExt::is_live(b));
                if !live {
                    tracing::info!("input {} is not live: played at its own frame rate", src.factory().map(|f| f.name().to_string()).unwrap_or_default());
                    sink.set_property("sync", true);
                    sink.set_property("drop", false);
                    paced2.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if src.has_property("latency") {
                    // rtspsrc takes ms as guint, srtsrc as gint: from a string fits both.
                    src.set_property_from_str("latency", "200");
                }
                None
            });
            pipeline.add(&dec)?;
            crate::source::link_video_pads(&dec, &convert);
            !is_file
        }
    };
    Ok(LiveInput { pipeline, appsink, live, paced })
}
