//! ONNX Runtime: finding the shared library (ort's `load-dynamic`), loading it once, and choosing execution
//! providers in the order TensorRT → CUDA → CPU. Which provider a session really got is recorded and logged.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Execution providers a session may ask for, in preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorRT",
            Provider::Cuda => "CUDA",
            Provider::Cpu => "CPU",
        }
    }
}

/// How the CUDA provider picks each convolution's cuDNN algorithm (`--cudnn-search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CudnnSearch {
    /// Time every algorithm on the first run (ONNX Runtime's default): the fastest kernels, and a warm-up of
    /// 2.7–3.4 s on the first frame with BiRefNet or IS-Net on the H200 (docs/BENCHMARKS.md).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics: no timing runs on the first frame (IS-Net on the H200: 0.8–1.1 s warm-up instead of
    /// 2.1–3.3 s, the same speed after). cuDNN 9.14 finds no algorithm this way for some fp16 convolutions
    /// (BiRefNet fp16): the run then fails with that said.
    Heuristic,
    /// cuDNN's default algorithm for each convolution: quickest start, 2–3× slower kernels after (H200).
    Default,
}

/// Which devices the user allows (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device '{s}': use auto, cpu, cuda or cuda:N")),
        }
    }
}

static LOADED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The process-wide ONNX Runtime environment; [`init`] must have succeeded.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    ENV.get().ok_or_else(|| Error::Runtime("ONNX Runtime is not loaded (call runtime::init first)".into()))
}

const LIB_NAME: &str = "libonnxruntime.so";

/// Candidate paths for libonnxruntime, most specific first.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    // A library the user named (flag or variable) is the only one tried: silently loading another would
    // hide their mistake.
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    for var in ["MATTEFLOW_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return vec![PathBuf::from(v)];
        }
    }
    let mut c = Vec::new();
    let mut roots = vec![PathBuf::from(".deps")];
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        roots.push(exe_dir.join("../../.deps"));
        roots.push(exe_dir.join("lib"));
        roots.push(exe_dir.clone());
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps"));
    for r in roots {
        for sub in ["onnxruntime/onnxruntime/capi", "onnxruntime-gpu/onnxruntime/capi", "ort", ""] {
            c.extend(versioned_libs(&r.join(sub)));
        }
    }
    // Any Python installation's onnxruntime / onnxruntime-gpu wheel.
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
            c.extend(versioned_libs(&Path::new(line).join("onnxruntime/capi")));
        }
    }
    for d in ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu"] {
        c.extend(versioned_libs(Path::new(d)));
    }
    c
}

fn versioned_libs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(LIB_NAME)))
        .collect();
    v.sort();
    v.reverse(); // newest version first
    v
}

/// Loads ONNX Runtime once per process. Later calls return the first result.
pub fn init(explicit: Option<&Path>) -> Result<PathBuf> {
    LOADED
        .get_or_init(|| {
            let mut cands = candidates(explicit);
            let mut seen = std::collections::HashSet::new();
            cands.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
            let mut tried = Vec::new();
            for p in cands.iter().filter(|p| p.is_file()) {
                match ort::init_from(p) {
                    Ok(builder) => match builder.with_name("matteflow").build() {
                        Ok(env) => {
                            let _ = ENV.set(env);
                            tracing::info!("ONNX Runtime loaded from {}", p.display());
                            return Ok(p.clone());
                        }
                        Err(e) => tried.push(format!("{}: {e}", p.display())),
                    },
                    Err(e) => tried.push(format!("{}: {e}", p.display())),
                }
            }
            for p in cands.iter().filter(|p| !p.is_file()).take(1) {
                if cands.len() == 1 {
                    tried.insert(0, format!("{}: no such file", p.display()));
                }
            }
            Err(format!(
                "libonnxruntime.so (1.31 or newer) was not found{}. Install it with `scripts/setup.sh` (puts \
                 onnxruntime 1.31.1 from PyPI into .deps/), or `pip install onnxruntime==1.31.1` (CPU) / \
                 `pip install onnxruntime-gpu==1.31.1` (NVIDIA), or point --ort-lib / ORT_DYLIB_PATH at the library",
                if tried.is_empty() { String::new() } else { format!(" (tried: {})", tried.join("; ")) }
            ))
        })
        .clone()
        .map_err(Error::Runtime)
}

/// Providers this ONNX Runtime build contains (whether they can start is only known when a session opens).
pub fn compiled_providers() -> Vec<Provider> {
    use ort::ep::ExecutionProvider;
    let mut v = Vec::new();
    if ort::ep::TensorRT::is_available().unwrap_or(false) {
        v.push(Provider::TensorRt);
    }
    if ort::ep::CUDA::is_available().unwrap_or(false) {
        v.push(Provider::Cuda);
    }
    v.push(Provider::Cpu);
    v
}

