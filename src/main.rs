//! The `matteflow` command line: a thin clap front end over the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use matteflow::config::{BackgroundSpec, ConvertConfig, Format, OutputKind};
use matteflow::model::{self, Activation, ColorOrder, Layout, ManualSpec, ResizeMode};
use matteflow::runtime::{DeviceChoice, ProviderOptions};

mod cli_live;

#[derive(Parser)]
#[command(name = "matteflow", version, about = "Separate people and objects from the background of video, in real time")]
struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Path to libonnxruntime.so (default: ORT_DYLIB_PATH, the set-up's .deps/, then Python site-packages)
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a video file: matte every frame and write alpha, composite, mask or side-by-side video
    Convert(ConvertArgs),
    /// Matte a live source (webcam, stream, test pattern) to RTMP, a virtual camera, the screen and recordings at once
    Live(cli_live::LiveArgs),
    /// Run a pipeline file (pipelines/*.toml): a live job or a file conversion, with overrides
    Run(cli_live::RunArgs),
    /// Convert folders of footage: mirrors the tree, skips finished outputs, several files at once, reports
    Batch(BatchArgs),
    /// Time each stage on an input and print milliseconds per frame and end-to-end fps
    Bench(BenchArgs),
    /// List the shipped model manifests and whether their files are present
    Models,
    /// Say what a conversion will do to an input: size, rotation, scan type, streams, frame-rate mode, output size
    Probe {
        /// Video, photo or animated image
        input: String,
    },
    /// Check GStreamer plugins, ONNX Runtime and its execution providers, CUDA
    Doctor(ModelArgs),
    /// Measure matte quality (alpha error, composite error, flicker, lag) of settings side by side on
    /// synthetic scenes with known alpha; writes a table (markdown, JSON) and a plot (SVG)
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Folder for eval.md, eval.json and eval.svg
        #[arg(short, long, default_value = "out/eval")]
        out_dir: PathBuf,
        /// Frames per scene
        #[arg(long, default_value_t = 40)]
        frames: usize,
    },
    /// Compile the CUDA kernels (no GPU needed) and, on a GPU, check each against the CPU stage and time both
    GpuCheck {
        /// Only compile the kernels to PTX (what CI runs)
        #[arg(long)]
        compile_only: bool,
        /// Timed repetitions per case
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Also decode this clip into CUDA memory (nvcodec) and check the kernels on the decoder's own buffers
        /// (default: the shipped assets/media/bikes.mp4 where GStreamer has nvh264dec)
        #[arg(long, value_name = "CLIP")]
        decode: Option<String>,
        /// Frames of --decode to check
        #[arg(long, default_value_t = 120)]
        frames: usize,
        /// Also write the PTX here (kernels-compute_80.ptx, kernels-compute_90.ptx), e.g. to assemble it with ptxas
        #[arg(long, value_name = "DIR")]
        ptx_dir: Option<PathBuf>,
    },
    /// Time the model alone on the GPU: host tensors vs IO binding on device buffers, batch sizes, GPU memory,
    /// achieved TFLOP/s; the device result is checked against the host result
    GpuBench {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch sizes for the device path (more than 1 needs a model with a dynamic batch dimension)
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batch: Vec<usize>,
        /// Timed runs per configuration (median and min are reported)
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The model's GFLOP per frame, to report achieved TFLOP/s
        #[arg(long)]
        gflop: Option<f64>,
        /// Skip the host-tensor path
        #[arg(long)]
        device_only: bool,
        /// Write the rows as JSON here
        #[arg(long)]
        json: Option<PathBuf>,
        /// Give up (and print every thread's state) after this many seconds
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Idle this long before each timed run (a pipeline's inference thread waits for frames between runs;
        /// this shows what idle gaps cost: clocks, wake-ups)
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Also time the queued runs with the GPU's L2 cache flushed before each (a write of twice its size on the
        /// run's stream, outside the timed span): the model as a pipeline runs it, with the frame kernels' data in
        /// the cache instead of the last run's
        #[arg(long)]
        flush_l2: bool,
        /// Feed the model this picture (any still-image format; preprocessed as the CPU stages do) instead of
        /// random values
        #[arg(long, value_name = "PATH")]
        input_image: Option<PathBuf>,
        /// After the timed runs of the first batch size, one more run between cuProfilerStart and cuProfilerStop:
        /// `ncu --profile-from-start off` then times exactly one steady-state run (scripts/gpu-bench.sh ncu-*)
        #[arg(long)]
        profile_run: bool,
        /// Also time the queued runs with other work beside them in the same CUDA context, paced at the model's
        /// rate: `decode:CLIP` (the clip decoded as the GPU stages' pipeline decodes it: nvh264dec into CUDA
        /// memory, looped), `gst:DESCRIPTION` (a gst-launch description ending in `appsink name=sink`, CUDA
        /// elements given this context; `gst-own:` leaves them their own), or one 1080p NV12 frame's worth of
        /// `memset`, `kernel` (RGBA → I420), `copy` (device to device), `upload` (from page-locked memory) or
        /// `alloc` (cuMemAlloc and cuMemFree) on a stream of its own, `memset-null` on the legacy default stream,
        /// `memset-ctx` in a context of its own; `NxSPEC`: N at a time every N runs. The runs are timed again
        /// once it has stopped
        #[arg(long, value_name = "SPEC")]
        beside: Option<String>,
        /// The queued runs each launched only once the stream has finished the one before (the host waits
        /// for it): the GPU is idle for the launch's latency before each run
        #[arg(long)]
        wait_idle: bool,
    },
    /// Rewrite an ONNX model (BiRefNet and kin) once into the graph ONNX Runtime's CUDA provider runs fastest,
    /// same outputs (shape arithmetic folded, Swin's window shuffles as one row Gather, attention biases moved,
    /// MatMul biases fused into BiasGelu / SkipLayerNormalization, BatchNorm into convolutions, optional float16;
    /// with --fp16 also matteflow's own WindowAttention and DeformIm2Col operators, which only matteflow runs).
    /// Cached by the model's hash; prints the prepared file's path. With --device cuda every command then runs
    /// the prepared graph by itself. Needs Python 3 with onnx
    Prepare {
        /// The .onnx file (an official BiRefNet export or your own)
        model: PathBuf,
        /// Also convert to float16 (input and output stay float32); needs onnxconverter-common
        #[arg(long)]
        fp16: bool,
        /// Passes in order, comma-separated (default: fold,window-gather,gather-linear,qkv-bias,window-pad,
        /// bias-gelu,skip-layernorm,conv-bn; with --fp16: fold,window-gather,gather-linear,window-attention,
        /// qkv-bias,window-pad,bias-gelu,skip-layernorm,conv-bn,deform-im2col,fold; also head-gather; none for none)
        #[arg(long)]
        passes: Option<String>,
        /// With --fp16: operators kept in float32 (e.g. DeformConv)
        #[arg(long, value_delimiter = ',')]
        keep_fp32: Vec<String>,
        /// The `fold` pass's size limit: the largest constant (in elements) written into the prepared file;
        /// larger ones stay computed at run time from the largest pieces within it (default 16777216)
        #[arg(long, value_name = "ELEMENTS")]
        fold_limit: Option<u64>,
        /// Write here instead of the cache ($MATTEFLOW_CACHE_DIR or ~/.cache/matteflow/prepared/)
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Python with the onnx package (default: $MATTEFLOW_PYTHON, else python3)
        #[arg(long)]
        python: Option<PathBuf>,
        /// Also write the passes' report (rewrites per pass, node counts before and after) as JSON here
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Convert the shipped sample clip with the default model (the README's first command)
    Demo {
        /// Folder for the outputs
        #[arg(short, long, default_value = "out")]
        out_dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a shipped name (see `matteflow models`), a manifest .toml, or an .onnx file
    #[arg(short, long, default_value = model::DEFAULT_MODEL)]
    model: String,
    /// Manifest describing an .onnx given to --model
    #[arg(long, value_name = "TOML")]
    manifest: Option<PathBuf>,
    /// Device: auto (CUDA when available, else CPU), cpu, cuda, cuda:N
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Inference threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// TensorRT: build fp16 engines
    #[arg(long)]
    trt_fp16: bool,
    /// TensorRT: engine and timing cache folder
    #[arg(long, value_name = "DIR")]
    trt_cache: Option<PathBuf>,
    /// CUDA: run without ONNX Runtime's CUDA graphs. They are on by default for the model's device runs (the GPU
    /// stages and gpu-bench; each binding and input size captures its own, host runs none; a model the CUDA EP
    /// cannot capture is opened again without). With the GPU stages, which queue the runs on the GPU, graphs
    /// take ONNX Runtime's launch cost off the host: on an H200 the prepared BiRefNet lite went from 96–98 to
    /// 113–114 fps end to end (1080p), masks identical (docs/BENCHMARKS.md, 2026-12-03)
    #[arg(long)]
    no_cuda_graph: bool,
    /// (CUDA graphs are on by default; kept so that older command lines still run.)
    #[arg(long, hide = true)]
    cuda_graph: bool,
    /// CUDA: prefer NHWC convolution kernels
    #[arg(long)]
    cuda_nhwc: bool,
    /// CUDA, advanced: any other CUDA execution provider option as KEY=VALUE (repeatable), e.g.
    /// fuse_conv_bias=1, cudnn_conv_use_max_workspace=0, sdpa_kernel=N (ONNX Runtime's CUDA EP documentation)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    cuda_option: Vec<(String, String)>,
    /// CUDA: how cuDNN convolution algorithms are chosen on the first run (exhaustive: fastest kernels, a few
    /// seconds of warm-up; heuristic: quick start, fails on some fp16 models such as BiRefNet fp16)
    #[arg(long, value_enum, default_value_t)]
    cudnn_search: matteflow::runtime::CudnnSearch,
    /// Write ONNX Runtime's per-node profile (JSON) with this file prefix
    #[arg(long, value_name = "PREFIX")]
    ort_profile: Option<PathBuf>,
    /// Let ONNX Runtime's CPU threads spin between runs (its default; off here because decoding, compositing
    /// and encoding need those cores)
    #[arg(long)]
    ort_spin: bool,
    /// CUDA: run the model file as given, not the prepared graph `matteflow prepare` left in the cache for it
    #[arg(long)]
    no_prepared: bool,
    /// Own model: input tensor name
    #[arg(long, help_heading = "Own model (without a manifest)")]
    input_name: Option<String>,
    /// Own model: output tensor name
    #[arg(long, help_heading = "Own model (without a manifest)")]
    output_name: Option<String>,
    /// Own model: input size HxW, e.g. 1024x1024
    #[arg(long, value_parser = parse_size, help_heading = "Own model (without a manifest)")]
    input_size: Option<[u32; 2]>,
    /// Own model: nchw or nhwc
    #[arg(long, value_parser = parse_layout, help_heading = "Own model (without a manifest)")]
    layout: Option<Layout>,
    /// Own model: rgb or bgr
    #[arg(long, value_parser = parse_color, help_heading = "Own model (without a manifest)")]
    color: Option<ColorOrder>,
    /// Own model: pixel scale before mean/std (default 1/255)
    #[arg(long, help_heading = "Own model (without a manifest)")]
    scale: Option<f32>,
    /// Own model: per-channel mean, e.g. 0.485,0.456,0.406
    #[arg(long, value_parser = parse_triple, help_heading = "Own model (without a manifest)")]
    mean: Option<[f32; 3]>,
    /// Own model: per-channel std, e.g. 0.229,0.224,0.225
    #[arg(long, value_parser = parse_triple, help_heading = "Own model (without a manifest)")]
    std: Option<[f32; 3]>,
    /// Own model: output activation: none (probability) or sigmoid (logits)
    #[arg(long, value_parser = parse_activation, help_heading = "Own model (without a manifest)")]
    activation: Option<Activation>,
    /// Own model: aspect handling: stretch or letterbox
    #[arg(long, value_parser = parse_resize, help_heading = "Own model (without a manifest)")]
    resize: Option<ResizeMode>,
}

#[derive(Args)]
struct ConvertArgs {
    /// Input video, photo (JPEG, PNG, WebP) or animated image (GIF, APNG, WebP): a file path or a URI (file://,
    /// http://, rtsp://)
    input: String,
    /// Output: .mov (ProRes 4444, alpha), .mkv (FFV1, alpha), .mp4 (H.264), .webm (VP9), folder/ (PNG frames), or
    /// for a photo .png (alpha), .jpg (composite), .webp (alpha)
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// transparent | colour (green, blue, black, white, #RRGGBB) | image file | video file | blur[=radius]
    #[arg(short, long)]
    background: Option<BackgroundSpec>,
    /// What the output shows (default: alpha for .mov/.mkv/PNG, composite otherwise)
    #[arg(short = 'k', long, value_enum)]
    output_kind: Option<OutputKind>,
    /// Container/codec, when the output name does not say
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    /// Replace the output if it exists
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    quality: QualityArgs,
    /// Keep the decodable frames of a truncated input instead of failing
    #[arg(long)]
    allow_short: bool,
    /// Leave interlaced input as it is (both fields woven into each frame); by default interlaced video is
    /// deinterlaced before the model and written progressive (progressive input is never touched)
    #[arg(long)]
    no_deinterlace: bool,
    /// Which video stream to convert when the input has several (0: the first; the log lists them)
    #[arg(long, default_value_t = 0, value_name = "N")]
    video_stream: usize,
    /// Print per-stage timings at the end
    #[arg(long)]
    stats: bool,
    /// Write the run's report as JSON to this file
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Consecutive frames per inference call (needs a model with a dynamic batch dimension; the output is the
    /// same for any value). Pays off on GPUs; on CPUs 1 is as fast
    #[arg(long, default_value_t = 1, value_parser = parse_batch, value_name = "N")]
    batch: usize,
}

fn parse_batch(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("'{s}' is not a whole number of frames per inference call (1 to 64)"))?;
    match n {
        0 => Err("0 frames per inference call runs nothing: use 1 (one frame per call) up to 64".into()),
        1..=64 => Ok(n),
        _ => Err(format!("{n} frames per call would hold {n} frames' tensors in memory at once: use at most 64")),
    }
}

#[derive(Args, Clone, Default)]
struct QualityArgs {
    /// Temporal smoothing: weight of the previous mask where the picture is still (0 = off, 0.6 is a good start)
    #[arg(long, default_value_t = 0.0, help_heading = "Matte quality")]
    smooth: f32,
    /// Picture change (0..1) at which smoothing stops, so moving edges do not lag
    #[arg(long, default_value_t = 0.03, help_heading = "Matte quality")]
    motion_threshold: f32,
    /// Remap alpha: LO:HI, values ≤ LO become transparent, ≥ HI opaque (e.g. 0.1:0.9)
    #[arg(long, value_parser = parse_threshold, help_heading = "Matte quality")]
    threshold: Option<(f32, f32)>,
    /// Refine the mask's edges against the full-resolution frame (guided filter)
    #[arg(long, help_heading = "Matte quality")]
    refine: bool,
    /// Feather the edge by this many pixels
    #[arg(long, default_value_t = 0, help_heading = "Matte quality")]
    feather: u32,
    /// Estimate the subject's colour at soft edges (no halo of the old background)
    #[arg(long, help_heading = "Matte quality")]
    fg_estimate: bool,
    /// Run preprocess, mask upsampling and compositing on the GPU, with the model's input and output in device
    /// memory (IO binding; CUDA provider; any background, --smooth, --threshold; not yet side-by-side, --refine, --feather, --fg-estimate)
    #[arg(long, overrides_with = "stages")]
    cuda_stages: bool,
    /// Where preprocess, mask steps and compositing run (auto: on the GPU where the model runs on CUDA and they do
    /// what was asked; --cuda-stages is --stages gpu; the later of the two wins)
    #[arg(long, value_enum, default_value_t = matteflow::engine::StagesChoice::Auto, overrides_with = "cuda_stages")]
    stages: matteflow::engine::StagesChoice,
    /// With --cuda-stages: decode into system memory and upload each frame, even where GStreamer's nvcodec could
    /// leave decoded frames in CUDA memory
    #[arg(long)]
    host_decode: bool,
}

impl QualityArgs {
    fn post(&self) -> matteflow::postprocess::PostprocessConfig {
        matteflow::postprocess::PostprocessConfig {
            smooth: self.smooth,
            motion_threshold: self.motion_threshold,
            threshold: self.threshold,
            refine: self.refine,
            feather: self.feather,
        }
    }

    /// The engine's settings these flags ask for (background and kind are settled per output).
    fn matte(&self) -> matteflow::engine::MatteSettings {
        matteflow::engine::MatteSettings { post: self.post(), fg_estimate: self.fg_estimate, ..Default::default() }
    }

    fn stages(&self) -> matteflow::engine::StagesChoice {
        if self.cuda_stages {
            matteflow::engine::StagesChoice::Gpu
        } else {
            self.stages
        }
    }
}

fn parse_threshold(s: &str) -> Result<(f32, f32), String> {
    let (a, b) = s.split_once(':').ok_or("threshold is LO:HI, e.g. 0.1:0.9")?;
    let (a, b): (f32, f32) = (a.parse().map_err(|_| "bad LO")?, b.parse().map_err(|_| "bad HI")?);
    if !(0.0..1.0).contains(&a) || !(a < b && b <= 1.0) {
        return Err("need 0 ≤ LO < HI ≤ 1".into());
    }
    Ok((a, b))
}

#[derive(Args)]
struct BatchArgs {
    /// Input files and folders (folders are walked; video files are picked by extension)
    inputs: Vec<PathBuf>,
    /// Output folder (the input tree is mirrored inside it)
    #[arg(short, long)]
    output: PathBuf,
    /// A file listing inputs, one per line
    #[arg(long, value_name = "FILE")]
    list: Option<PathBuf>,
    /// Glob pattern of inputs, e.g. 'footage/**/*.mov' (repeatable)
    #[arg(long = "glob", value_name = "PATTERN")]
    globs: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Output format for every file
    #[arg(short, long, value_enum, default_value = "prores")]
    format: Format,
    #[arg(short = 'k', long, value_enum)]
    output_kind: Option<OutputKind>,
    #[arg(short, long)]
    background: Option<BackgroundSpec>,
    #[command(flatten)]
    quality: QualityArgs,
    /// Files converted at once (default: 1 per 2 cores, at least 1; they share one loaded model, and with more than
    /// one the GPU stages run it without CUDA graphs)
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Frames per inference call: with --jobs > 1 frames of concurrent files share a call, with one job
    /// consecutive frames do (default: 1 on the CPU, 4 on a GPU; needs a model with a dynamic batch dimension)
    #[arg(long, value_parser = parse_batch, value_name = "N")]
    batch: Option<usize>,
    /// Redo outputs even when their completion record says they are done
    #[arg(long)]
    overwrite: bool,
    /// List what would be done, convert nothing
    #[arg(long)]
    dry_run: bool,
    /// Convert only shard INDEX of COUNT (INDEX/COUNT, from 0). Read from JOB_COMPLETION_INDEX +
    /// MATTEFLOW_SHARD_COUNT (Kubernetes) or SLURM_ARRAY_TASK_ID/COUNT (Slurm) when not given
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Write the per-file report as JSON (default: OUTPUT/matteflow-report.json)
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Write the per-file report as CSV (default: OUTPUT/matteflow-report.csv)
    #[arg(long, value_name = "FILE")]
    report_csv: Option<PathBuf>,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("shard is INDEX/COUNT, e.g. 0/4")?;
    let (i, n): (usize, usize) = (i.parse().map_err(|_| "bad INDEX")?, n.parse().map_err(|_| "bad COUNT")?);
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 ≤ INDEX < COUNT"));
    }
    Ok((i, n))
}

#[derive(Args)]
struct BenchArgs {
    /// Input video
    input: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Output format to encode to (the file goes to a temporary folder)
    #[arg(short, long, value_enum, default_value = "h264")]
    format: Format,
    #[arg(short = 'k', long, value_enum, default_value = "composite")]
    output_kind: OutputKind,
    #[arg(short, long, default_value = "green")]
    background: BackgroundSpec,
    /// Runs; the best is reported
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Use the GPU stages (see convert --cuda-stages)
    #[arg(long, overrides_with = "stages")]
    cuda_stages: bool,
    /// Where preprocess, mask steps and compositing run (default here: cpu, so that runs compare; auto: on the GPU
    /// where the model runs on CUDA and they do what was asked; --cuda-stages is --stages gpu; the later of the two wins)
    #[arg(long, value_enum, overrides_with = "cuda_stages")]
    stages: Option<matteflow::engine::StagesChoice>,
    /// With --cuda-stages: decode to system memory and upload (see convert --host-decode)
    #[arg(long)]
    host_decode: bool,
    /// Consecutive frames per inference call (see convert --batch)
    #[arg(long, default_value_t = 1, value_parser = parse_batch, value_name = "N")]
    batch: usize,
}

fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let (h, w) = s.split_once(['x', 'X']).ok_or("size is HxW, e.g. 1024x1024")?;
    Ok([h.trim().parse().map_err(|_| "bad height")?, w.trim().parse().map_err(|_| "bad width")?])
}
fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s.split(',').map(|x| x.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    v.try_into().map_err(|_| "three comma-separated numbers, e.g. 0.5,0.5,0.5".to_string())
}
fn parse_layout(s: &str) -> Result<Layout, String> {
    match s.to_ascii_lowercase().as_str() {
        "nchw" => Ok(Layout::Nchw),
        "nhwc" => Ok(Layout::Nhwc),
        _ => Err("nchw or nhwc".into()),
    }
}
fn parse_color(s: &str) -> Result<ColorOrder, String> {
    match s.to_ascii_lowercase().as_str() {
        "rgb" => Ok(ColorOrder::Rgb),
        "bgr" => Ok(ColorOrder::Bgr),
        _ => Err("rgb or bgr".into()),
    }
}
fn parse_activation(s: &str) -> Result<Activation, String> {
    match s {
        "none" => Ok(Activation::None),
        "sigmoid" => Ok(Activation::Sigmoid),
        _ => Err("none or sigmoid".into()),
    }
}
fn parse_resize(s: &str) -> Result<ResizeMode, String> {
    match s {
        "stretch" => Ok(ResizeMode::Stretch),
        "letterbox" => Ok(ResizeMode::Letterbox),
        _ => Err("stretch or letterbox".into()),
    }
}

impl ModelArgs {
    fn manual(&self) -> ManualSpec {
        ManualSpec {
            input_name: self.input_name.clone(),
            output_name: self.output_name.clone(),
            layout: self.layout,
            size: self.input_size,
            color: self.color,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
            activation: self.activation,
            resize: self.resize,
        }
    }
    fn provider_options(&self) -> ProviderOptions {
        ProviderOptions {
            device: self.device,
            trt_fp16: self.trt_fp16,
            trt_cache_dir: self.trt_cache.clone(),
            threads: self.threads,
            trt_profile: None,
            cuda_graph: !self.no_cuda_graph,
            cuda_nhwc: self.cuda_nhwc,
            cuda_options: self.cuda_option.clone(),
            cudnn_search: self.cudnn_search,
            profile: self.ort_profile.clone(),
            spin: self.ort_spin,
            ignore_prepared: self.no_prepared,
        }
    }
    fn open(&self) -> anyhow::Result<matteflow::infer::OnnxSegmenter> {
        let resolved = model::resolve(&self.model, self.manifest.as_deref(), &self.manual())?;
        Ok(matteflow::open_segmenter(resolved, &self.provider_options())?)
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // Which sound a live run carries, and how its video is decoded, are said at start, also without -v.
        0 => "warn,matteflow::live::audio=info,matteflow::live::decode=info,matteflow::cuda::nvdec=info",
        1 => "info,ort=warn",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// Ctrl-C / SIGTERM set the flag; the pipeline stops at the next frame and removes its partial output.
fn install_signal_handlers(rt: &tokio::runtime::Runtime, cancel: Arc<AtomicBool>) {
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            if cancel.swap(true, Ordering::SeqCst) {
                eprintln!("matteflow: second interrupt, exiting now");
                std::process::exit(130);
            }
            eprintln!("matteflow: interrupted, stopping…");
        }
    });
}

