//! `matteflow live` and `matteflow run FILE`: the command-line side of live matting and pipeline files
//! (part of the binary; the work is done by `matteflow::live`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use matteflow::config::BackgroundSpec;
use matteflow::live::{self, job, Capture, ControlConfig, InputSpec, LiveConfig, OutputOptions, OutputSpec};

use crate::ModelArgs;

#[derive(Args)]
pub struct LiveArgs {
    /// Source: testsrc[:pattern], /dev/videoN (webcam), rtsp:// rtmp:// srt:// http(s):// URI, or a file
    #[arg(short, long)]
    input: InputSpec,
    /// Destination (repeat for several at once): rtmp://HOST/APP/KEY, v4l2:/dev/videoN (virtual camera),
    /// screen, or a recording: .mp4/.flv (H.264), .mov (ProRes, alpha), .mkv (FFV1, alpha), .webm, folder/
    #[arg(short, long = "output", required = true)]
    outputs: Vec<OutputSpec>,
    /// Capture size WxH, e.g. 1280x720 (default: what the source gives; the test pattern gives 1280x720)
    #[arg(long, value_parser = parse_wh)]
    size: Option<[u32; 2]>,
    /// Capture frame rate (default: what the source gives; the test pattern gives 30)
    #[arg(long)]
    fps: Option<u32>,
    /// Decode a file or network stream into system memory and upload each frame, even where the GPU stages
    /// could take it from GStreamer's nvcodec in CUDA memory (see convert --host-decode)
    #[arg(long)]
    host_decode: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// blur[=radius] | colour (green, blue, black, white, #RRGGBB) | image file | video file | transparent
    #[arg(short, long, default_value = "blur")]
    background: BackgroundSpec,
    #[command(flatten)]
    matte: LiveMatteArgs,
    #[command(flatten)]
    encode: EncodeArgs,
    /// Sound: auto (the source's, else the default microphone, else none), none, source, pulse[:DEVICE],
    /// alsa:hw:N, pipewire[:TARGET]
    #[arg(long, default_value = "auto", help_heading = "Sound")]
    audio: live::audio::AudioSpec,
    /// AAC bitrate for RTMP and .mp4/.flv recordings, kbit/s
    #[arg(long, default_value_t = 160, help_heading = "Sound")]
    audio_bitrate: u32,
    /// Start with the sound muted (POST /unmute on the control endpoint turns it on)
    #[arg(long, help_heading = "Sound")]
    mute: bool,
    /// Serve metrics and live control on this address (default 127.0.0.1:8787; a bare port means loopback)
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8787", value_parser = parse_addr)]
    control: Option<std::net::SocketAddr>,
    /// Folder the control endpoint may pick image/video backgrounds from
    #[arg(long, value_name = "DIR")]
    background_dir: Option<PathBuf>,
    /// Token every control request must carry (Authorization: Bearer T, or ?token=T); off loopback one is
    /// generated and printed once when this is not given
    #[arg(long, value_name = "TOKEN")]
    control_token: Option<String>,
    /// Print statistics every N seconds (0: only at exit)
    #[arg(long, default_value_t = 5)]
    stats_interval: u32,
    /// Stop after this many output frames
    #[arg(long)]
    max_frames: Option<u64>,
    /// Stop after this many seconds
    #[arg(long)]
    duration: Option<f64>,
    /// Write the final statistics as JSON to this file
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct LiveMatteArgs {
    /// Temporal smoothing: weight of the previous mask where the picture is still (0 = off)
    #[arg(long, default_value_t = 0.5, help_heading = "Matte")]
    smooth: f32,
    /// Picture change (0..1) at which smoothing stops, so moving edges do not lag
    #[arg(long, default_value_t = 0.03, help_heading = "Matte")]
    motion_threshold: f32,
    /// Remap alpha: LO:HI (e.g. 0.1:0.9)
    #[arg(long, value_parser = crate::parse_threshold, help_heading = "Matte")]
    threshold: Option<(f32, f32)>,
    /// Refine edges against the full-resolution frame (guided filter)
    #[arg(long, help_heading = "Matte")]
    refine: bool,
    /// Feather the edge by this many pixels
    #[arg(long, default_value_t = 0, help_heading = "Matte")]
    feather: u32,
    /// Run the model on every Nth frame only; the others reuse the latest mask
    #[arg(long, default_value_t = 1, help_heading = "Matte")]
    infer_every: u32,
    /// How long a frame may wait for its own mask before the latest one is used, ms
    #[arg(long, default_value_t = 40, help_heading = "Matte")]
    budget_ms: u32,
    /// Where preprocess, mask steps and compositing run (auto: the GPU's when the model runs on CUDA)
    #[arg(long, value_enum, default_value_t = matteflow::engine::StagesChoice::Auto, help_heading = "Matte")]
    stages: matteflow::engine::StagesChoice,
}

#[derive(Args, Clone)]
pub struct EncodeArgs {
    /// H.264 bitrate for RTMP and .mp4/.flv recordings, kbit/s
    #[arg(long, default_value_t = 4000, help_heading = "Encoding and network")]
    bitrate: u32,
    /// x264 speed preset (ultrafast, superfast, veryfast, faster, fast, medium)
    #[arg(long, default_value = "veryfast", help_heading = "Encoding and network")]
    x264_preset: String,
    /// RTMP server not answering at start: wait up to this many seconds (0: fail at once)
    #[arg(long, default_value_t = 0, help_heading = "Encoding and network")]
    rtmp_start_timeout: u32,
    /// Seconds between reconnection attempts when the RTMP server drops
    #[arg(long, default_value_t = 2, help_heading = "Encoding and network")]
    rtmp_retry: u32,
    /// Virtual camera pixel format (YUY2 suits browsers; I420 also common)
    #[arg(long, default_value = "YUY2", help_heading = "Encoding and network")]
    vcam_format: String,
    /// Replace recordings that exist
    #[arg(long, help_heading = "Encoding and network")]
    overwrite: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// Pipeline file (see pipelines/)
    file: PathBuf,
    /// Override a value: section.key=value (e.g. --set matte.smooth=0.7 --set input.source=testsrc)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Replace the file's input
    #[arg(short, long)]
    input: Option<String>,
    /// Replace the file's outputs (repeat for several)
    #[arg(short, long = "output")]
    outputs: Vec<String>,
    /// Replace the file's background
    #[arg(short, long)]
    background: Option<String>,
    /// Stop after this many seconds (live jobs)
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many output frames (live jobs)
    #[arg(long)]
    max_frames: Option<u64>,
    /// Write the final statistics (live) or report (conversion) as JSON to this file
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Replace outputs that exist (= --set encode.overwrite=true)
    #[arg(long)]
    overwrite: bool,
    /// RTMP server not answering at start: wait up to this many seconds (= --set encode.rtmp_start_timeout_s=S)
    #[arg(long, value_name = "S")]
    rtmp_start_timeout: Option<u32>,
}

fn parse_wh(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or("size is WxH, e.g. 1280x720")?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| "bad width")?, h.trim().parse().map_err(|_| "bad height")?);
    if w == 0 || h == 0 || w > 8192 || h > 8192 || w % 2 == 1 || h % 2 == 1 {
        return Err("width and height must be even, from 2 to 8192".into());
    }
    Ok([w, h])
}

fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("'{s}' is not PORT or IP:PORT (e.g. 8787 or 127.0.0.1:8787)"))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Runs a live configuration with the CLI's printing, signals and model switching.
fn go_live(cfg: &LiveConfig, model: &job::ModelSection, cancel: Arc<AtomicBool>, report: Option<&PathBuf>) -> anyhow::Result<()> {
    // Network outputs must see a closed connection as an error to reconnect from, not die of SIGPIPE (which
    // main() restores to the default for the benefit of `matteflow models | head`).
    // SAFETY: changing a signal disposition; no handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let seg = model.open(&model.name)?;
    let m2 = model.clone();
    let opener: live::control::ModelOpener = Arc::new(move |name: &str| m2.open(name));
    let mut on_window = |w: &live::LiveSummary| eprintln!("matteflow live: {w}");
    let mut on_started = |addr: Option<std::net::SocketAddr>| {
        let outs: Vec<String> = cfg.outputs.iter().map(|o| String::from(o.clone())).collect();
        eprintln!("matteflow live: {} → {} (Ctrl-C to stop)", cfg.input.describe(), outs.join(", "));
        if let Some(a) = addr {
            eprintln!(
                "matteflow live: control on http://{a} (panel: GET /; GET /metrics, /status; POST /background, /model, /pause, /resume, /matte, /mute, /unmute)"
            );
        }
    };
    let hooks = live::LiveHooks {
        cancel,
        on_window: Some(&mut on_window),
        open_model: Some(opener),
        on_started: Some(&mut on_started),
    };
    let r = live::run(cfg, seg, hooks)?;
    eprintln!("matteflow live: {}; whole run: {}", r.stopped, r.summary);
    if !r.summary.cpu_by_thread.is_empty() {
        eprintln!("matteflow live: CPU by thread: {}", r.summary.cpu_breakdown(8));
    }
    for f in &r.output_failures {
        eprintln!("matteflow live: {f}");
    }
    for p in &r.recordings {
        println!("{}", p.display());
    }
    if let Some(p) = report {
        std::fs::write(p, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn live(a: LiveArgs, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut cfg = LiveConfig::new(a.input, a.outputs);
    cfg.capture = Capture { width: a.size.map(|s| s[0]), height: a.size.map(|s| s[1]), fps: a.fps };
    cfg.host_decode = a.host_decode;
    cfg.matte.set_background(a.background);
    cfg.matte.post = matteflow::postprocess::PostprocessConfig {
        smooth: a.matte.smooth,
        motion_threshold: a.matte.motion_threshold,
        threshold: a.matte.threshold,
        refine: a.matte.refine,
        feather: a.matte.feather,
    };
    cfg.matte.infer_every = a.matte.infer_every;
    cfg.stages = a.matte.stages;
    cfg.budget_ms = a.matte.budget_ms;
    cfg.output_options = OutputOptions {
        bitrate_kbps: a.encode.bitrate,
        x264_preset: a.encode.x264_preset,
        rtmp_start_timeout_s: a.encode.rtmp_start_timeout,
        rtmp_retry_s: a.encode.rtmp_retry,
        vcam_format: a.encode.vcam_format,
        overwrite: a.encode.overwrite,
    };
    cfg.audio = live::audio::AudioOptions { source: a.audio, bitrate_kbps: a.audio_bitrate, muted: a.mute };
    cfg.control = a.control.map(|listen| ControlConfig { listen, background_dir: a.background_dir.clone(), models: Vec::new(), token: a.control_token.clone() });
    cfg.stats_interval_s = a.stats_interval;
    cfg.max_frames = a.max_frames;
    cfg.duration_s = a.duration;
    let model = job::ModelSection {
        name: a.model.model.clone(),
        manifest: a.model.manifest.clone(),
        device: match a.model.device {
            matteflow::runtime::DeviceChoice::Auto => "auto".into(),
            matteflow::runtime::DeviceChoice::Cpu => "cpu".into(),
            matteflow::runtime::DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        },
        threads: a.model.threads,
        trt_fp16: a.model.trt_fp16,
        trt_cache: a.model.trt_cache.clone(),
        ort_spin: a.model.ort_spin,
        cudnn_search: a.model.cudnn_search,
        no_prepared: a.model.no_prepared,
    };
    go_live(&cfg, &model, cancel, a.report.as_ref())
}

pub fn run_file(a: RunArgs, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    // Settings come from the pipeline file here: hints name its keys (and `--set`), not other commands' flags.
    matteflow::hint::speak(matteflow::hint::Dialect::PipelineFile);
    let mut sets = a.sets.clone();
    if let Some(i) = &a.input {
        sets.push(format!("input.source={}", toml_string(i)));
    }
    if let Some(b) = &a.background {
        sets.push(format!("matte.background={}", toml_string(b)));
    }
    if let Some(d) = a.duration {
        sets.push(format!("run.duration_s={d}"));
    }
    if let Some(m) = a.max_frames {
        sets.push(format!("run.max_frames={m}"));
    }
    if a.overwrite {
        sets.push("encode.overwrite=true".into());
    }
    if let Some(s) = a.rtmp_start_timeout {
        sets.push(format!("encode.rtmp_start_timeout_s={s}"));
    }
    if !a.outputs.is_empty() {
        let list: Vec<String> = a.outputs.iter().map(|o| format!("{{ target = {} }}", toml_string(o))).collect();
        sets.push(format!("output=[{}]", list.join(", ")));
    }
    let file = job::JobFile::load(&a.file, &sets)?;
    let model = file.model.clone();
    match file.into_job()? {
        job::Job::Live(cfg) => go_live(&cfg, &model, cancel, a.report.as_ref()),
        job::Job::Convert { config: cfg, allow_short } => {
            let seg = model.open(&model.name)?;
            let mut last = std::time::Instant::now();
            let mut progress = |p: matteflow::Progress| {
                if last.elapsed().as_secs() >= 5 {
                    last = std::time::Instant::now();
                    eprintln!("matteflow: {} frames", p.frames);
                }
            };
            let ctl = matteflow::RunControl { cancel, progress: Some(&mut progress), allow_short };
            let r = matteflow::convert(&cfg, seg, ctl)?;
            println!("{} ({} frames, {:.1} fps)", r.output, r.frames, r.fps());
            if let Some(p) = &a.report {
                std::fs::write(p, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
    }
}