/// Options for GPU providers (TensorRT caches and precision).
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    pub device: DeviceChoice,
    pub trt_fp16: bool,
    pub trt_cache_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    /// TensorRT optimisation profile for dynamic inputs: (min, opt, max) in TensorRT's
    /// "name:1x3x64x64" syntax. Filled from the manifest when the model is dynamic.
    pub trt_profile: Option<(String, String, String)>,
    /// CUDA EP (on by default): ONNX Runtime's CUDA graphs for the model's device runs: each IO binding and
    /// input size captures its own graph (on its second run) and replays it after; host-tensor runs use none. A
    /// model the CUDA EP cannot capture (nodes on the CPU) is opened again without (see `OnnxSegmenter::open`).
    pub cuda_graph: bool,
    /// CUDA EP: prefer NHWC kernels (tensor-core friendly convolutions, fewer layout transposes).
    pub cuda_nhwc: bool,
    /// CUDA EP: further provider options, KEY=VALUE as ONNX Runtime names them (`--cuda-option`).
    pub cuda_options: Vec<(String, String)>,
    /// CUDA EP: how convolution algorithms are chosen.
    pub cudnn_search: CudnnSearch,
    /// ONNX Runtime session profiling: per-node times written to a JSON file with this prefix.
    pub profile: Option<PathBuf>,
    /// Let ONNX Runtime's intra-op pool threads spin between runs (its own default). Off here: in matteflow
    /// decoding, compositing and encoding share the cores with the model, and spinning took them (2 cores:
    /// live 162 → 85 % CPU, conversion 57–63 → 68–73 fps without it; docs/BENCHMARKS.md).
    pub spin: bool,
    /// Run the model file as given even when `matteflow prepare` left a prepared graph of it in the cache
    /// (which is otherwise used on CUDA).
    pub ignore_prepared: bool,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            device: DeviceChoice::default(),
            trt_fp16: false,
            trt_cache_dir: None,
            threads: None,
            trt_profile: None,
            cuda_graph: true,
            cuda_nhwc: false,
            cuda_options: Vec::new(),
            cudnn_search: CudnnSearch::default(),
            profile: None,
            spin: false,
            ignore_prepared: false,
        }
    }
}

/// The TensorRT profile for a dynamic model: sizes from one multiple up to twice the manifest's size.
pub fn trt_profile_for(m: &crate::model::Manifest) -> Option<(String, String, String)> {
    let k = m.input.dynamic_multiple? as i64;
    let [h, w] = m.input.size;
    let shape = |hh: i64, ww: i64| {
        let s = m.input_shape(hh as u32, ww as u32);
        format!("{}:{}x{}x{}x{}", m.input.name, s[0], s[1], s[2], s[3])
    };
    Some((shape(k, k), shape(h as i64, w as i64), shape(2 * h as i64, 2 * w as i64)))
}

/// The providers to request for `opts.device`, in order.
pub fn wanted(opts: &ProviderOptions) -> Vec<Provider> {
    match opts.device {
        DeviceChoice::Cpu => vec![Provider::Cpu],
        DeviceChoice::Auto | DeviceChoice::Cuda(_) => vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu],
    }
}

/// Registers the first providers that work on `builder`, the GPU ones on `stream` where given (ONNX Runtime's
/// user compute stream); returns the one that will run the model and the reasons the better ones were skipped.
pub fn register(
    mut builder: ort::session::builder::SessionBuilder,
    opts: &ProviderOptions,
    stream: Option<&cudarc::driver::CudaStream>,
) -> ort::Result<(ort::session::builder::SessionBuilder, Provider, Vec<String>)> {
    use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};
    let mut skipped = Vec::new();
    let device_id = match opts.device {
        DeviceChoice::Cuda(n) => n,
        _ => 0,
    };
    let mut chosen = Provider::Cpu;
    if let Some(prefix) = &opts.profile {
        builder = builder.with_profiling(prefix).map_err(ort::Error::<()>::from)?;
    }
    for p in wanted(opts) {
        match p {
            Provider::TensorRt => {
                if !ep::TensorRT::is_available()? {
                    skipped.push("TensorRT: not in this ONNX Runtime build (needs onnxruntime-gpu)".into());
                    continue;
                }
                let mut trt = ep::TensorRT::default().with_device_id(device_id).with_fp16(opts.trt_fp16);
                if let Some(st) = stream {
                    // SAFETY: the stream outlives the session (the segmenter drops the session first).
                    trt = unsafe { trt.with_compute_stream(st.cu_stream() as *mut ()) };
                }
                if let Some((min, opt, max)) = &opts.trt_profile {
                    trt = trt.with_profile_min_shapes(min).with_profile_opt_shapes(opt).with_profile_max_shapes(max);
                    tracing::info!("TensorRT profile: min {min}, opt {opt}, max {max}");
                }
                if let Some(dir) = &opts.trt_cache_dir {
                    let d = dir.display().to_string();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&d)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&d);
                }
                match trt.register(&mut builder) {
                    Ok(()) => {
                        chosen = Provider::TensorRt;
                        tracing::info!("TensorRT EP registered (first run builds the engine; this can take minutes)");
                        // CUDA stays registered below as the fallback for nodes TensorRT does not take.
                    }
                    Err(e) => skipped.push(format!("TensorRT: {e}")),
                }
            }
            Provider::Cuda => {
                if !ep::CUDA::is_available()? {
                    skipped.push("CUDA: not in this ONNX Runtime build (needs onnxruntime-gpu)".into());
                    continue;
                }
                let mut cuda = ep::CUDA::default().with_device_id(device_id);
                if let Some(st) = stream {
                    // SAFETY: as above.
                    cuda = unsafe { cuda.with_compute_stream(st.cu_stream() as *mut ()) };
                }
                // (Not behind TensorRT, which takes the nodes it can and leaves CUDA the rest.)
                if opts.cuda_graph && chosen != Provider::TensorRt {
                    cuda = cuda.with_cuda_graph(true);
                }
                if opts.cuda_nhwc {
                    cuda = cuda.with_prefer_nhwc(true);
                }
                for (k, v) in &opts.cuda_options {
                    cuda = cuda.with_arbitrary_config(k, v);
                }
                cuda = cuda.with_conv_algorithm_search(match opts.cudnn_search {
                    CudnnSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                    CudnnSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                    CudnnSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                });
                match cuda.register(&mut builder) {
                    Ok(()) => {
                        if chosen == Provider::Cpu {
                            chosen = Provider::Cuda;
                        }
                    }
                    Err(e) => skipped.push(format!("CUDA: {e}")),
                }
            }
            Provider::Cpu => {}
        }
    }
    Ok((builder, chosen, skipped))
}