fn run_convert(a: &ConvertArgs, cancel: Arc<AtomicBool>) -> anyhow::Result<matteflow::stats::Report> {
    let segmenter = a.model.open()?;
    let mut cfg = ConvertConfig::new(a.input.clone(), a.output.clone());
    cfg.format = a.format;
    cfg.kind = a.output_kind;
    cfg.background = a.background.clone();
    cfg.overwrite = a.overwrite;
    cfg.matte = a.quality.matte();
    cfg.stages = a.quality.stages();
    cfg.cuda_decode = !a.quality.host_decode;
    cfg.batch = a.batch;
    cfg.deinterlace = !a.no_deinterlace;
    cfg.video_stream = a.video_stream;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} frames {per_sec} eta {eta}")
                .unwrap(),
        );
        Some(b)
    } else {
        None
    };
    let mut last_line = std::time::Instant::now();
    let started = std::time::Instant::now();
    let mut on_progress = |p: matteflow::Progress| {
        if let Some(b) = &bar {
            if let Some(t) = p.total {
                b.set_length(t.max(p.frames));
            }
            b.set_position(p.frames);
        } else if last_line.elapsed().as_secs() >= 5 {
            last_line = std::time::Instant::now();
            let fps = p.frames as f64 / started.elapsed().as_secs_f64();
            match p.total {
                Some(t) => eprintln!("matteflow: {}/{} frames, {:.1} fps", p.frames, t, fps),
                None => eprintln!("matteflow: {} frames, {:.1} fps", p.frames, fps),
            }
        }
    };
    let ctl = matteflow::RunControl { cancel, progress: Some(&mut on_progress), allow_short: a.allow_short };
    let r = matteflow::convert(&cfg, segmenter, ctl);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(r?)
}

