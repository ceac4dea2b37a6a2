//! How a live input's video is decoded: into CUDA memory by GStreamer's nvcodec decoders, or to RGBA in system
//! memory.
//!
//! ```text
//! file / network stream, GPU stages ─ uridecodebin ─ nvh264dec … ─ NV12 (CUDA memory) ─ appsink ─▶ read in place
//! anything else ───────────────────── … ─ videoconvert ─ videoscale ─ videorate ─ RGBA ─ appsink ─▶ (uploaded)
//! ```
//!
//! [`decide`] chooses before the input starts, from what is known then. What is only known once the stream is
//! open — a codec without an nvcodec decoder, a decoder that fails, pixels that are not square — makes the input
//! start again decoding to system memory (`StartedInput::start`). Either way the run goes on, and the log and the
//! report say which way the frames were decoded and why.

use super::{Capture, InputSpec};

/// How the frames of a live run are decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decode {
    /// By nvcodec into CUDA memory (NV12) in the GPU stages' context: the stages read each frame where the
    /// decoder left it, and the composite is downloaded once.
    Cuda,
    /// To RGBA in system memory (uploaded when the stages run on the GPU), for this reason.
    Host(String),
}

impl std::fmt::Display for Decode {
    /// `cuda`, or `host: <why>` (the live report's `decode`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decode::Cuda => f.write_str("cuda"),
            Decode::Host(why) => write!(f, "host: {why}"),
        }
    }
}

impl Decode {
    /// The start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Decode::Cuda => "video: decoded into CUDA memory by nvcodec, read there by the GPU stages".into(),
            Decode::Host(why) => format!("video: decoded into system memory ({why})"),
        }
    }

    /// Says at start (also without -v, as the sound's source is said) how the video is decoded.
    pub fn announce(&self) {
        tracing::info!("{}", self.describe());
    }
}

/// What the choice depends on.
pub struct DecodeAsk<'a> {
    /// The stages run on the GPU (`Placement::Device`).
    pub device_stages: bool,
    pub input: &'a InputSpec,
    /// The capture size and rate asked for (scaling and rate conversion work in system memory).
    pub capture: Capture,
    /// Decoding to system memory asked for (`--host-decode`).
    pub host_decode: bool,
    /// Whether nvcodec and libgstcuda can decode into our CUDA context (else why not). Only read when the
    /// rest allows CUDA decoding.
    pub cuda_ready: std::result::Result<(), String>,
}

/// Decodes into CUDA memory where that is asked for by nothing else: the stages on the GPU, a file or a network
/// stream (webcams and the test pattern are uploaded), no scaling or rate conversion asked for, nvcodec there.
pub fn decide(ask: &DecodeAsk) -> Decode {
    use crate::hint::{CAPTURE_FPS, CAPTURE_HEIGHT, CAPTURE_WIDTH, HOST_DECODE};
    if ask.host_decode {
        return Decode::Host(format!("asked for with {}", HOST_DECODE.name()));
    }
    if !ask.device_stages {
        return Decode::Host("the stages run on the CPU".into());
    }
    match ask.input {
        InputSpec::Webcam(_) => return Decode::Host("a webcam's frames are uploaded".into()),
        InputSpec::TestPattern(_) => return Decode::Host("the test pattern's frames are uploaded".into()),
        InputSpec::File(_) | InputSpec::Uri(_) => {}
    }
    let c = ask.capture;
    let asked: Vec<String> = [(c.width, CAPTURE_WIDTH), (c.height, CAPTURE_HEIGHT), (c.fps, CAPTURE_FPS)]
        .into_iter()
        .filter_map(|(v, setting)| v.map(|_| setting.name()))
        .fold(Vec::new(), |mut names, n| {
            if !names.contains(&n) {
                names.push(n);
            }
            names
        });
    if !asked.is_empty() {
        return Decode::Host(format!(
            "{} asked for scaling or a frame rate, which videoscale and videorate do in system memory; leave it out to \
             decode on the GPU",
            asked.join(", ")
        ));
    }
    match &ask.cuda_ready {
        Ok(()) => Decode::Cuda,
        Err(why) => Decode::Host(why.clone()),
    }
}