fn main() {
    // Behave like other command-line tools when stdout is closed early (`matteflow models | head`): end
    // quietly instead of panicking in println!.
    // SAFETY: setting a signal disposition to its default before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    matteflow::element::register_static().unwrap_or_else(|e| eprintln!("matteflow: the matteflow GStreamer element is unavailable: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    let cancel = Arc::new(AtomicBool::new(false));
    install_signal_handlers(&rt, cancel.clone());
    if let Err(e) = matteflow::runtime::init(cli.ort_lib.as_deref()) {
        if !matches!(cli.cmd, Cmd::Models | Cmd::Prepare { .. } | Cmd::Probe { .. } | Cmd::Doctor(_) | Cmd::GpuCheck { .. } | Cmd::GpuBench { .. }) {
            eprintln!("matteflow: {e}");
            std::process::exit(2);
        }
    }
    let code = match run(cli, cancel.clone()) {
        Ok(()) => 0,
        Err(e) => {
            let interrupted = e.downcast_ref::<matteflow::Error>().is_some_and(|e| matches!(e, matteflow::Error::Interrupted(_)));
            eprintln!("matteflow: {e:#}");
            if interrupted { 130 } else { 1 }
        }
    };
    drop(rt);
    std::process::exit(code);
}

/// `gpu-check`'s first part (no GPU needed): every CUDA source compiled by NVRTC for Ampere and Hopper, each
/// checked for its kernels, the PTX written to `ptx_dir` (tests/cuda.rs assembles it with ptxas).
fn compile_kernels(ptx_dir: Option<&Path>) -> anyhow::Result<()> {
    for arch in ["compute_80", "compute_90"] {
        // (the window attention in the configuration BiRefNet's 12² = 144-token windows get)
        let cfg = matteflow::infer::window_attention::KernelConfig::for_tokens(144);
        let sources = [
            ("kernels", matteflow::cuda::compile(arch)?.to_src(), matteflow::cuda::KERNEL_NAMES),
            ("attention", matteflow::cuda::compile_attention(arch, &cfg.defines())?.to_src(), &["window_attention"][..]),
            ("deform", matteflow::cuda::compile_deform(arch)?.to_src(), &["deform_im2col"][..]),
        ];
        for (name, text, kernels) in sources {
            if let Some(d) = ptx_dir {
                let f = d.join(format!("{name}-{arch}.ptx"));
                std::fs::write(&f, &text).with_context(|| format!("writing {}", f.display()))?;
            }
            let entries: Vec<&str> = kernels.iter().copied().filter(|k| text.contains(&format!(".entry {k}("))).collect();
            println!("PTX compiled for {arch}: {} bytes, kernels: {}", text.len(), entries.join(", "));
            anyhow::ensure!(entries.len() == kernels.len(), "kernels missing from the {name} PTX");
        }
    }
    Ok(())
}

fn run(cli: Cli, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Convert(a) => {
            let r = run_convert(&a, cancel)?;
            if a.stats {
                eprint!("{}", r.table());
            }
            if let Some(p) = &a.report {
                std::fs::write(p, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", p.display()))?;
            }
            println!("{} ({} frames, {:.1} fps)", r.output, r.frames, r.fps());
        }
        Cmd::Bench(a) => bench(a, cancel)?,
        Cmd::Live(a) => cli_live::live(a, cancel)?,
        Cmd::Run(a) => cli_live::run_file(a, cancel)?,
        Cmd::Batch(a) => return batch(a, cancel),
        Cmd::Probe { input } => print!("{}", matteflow::probe::probe(&input)?),
        Cmd::Models => {
            for m in model::list() {
                println!("{:<18} {:<22} {}", m.name, m.input, m.status);
                println!("{:<18} {}", "", m.description);
                println!("{:<18} licence: {}", "", m.licence);
            }
        }
        Cmd::Prepare { model, fp16, passes, keep_fp32, fold_limit, output, python, report } => {
            let o = model::prepare::PrepareOptions { fp16, passes, keep_fp32, fold_limit, python, output, report };
            let p = model::prepare::prepare(&model, &o)?;
            if !p.fresh {
                eprintln!("already prepared (cached by the model's hash)");
            }
            println!("{}", p.path.display());
        }
        Cmd::Doctor(m) => {
            let mut bad = 0;
            for c in matteflow::doctor::run(cli.ort_lib.as_deref(), &m.provider_options()) {
                println!("{} {:<28} {}", c.mark(), c.name, c.detail);
                if !c.ok && (c.name == "ONNX Runtime" || c.name == "GStreamer" || c.name == "decode") {
                    bad += 1;
                }
            }
            if bad > 0 {
                anyhow::bail!("{bad} required component(s) missing: run scripts/setup.sh");
            }
        }
        Cmd::Demo { out_dir } => demo(&out_dir, cancel)?,
        Cmd::GpuCheck { compile_only, runs, decode, frames, ptx_dir } => {
            compile_kernels(ptx_dir.as_deref())?;
            if compile_only {
                return Ok(());
            }
            if !matteflow::cuda::driver_present() {
                println!("no CUDA driver on this machine: kernels compiled, not run (CPU stages are used)");
                return Ok(());
            }
            let results = matteflow::cuda::selftest::run(runs.max(3))?;
            println!("| case | max error | tolerance | ok | GPU ms | CPU ms |\n|---|---|---|---|---|---|");
            let mut bad = 0;
            for r in &results {
                println!("| {} | {:.3e} | {:.3e} | {} | {:.3} | {:.2} |", r.name, r.max_error, r.tolerance, if r.ok() { "yes" } else { "NO" }, r.gpu_ms, r.cpu_ms);
                bad += (!r.ok()) as usize;
            }
            // Real nvcodec buffers too, on the shipped clip, wherever GStreamer can decode into CUDA memory.
            let decode = decode.or_else(|| matteflow::cuda::nv12_check::default_decode_clip().map(|p| p.display().to_string()));
            if let Some(clip) = decode {
                let uri = matteflow::source::input_uri(&clip)?;
                let d = matteflow::cuda::selftest::decode_check(&uri, frames)?;
                println!(
                    "decoded {} frames of {clip} into CUDA memory ({}x{}, pitch {}, read as {:?}) via {}: {:.1} fps with both kernels",
                    d.frames, d.width, d.height, d.pitch, d.color, d.path, d.fps
                );
                for r in &d.cases {
                    println!("| {} | {:.3e} | {:.3e} | {} | {:.3} | – |", r.name, r.max_error, r.tolerance, if r.ok() { "yes" } else { "NO" }, r.gpu_ms);
                    bad += (!r.ok()) as usize;
                }
            }
            anyhow::ensure!(bad == 0, "{bad} kernel(s) disagree with the CPU beyond tolerance");
        }
        Cmd::GpuBench { model, batch, runs, gflop, device_only, json, timeout, pause_ms, flush_l2, input_image, profile_run, beside, wait_idle } => {
            let _dog = matteflow::cuda::bench::Watchdog::start("gpu-bench", timeout);
            // The CUDA context first (current on this thread), so memory in use is measured from before the model.
            let _gpu = matteflow::cuda::Gpu::open(0)?;
            let mem0 = matteflow::cuda::bench::gpu_mem_used_mib();
            let t = std::time::Instant::now();
            let mut seg = model.open()?;
            anyhow::ensure!(
                matteflow::infer::Segmenter::provider(&seg) != matteflow::runtime::Provider::Cpu,
                "the model opened on the CPU provider; gpu-bench needs CUDA (see `matteflow doctor`)"
            );
            let name = seg.model().manifest.name.clone();
            println!("model {name} on {}: session opened in {:.1} s; GPU memory in use {mem0:.0} MiB before it", matteflow::infer::Segmenter::provider(&seg).name(), t.elapsed().as_secs_f64());
            let o = matteflow::cuda::bench::BenchOptions {
                runs: runs.max(3),
                warmup: 5,
                batches: batch,
                gflop_per_frame: gflop,
                device_id: 0,
                host_path: !device_only,
                pause: std::time::Duration::from_millis(pause_ms),
                flush_l2,
                input: input_image.as_deref().map(|p| matteflow::cuda::bench::input_from_image(p, &seg.model().manifest)).transpose()?,
                profile_run,
                beside,
                wait_idle,
            };
            let rows = matteflow::cuda::bench::run(&mut seg, &o)?;
            print!("{}", matteflow::cuda::bench::table(&name, &rows));
            if model.ort_profile.is_some() {
                println!("ONNX Runtime profile: {}", seg.end_profiling()?);
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&rows)?).with_context(|| format!("writing {}", p.display()))?;
            }
        }
        Cmd::Eval { model, out_dir, frames } => {
            let mut seg = model.open()?;
            let person = sample_clip()?;
            let street = person.with_file_name("bikes.mp4");
            let scenes = matteflow::eval::build_scenes(&mut seg, &person, &street, frames.max(8))?;
            let results = matteflow::eval::evaluate(&mut seg, &scenes, &matteflow::eval::default_settings())?;
            let name = seg.model().manifest.name.clone();
            let table = matteflow::eval::table(&name, &results);
            std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
            std::fs::write(out_dir.join("eval.md"), &table)?;
            std::fs::write(out_dir.join("eval.json"), serde_json::to_string_pretty(&results)?)?;
            std::fs::write(out_dir.join("eval.svg"), matteflow::eval::flicker_svg(&results))?;
            print!("{table}");
            println!("\nwrote {}/eval.md, eval.json, eval.svg", out_dir.display());
        }
    }
    Ok(())
}