/// Why a stream with pixel aspect ratio `par` cannot stay in CUDA memory: the live picture has square pixels,
/// which videoscale makes in system memory.
pub fn non_square(par: gstreamer::Fraction) -> Option<String> {
    (par.numer() != par.denom() && par.numer() > 0)
        .then(|| format!("its pixels are not square (aspect ratio {}:{}), which videoscale corrects in system memory", par.numer(), par.denom()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(input: &str) -> DecodeAsk<'static> {
        let input: &'static InputSpec = Box::leak(Box::new(input.parse().unwrap()));
        DecodeAsk { device_stages: true, input, capture: Capture::default(), host_decode: false, cuda_ready: Ok(()) }
    }

    fn reason(d: Decode) -> String {
        match d {
            Decode::Host(why) => why,
            Decode::Cuda => panic!("expected host decoding"),
        }
    }

    #[test]
    fn files_and_network_streams_on_the_gpu_stages_decode_into_cuda_memory() {
        for input in ["clip.mp4", "rtsp://cam/stream", "rtmp://host/live/key", "srt://host:9000", "http://host/a.mkv", "udp://0.0.0.0:5000"] {
            assert_eq!(decide(&ask(input)), Decode::Cuda, "{input}");
        }
        assert_eq!(Decode::Cuda.to_string(), "cuda");
    }

    #[test]
    fn webcams_and_the_test_pattern_are_uploaded() {
        assert!(reason(decide(&ask("/dev/video0"))).contains("webcam"));
        assert!(reason(decide(&ask("testsrc:ball"))).contains("test pattern"));
    }

    #[test]
    fn cpu_stages_decode_to_system_memory() {
        let a = DecodeAsk { device_stages: false, ..ask("clip.mp4") };
        assert_eq!(decide(&a).to_string(), "host: the stages run on the CPU");
    }

    #[test]
    fn host_decode_asked_for_wins_and_is_named() {
        let a = DecodeAsk { host_decode: true, ..ask("rtsp://cam/stream") };
        assert_eq!(decide(&a).to_string(), "host: asked for with --host-decode");
        // Also on the CPU stages: what the user said comes first.
        let a = DecodeAsk { host_decode: true, device_stages: false, ..ask("clip.mp4") };
        assert!(reason(decide(&a)).contains("--host-decode"));
    }

    #[test]
    fn a_size_or_rate_asked_for_keeps_scaling_in_system_memory() {
        let sized = DecodeAsk { capture: Capture { width: Some(1280), height: Some(720), fps: None }, ..ask("clip.mp4") };
        let why = reason(decide(&sized));
        assert!(why.starts_with("--size asked for scaling") && !why.contains("--fps"), "{why}");
        let both = DecodeAsk { capture: Capture { width: Some(1280), height: Some(720), fps: Some(25) }, ..ask("rtsp://cam/s") };
        assert!(reason(decide(&both)).starts_with("--size, --fps asked for"));
        let rate = DecodeAsk { capture: Capture { fps: Some(25), ..Default::default() }, ..ask("clip.mp4") };
        assert!(reason(decide(&rate)).starts_with("--fps asked for"));
    }

    #[test]
    fn missing_nvcodec_is_the_reason_given() {
        let a = DecodeAsk { cuda_ready: Err("GStreamer's nvcodec plugin is not installed".into()), ..ask("clip.mp4") };
        assert_eq!(decide(&a).to_string(), "host: GStreamer's nvcodec plugin is not installed");
        // Not asked when something else already rules CUDA decoding out.
        let a = DecodeAsk { cuda_ready: Err("not installed".into()), ..ask("/dev/video0") };
        assert!(reason(decide(&a)).contains("webcam"));
    }

    #[test]
    fn only_square_pixels_stay_on_the_gpu() {
        use gstreamer::Fraction;
        assert_eq!(non_square(Fraction::new(1, 1)), None);
        assert_eq!(non_square(Fraction::new(2, 2)), None);
        assert!(non_square(Fraction::new(16, 15)).unwrap().contains("16:15"));
    }
}