fn sample_clip() -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from("assets/media/carphone_pristine.mp4"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/media/carphone_pristine.mp4"),
    ];
    candidates.into_iter().find(|p| p.is_file()).context("the sample clip assets/media/carphone_pristine.mp4 is missing")
}

fn demo(out_dir: &std::path::Path, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let clip = sample_clip()?;
    let model = ModelArgs::try_parse_from_defaults();
    for (name, kind, bg) in [
        ("carphone_alpha.mov", OutputKind::Alpha, None),
        ("carphone_composite.mp4", OutputKind::Composite, Some(BackgroundSpec::Blur(12))),
        ("carphone_side_by_side.mp4", OutputKind::SideBySide, Some(BackgroundSpec::Colour([0, 177, 64]))),
    ] {
        let a = ConvertArgs {
            input: clip.display().to_string(),
            output: out_dir.join(name),
            model: model.clone(),
            background: bg,
            output_kind: Some(kind),
            format: None,
            overwrite: true,
            quality: QualityArgs { motion_threshold: 0.03, ..Default::default() },
            allow_short: false,
            no_deinterlace: false,
            video_stream: 0,
            stats: false,
            report: None,
            batch: 1,
        };
        let r = run_convert(&a, cancel.clone())?;
        println!("{:<48} {} frames {}x{} at {:.1} fps ({} on {})", r.output, r.frames, r.width, r.height, r.fps(), r.model, r.provider);
    }
    Ok(())
}

impl ModelArgs {
    fn try_parse_from_defaults() -> Self {
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            m: ModelArgs,
        }
        P::parse_from(["matteflow"]).m
    }
}

fn bench(a: BenchArgs, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("matteflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ext = match a.format {
        Format::Prores => "x.mov",
        Format::Png => "frames/",
        Format::Ffv1 => "x.mkv",
        Format::H264 => "x.mp4",
        Format::Vp9 => "x.webm",
        Format::PngImage => "x.png",
        Format::JpegImage => "x.jpg",
        Format::WebpImage => "x.webp",
    };
    let mut best: Option<matteflow::stats::Report> = None;
    for i in 0..a.runs.max(1) {
        let segmenter = a.model.open()?;
        let mut cfg = ConvertConfig::new(a.input.clone(), dir.join(ext));
        cfg.format = Some(a.format);
        cfg.kind = Some(a.output_kind);
        cfg.background = Some(a.background.clone());
        cfg.overwrite = true;
        cfg.stages = if a.cuda_stages { matteflow::engine::StagesChoice::Gpu } else { a.stages.unwrap_or(matteflow::engine::StagesChoice::Cpu) };
        cfg.cuda_decode = !a.host_decode;
        cfg.batch = a.batch;
        let r = matteflow::convert(&cfg, segmenter, matteflow::RunControl { cancel: cancel.clone(), progress: None, allow_short: false })?;
        eprintln!("run {}: {:.1} fps", i + 1, r.fps());
        if best.as_ref().is_none_or(|b| r.fps() > b.fps()) {
            best = Some(r);
        }
    }
    let r = best.unwrap();
    let d = matteflow::pipeline::decode_only(&a.input)?;
    // The same encoder chain on the decoded frames, no matting: what the two ends allow (x264 on the CPU where the
    // GPU has no NVENC).
    let on_gpu = r.provider != matteflow::runtime::Provider::Cpu.name();
    let ends = dir.join(format!("ends-{ext}"));
    if a.format == Format::Png {
        std::fs::create_dir_all(&ends)?;
    }
    // The GPU stages hand an H.264/VP9 encoder I420 (converted on the GPU); the ceiling starts from the same.
    let i420 = (a.cuda_stages || a.stages == Some(matteflow::engine::StagesChoice::Gpu)) && matches!(a.format, Format::H264 | Format::Vp9);
    let de = matteflow::pipeline::decode_encode_only(&a.input, a.format, &ends, on_gpu, i420);
    let _ = std::fs::remove_dir_all(&dir);
    let de = de?;
    // All of it (the pipeline's start included), then from the first decoded frame to the last: the steady rate,
    // which the matting pipeline's steady state is compared with.
    let rates = |t: matteflow::pipeline::EndsTime| {
        let (all, steady) = (t.wall.as_secs_f64() * 1000.0 / r.frames.max(1) as f64, t.steady_ms_per_frame(r.frames));
        format!("{all:.2} ms/frame with its start ({:.1} fps), {steady:.2} ms/frame after its first frame ({:.1} fps)", 1e3 / all, 1e3 / steady)
    };
    println!("input {} ({}x{}), {} frames; output {} {:?}", a.input, r.width, r.height, r.frames, a.format.describe(), a.output_kind);
    println!("decode alone (GStreamer → RGBA): {}", rates(d));
    println!("decode + encode alone ({}, no matting, from {}): {}", a.format.describe(), if i420 { "I420" } else { "RGBA" }, rates(de));
    print!("{}", r.table());
    {
        let (runs, t) = matteflow::infer::ort_run_time();
        if runs > 0 {
            println!("inside ONNX Runtime's run call: {:.2} ms per call ({runs} device calls)", t.as_secs_f64() * 1e3 / runs as f64);
        }
    }
    Ok(())
}

struct BatchUi {
    multi: Option<indicatif::MultiProgress>,
    overall: Option<indicatif::ProgressBar>,
    bars: Vec<Option<indicatif::ProgressBar>>,
    total: usize,
    done: std::sync::atomic::AtomicUsize,
}

impl matteflow::batch::BatchObserver for BatchUi {
    fn started(&self, w: usize, job: &matteflow::batch::Job) {
        if let Some(b) = &self.bars[w] {
            b.reset();
            b.set_length(0);
            b.set_message(job.rel.display().to_string());
        }
    }
    fn progress(&self, w: usize, p: matteflow::Progress) {
        if let Some(b) = &self.bars[w] {
            if let Some(t) = p.total {
                b.set_length(t.max(p.frames));
            }
            b.set_position(p.frames);
        }
    }
    fn finished(&self, _w: usize, r: &matteflow::batch::FileReport) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let line = match r.status {
            matteflow::batch::Status::Done => format!("[{n}/{}] done    {} ({} frames, {:.1} fps)", self.total, r.output, r.frames, r.fps),
            matteflow::batch::Status::Skipped => format!("[{n}/{}] skipped {} (complete)", self.total, r.output),
            matteflow::batch::Status::Failed => format!("[{n}/{}] FAILED  {}: {}", self.total, r.input, r.error),
            _ => format!("[{n}/{}] {:?} {}", self.total, r.status, r.input),
        };
        match (&self.multi, &self.overall) {
            (Some(m), Some(o)) => {
                o.inc(1);
                let _ = m.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }
}

fn batch(a: BatchArgs, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    use matteflow::batch::{self, BatchConfig, Status};
    let shard = match a.shard {
        Some(s) => Some(s),
        None => batch::shard_from_env()?,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = BatchConfig {
        inputs: a.inputs.clone(),
        list: a.list.clone(),
        globs: a.globs.clone(),
        out_dir: a.output.clone(),
        format: a.format,
        kind: a.output_kind,
        background: a.background.clone(),
        matte: a.quality.matte(),
        overwrite: a.overwrite,
        jobs: a.jobs.unwrap_or((cores / 2).max(1)),
        batch: a.batch,
        shard,
        stages: a.quality.stages(),
        cuda_decode: !a.quality.host_decode,
    };
    if cfg.inputs.is_empty() && cfg.list.is_none() && cfg.globs.is_empty() {
        anyhow::bail!("no inputs: give files, folders, --list FILE or --glob PATTERN");
    }
    let plan = batch::plan(&cfg)?;
    if let Some((i, n)) = shard {
        eprintln!("matteflow: shard {i}/{n}: {} of {} inputs", plan.jobs.len(), plan.jobs.len() + plan.other_shards);
    }
    if a.dry_run {
        for j in &plan.jobs {
            println!("convert {} -> {}", j.input.display(), j.output.display());
        }
        for p in &plan.ignored {
            println!("ignore  {} (not a video file name)", p.display());
        }
        return Ok(());
    }
    if plan.jobs.is_empty() {
        anyhow::bail!("no video files found in the inputs ({} other files ignored)", plan.ignored.len());
    }
    if cfg.stages == matteflow::engine::StagesChoice::Gpu {
        // Every file would fail alike: say it once, before anything starts.
        matteflow::engine::open_gpu_for(&cfg.matte, None)?;
    }
    std::fs::create_dir_all(&cfg.out_dir).with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let segmenter = a.model.open()?;
    let tty = std::io::stderr().is_terminal();
    let workers = cfg.jobs.max(1).min(plan.jobs.len());
    let (multi, overall, bars) = if tty {
        let m = indicatif::MultiProgress::new();
        let o = m.add(indicatif::ProgressBar::new(plan.jobs.len() as u64));
        o.set_style(indicatif::ProgressStyle::with_template("files {bar:30} {pos}/{len} elapsed {elapsed} eta {eta}").unwrap());
        let bars = (0..workers)
            .map(|_| {
                let b = m.add(indicatif::ProgressBar::new(0));
                b.set_style(indicatif::ProgressStyle::with_template("  {bar:30} {pos}/{len} {per_sec} {msg}").unwrap());
                Some(b)
            })
            .collect();
        (Some(m), Some(o), bars)
    } else {
        (None, None, vec![None; workers])
    };
    let ui = BatchUi { multi, overall, bars, total: plan.jobs.len(), done: Default::default() };
    let t = std::time::Instant::now();
    let reports = batch::run(&cfg, &plan, &segmenter, cancel.clone(), &ui);
    let wall = t.elapsed().as_secs_f64();
    if let Some(m) = &ui.multi {
        let _ = m.clear();
    }
    let json = a.report_json.clone().unwrap_or_else(|| cfg.out_dir.join("matteflow-report.json"));
    let csv = a.report_csv.clone().unwrap_or_else(|| cfg.out_dir.join("matteflow-report.csv"));
    batch::write_reports(&reports, Some(&json), Some(&csv))?;
    eprint!("{}", batch::summary(&reports, wall));
    eprintln!("report: {} and {}", json.display(), csv.display());
    let failed = reports.iter().filter(|r| r.status == Status::Failed).count();
    if cancel.load(Ordering::SeqCst) {
        eprintln!("matteflow: interrupted; finished files are kept, unfinished ones removed: run the same command to resume");
        std::process::exit(130);
    }
    if failed > 0 {
        eprintln!("matteflow: {failed} of {} files failed (see the report)", reports.len());
        std::process::exit(3);
    }
    Ok(())
}

/// `KEY=VALUE` for `--cuda-option`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE (e.g. fuse_conv_bias=1)")),
    }
}
