//! ONNX Runtime segmenter. Opens the session (from a file or the embedded bytes), checks the model's inputs
//! and outputs against the manifest, and runs frames.

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use super::batched::{self, BatchPlan};
use super::{LowResMask, Segmenter};
use crate::error::{Error, Result};
use crate::model::{manifest, Layout, ModelSource, ResolvedModel};
use crate::preprocess::ModelInput;
use crate::runtime::{self, Provider, ProviderOptions};

pub mod deform_im2col;
mod device;
mod ops;
pub mod window_attention;
pub use device::{ort_run_time, outside_capture, DeviceIo, DeviceMask};

/// matteflow's operator domain (com.matteflow), which every session registers (a model without its ops is
/// unaffected): the host operators for f32 and f16 and, where a CUDA driver and NVRTC load, the CUDA provider's.
pub fn operators() -> ort::Result<ort::operator::OperatorDomain> {
    use ort::value::TensorElementType::{Float16, Float32};
    let d = ort::operator::OperatorDomain::new(window_attention::DOMAIN)?
        .add(window_attention::Host(Float32))?
        .add(window_attention::Host(Float16))?
        .add(deform_im2col::Host(Float32))?
        .add(deform_im2col::Host(Float16))?;
    if crate::cuda::driver_present() && crate::cuda::nvrtc_present() {
        d.add(window_attention::Cuda)?.add(deform_im2col::Cuda)
    } else {
        Ok(d)
    }
}

pub struct OnnxSegmenter {
    /// Shared by every handle (`share()`): one model in memory, however many files are in flight.
    session: std::sync::Arc<std::sync::Mutex<Session>>,
    /// The CUDA stream the GPU providers run the session on (ONNX Runtime's user compute stream), where one
    /// was made: device runs are then ordered with our kernels by events, not host waits (`run_device_on`).
    /// Declared after `session`, so that it outlives it.
    stream: Option<std::sync::Arc<cudarc::driver::CudaStream>>,
    /// The session captures CUDA graphs (on by default on the CUDA provider): device runs name their binding's
    /// graph, host runs none (they must never be captured or replayed: their buffers change every run).
    graphs: bool,
    /// This handle's device runs use graphs (see [`OnnxSegmenter::without_graphs`]).
    device_graphs: bool,
    model: ResolvedModel,
    provider: Provider,
    /// Recurrent state per `manifest.recurrent` entry: (shape, values).
    states: Vec<(Vec<i64>, Vec<f32>)>,
    /// The model input's declared batch dimension (≤ 0: dynamic).
    declared_batch: i64,
    /// Batched calls are padded with zero frames to this many (0: no padding); see `configure_batch`.
    pad_batch_to: usize,
    /// Reused buffer for stacked batch tensors.
    stack: Vec<f32>,
    /// The image input / mask output is float16 (an fp16 export that kept half-precision I/O): converted from
    /// and to f32 here on the host path; the GPU path binds f16 tensors directly.
    input_f16: bool,
    output_f16: bool,
}

/// The image tensor as a session feed: the f32 values as they are, or for an f16 model their half-precision copy
/// (round to nearest even), made in `scratch`.
fn image_feed<'a>(
    shape: [i64; 4],
    data: &'a [f32],
    f16: bool,
    scratch: &'a mut Vec<half::f16>,
) -> ort::Result<ort::session::SessionInputValue<'a>> {
    if f16 {
        *scratch = data.iter().map(|x| half::f16::from_f32(*x)).collect();
        Ok(TensorRef::from_array_view((shape, scratch.as_slice()))?.into())
    } else {
        Ok(TensorRef::from_array_view((shape, data))?.into())
    }
}

/// The model's output as f32 values whatever its float type (f32 or f16): shape and data.
fn output_f32(v: &ort::value::DynValue, f16: bool) -> ort::Result<(Vec<usize>, std::borrow::Cow<'_, [f32]>)> {
    if f16 {
        let (shape, data) = v.try_extract_tensor::<half::f16>()?;
        Ok((shape.iter().map(|d| *d as usize).collect(), data.iter().map(|x| x.to_f32()).collect::<Vec<_>>().into()))
    } else {
        let (shape, data) = v.try_extract_tensor::<f32>()?;
        Ok((shape.iter().map(|d| *d as usize).collect(), data.into()))
    }
}

fn dtype_name(t: Option<ort::value::TensorElementType>) -> String {
    match t {
        Some(ort::value::TensorElementType::Float32) => "f32".into(),
        Some(ort::value::TensorElementType::Float16) => "f16".into(),
        Some(other) => format!("{other}"),
        None => "not a tensor".into(),
    }
}

impl OnnxSegmenter {
    /// Loads ONNX Runtime if needed, opens the model with the best provider available, and validates it.
    pub fn open(model: ResolvedModel, opts: &ProviderOptions) -> Result<Self> {
        runtime::init(None)?;
        let model = with_prepared_graph(model, opts);
        let env = runtime::environment()?;
        let label = model.source.describe();
        let model_name = match &model.source {
            ModelSource::File(p) => p.display().to_string(),
            ModelSource::Embedded(_) => format!("{} ({label})", model.manifest.name),
        };
        let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let stream = compute_stream(opts);

        let build = |cuda_graph: bool| -> ort::Result<(Session, Provider, Vec<String>)> {
            let b = Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(ort::Error::<()>::from)?
                .with_intra_threads(threads)
                .map_err(ort::Error::<()>::from)?
                .with_intra_op_spinning(opts.spin)
                .map_err(ort::Error::<()>::from)?
                // matteflow's own operators (what `prepare --fp16` writes; models without them are unaffected)
                .with_operators(operators()?)
                .map_err(ort::Error::<()>::from)?;
            let mut opts = ProviderOptions { cuda_graph, ..opts.clone() };
            if opts.trt_profile.is_none() {
                opts.trt_profile = runtime::trt_profile_for(&model.manifest);
            }
            let (mut b, provider, skipped) = runtime::register(b, &opts, stream.as_deref())?;
            let s = match &model.source {
                ModelSource::File(p) => b.commit_from_file(p)?,
                ModelSource::Embedded(bytes) => b.commit_from_memory(bytes)?,
            };
            Ok((s, provider, skipped))
        };
        // ONNX Runtime's pool threads, started while the session is made, take this thread's name: name them
        // for what they are (the live CPU-by-thread summary), then restore ours.
        let named = ThreadName::set(c"mf-ort-pool");
        let mut graphs = opts.cuda_graph;
        let built = build(graphs).or_else(|e| {
            if !graphs {
                return Err(e);
            }
            // CUDA graphs need every node on the GPU: a model the CUDA EP cannot capture runs without them.
            tracing::warn!("{model_name}: opened again without CUDA graphs, which ONNX Runtime refused: {e}");
            graphs = false;
            build(false)
        });
        drop(named);
        let (session, provider, skipped) = built.map_err(|e| {
            let msg = e.to_string();
            let hint = if msg.contains("Protobuf parsing failed") || msg.contains("INVALID_PROTOBUF") || msg.contains("parse") {
                "the file is not an ONNX model (or is truncated): re-export or re-download it"
            } else {
                "check that the file is a complete ONNX model that ONNX Runtime 1.31 can run"
            };
            Error::Model { model: model_name.clone(), reason: format!("ONNX Runtime cannot load it ({msg}); {hint}") }
        })?;
        for s in &skipped {
            tracing::info!("execution provider skipped: {s}");
        }
        if matches!(opts.device, runtime::DeviceChoice::Cuda(_)) && provider == Provider::Cpu {
            tracing::warn!("{} was asked for, but the model runs on the CPU: {}", crate::hint::DEVICE.to("cuda"), skipped.join("; "));
        }
        tracing::info!("model {} runs on {} ({} threads)", model.manifest.name, provider.name(), threads);

        let inputs: Vec<(String, Vec<i64>, String)> = session
            .inputs()
            .iter()
            .map(|i| {
                let shape = i.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
                (i.name().to_string(), shape, dtype_name(i.dtype().tensor_type()))
            })
            .collect();
        let outputs: Vec<(String, Vec<i64>)> = session
            .outputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default()))
            .collect();
        let mut model = model;
        if model.inferred {
            infer_manifest(&mut model, &model_name, &inputs, &outputs)?;
        }
        manifest::validate_io(&model.manifest, &model_name, &model.manifest_origin, &inputs, &outputs)?;
        let declared_batch = inputs.iter().find(|i| i.0 == model.manifest.input.name).and_then(|i| i.1.first().copied()).unwrap_or(1);
        let input_f16 = inputs.iter().any(|i| i.0 == model.manifest.input.name && i.2 == "f16");
        let output_f16 = session
            .outputs()
            .iter()
            .any(|o| o.name() == model.manifest.output.name && o.dtype().tensor_type() == Some(ort::value::TensorElementType::Float16));
        if input_f16 || output_f16 {
            tracing::info!(
                "model {} takes/gives float16 tensors (input {}, output {}): converted on the host path, bound as is on the GPU path",
                model.manifest.name,
                if input_f16 { "f16" } else { "f32" },
                if output_f16 { "f16" } else { "f32" }
            );
        }
        let states = model
            .manifest
            .recurrent
            .iter()
            .map(|r| (r.initial_shape.clone(), vec![0f32; r.initial_shape.iter().product::<i64>().max(0) as usize]))
            .collect();
        Ok(OnnxSegmenter {
            session: std::sync::Arc::new(std::sync::Mutex::new(session)),
            stream: stream.filter(|_| provider != Provider::Cpu),
            graphs: graphs && provider == Provider::Cuda,
            device_graphs: true,
            model,
            provider,
            states,
            declared_batch,
            pad_batch_to: 0,
            stack: Vec::new(),
            input_f16,
            output_f16,
        })
    }

    /// The CUDA stream the GPU providers run this session on, where it is one of ours (see `run_device_on`).
    pub fn compute_stream(&self) -> Option<std::sync::Arc<cudarc::driver::CudaStream>> {
        self.stream.clone()
    }

    pub fn model(&self) -> &ResolvedModel {
        &self.model
    }

    /// Runs one mid-grey frame through the model and throws the result away, so that the first real frame does
    /// not pay the provider's one-time costs (on CUDA: cuDNN's algorithm search and the memory arena, 2.7–3.4 s
    /// with BiRefNet or IS-Net on an H200). Recurrent state is left as it was. Returns how long it took.
    pub fn warm_up(&mut self) -> Result<std::time::Duration> {
        let m = self.model.manifest.clone();
        let [h, w] = m.input.size;
        let shape = m.input_shape(h, w);
        let plane = (h * w) as usize;
        let grey = |c: usize| (128.0 * m.input.scale - m.input.mean[c]) / m.input.std[c];
        let data = (0..plane * 3)
            .map(|i| grey(if m.input.layout == Layout::Nchw { i / plane } else { i % 3 }))
            .collect();
        let input = ModelInput { data, shape, geometry: None };
        let (states, pad) = (self.states.clone(), self.pad_batch_to);
        if self.declared_batch > 1 {
            // A fixed-batch export takes nothing else: the frame padded to its batch.
            self.pad_batch_to = self.declared_batch as usize;
        }
        let t = std::time::Instant::now();
        let mut mask = LowResMask::default();
        let ran = self.run_batch(&[&input], std::slice::from_mut(&mut mask));
        (self.states, self.pad_batch_to) = (states, pad);
        ran.map(|()| t.elapsed())
    }

    /// Settles how many frames one call of [`Segmenter::run_batch`] takes, given `--batch requested`, and says
    /// once why that differs from the request (a fixed batch-1 model, recurrent state); `explicit`: the user
    /// asked for this size (a warning) rather than it being the device's default (info).
    pub fn configure_batch(&mut self, requested: usize, explicit: bool) -> usize {
        let plan: BatchPlan = batched::plan(&self.model.manifest, self.declared_batch, requested, self.provider);
        if let Some(note) = &plan.note {
            if explicit {
                tracing::warn!("{note}");
            } else {
                tracing::info!("{note}");
            }
        }
        if plan.size > 1 || plan.pad_to > 1 {
            tracing::info!(
                "model {} runs up to {} frames per inference call{}",
                self.model.manifest.name,
                plan.size,
                if plan.pad_to > 0 { format!(" (padded to {} so results do not depend on the batch)", plan.pad_to) } else { String::new() }
            );
        }
        self.pad_batch_to = plan.pad_to;
        plan.size
    }

    /// Another handle on the same session, with its own (fresh) recurrent state: for converting several
    /// files at once with one loaded model.
    pub fn share(&self) -> OnnxSegmenter {
        let mut h = OnnxSegmenter {
            session: self.session.clone(),
            stream: self.stream.clone(),
            graphs: self.graphs,
            device_graphs: self.device_graphs,
            model: self.model.clone(),
            provider: self.provider,
            states: Vec::new(),
            declared_batch: self.declared_batch,
            pad_batch_to: self.pad_batch_to,
            stack: Vec::new(),
            input_f16: self.input_f16,
            output_f16: self.output_f16,
        };
        h.states = self.states.clone();
        h.reset();
        h
    }

    /// This handle's device runs without CUDA graphs, on a session that captures them: for handles that run at
    /// once on one session (`batch --jobs N` with the GPU stages). With a graph per binding there, the masks of
    /// one of three files at once differed from those of the file alone (max 255 levels on 0.7 % of the pixels,
    /// H200, 2026-12-03; the cause is not found), while one file at a time gives the masks it gives without graphs.
    pub fn without_graphs(mut self) -> Self {
        self.device_graphs = false;
        self
    }

    /// Forgets recurrent state (a new clip starts).
    pub fn reset(&mut self) {
        for (r, st) in self.model.manifest.recurrent.iter().zip(self.states.iter_mut()) {
            *st = (r.initial_shape.clone(), vec![0f32; r.initial_shape.iter().product::<i64>().max(0) as usize]);
        }
    }
}

/// A stream of our own for the GPU providers to run on, where one may run the model: a CUDA build of ONNX
/// Runtime, a driver and device `opts.device` (else None, and a provider keeps a stream of its own).
fn compute_stream(opts: &ProviderOptions) -> Option<std::sync::Arc<cudarc::driver::CudaStream>> {
    let id = match opts.device {
        runtime::DeviceChoice::Cpu => return None,
        runtime::DeviceChoice::Cuda(n) => n,
        runtime::DeviceChoice::Auto => 0,
    };
    if !crate::cuda::driver_present() || !<ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available().unwrap_or(false) {
        return None;
    }
    match cudarc::driver::CudaContext::new(id.max(0) as usize).and_then(|c| c.new_stream()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!("no CUDA stream of our own for ONNX Runtime ({e}); it makes its own");
            None
        }
    }
}

/// Fills what flags left open from the model itself: first input/output, layout from where the 3 channels
/// are, size from the fixed dimensions.
fn infer_manifest(
    model: &mut ResolvedModel,
    name: &str,
    inputs: &[(String, Vec<i64>, String)],
    outputs: &[(String, Vec<i64>)],
) -> Result<()> {
    let m = &mut model.manifest;
    let err = |reason: String| Error::Model { model: name.to_string(), reason };
    if m.input.name.is_empty() {
        m.input.name = inputs.first().map(|i| i.0.clone()).ok_or_else(|| err("the model has no inputs".into()))?;
    }
    if m.output.name.is_empty() {
        m.output.name = outputs.first().map(|o| o.0.clone()).ok_or_else(|| err("the model has no outputs".into()))?;
    }
    let Some((_, shape, _)) = inputs.iter().find(|i| i.0 == m.input.name) else { return Ok(()) };
    if shape.len() == 4 {
        if shape[3] == 3 && shape[1] != 3 {
            m.input.layout = Layout::Nhwc;
        }
        let (h, w) = if m.input.layout == Layout::Nchw { (shape[2], shape[3]) } else { (shape[1], shape[2]) };
        if m.input.size == [0, 0] {
            if h > 0 && w > 0 {
                m.input.size = [h as u32, w as u32];
            } else {
                let what_to_do = match crate::hint::dialect() {
                    crate::hint::Dialect::CommandLine => "pass --input-size HxW (e.g. 1024x1024) or a manifest".to_string(),
                    crate::hint::Dialect::PipelineFile => {
                        format!("describe it in a manifest (size = [H, W] under its [input]) and give {}", crate::hint::MANIFEST.to("FILE.toml"))
                    }
                };
                return Err(err(format!("input '{}' has dynamic size {}: {what_to_do}", m.input.name, manifest::shape_str(shape))));
            }
        }
    }
    Ok(())
}

impl OnnxSegmenter {
    /// A host run's options: where the session captures CUDA graphs, none for it (`gpu_graph_id` -1).
    fn host_run_options(&self) -> ort::Result<ort::session::RunOptions> {
        let mut o = ort::session::RunOptions::new()?;
        if self.graphs {
            o.set("gpu_graph_id", "-1")?;
        }
        Ok(o)
    }
}

impl Segmenter for OnnxSegmenter {
    fn provider(&self) -> Provider {
        self.provider
    }

    fn run(&mut self, input: &ModelInput, out: &mut LowResMask) -> Result<()> {
        let m = &self.model.manifest;
        let rt = |e: ort::Error| run_error(&format!("running {}", m.name), &e);
        let mut scratch = Vec::new();
        let tensor = image_feed(input.shape, &input.data, self.input_f16, &mut scratch).map_err(rt)?;
        let mut feeds: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
            vec![(m.input.name.as_str().into(), tensor)];
        for (r, (shape, data)) in m.recurrent.iter().zip(&self.states) {
            let t = TensorRef::from_array_view((shape.clone(), data.as_slice())).map_err(rt)?;
            feeds.push((r.input.as_str().into(), t.into()));
        }
        feeds.extend(constant_feeds(&m, rt)?);
        let options = self.host_run_options().map_err(rt)?;
        let mut session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned by an earlier panic".into()))?;
        let outputs = session.run_with_options(feeds, &options).map_err(rt)?;
        let mut new_states = Vec::with_capacity(m.recurrent.len());
        for r in &m.recurrent {
            let v = outputs
                .get(&r.output)
                .ok_or_else(|| Error::Runtime(format!("model {} produced no state output '{}'", m.name, r.output)))?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(rt)?;
            new_states.push((shape.to_vec(), data.to_vec()));
        }
        let value = outputs
            .get(&m.output.name)
            .ok_or_else(|| Error::Runtime(format!("model {} produced no output '{}'", m.name, m.output.name)))?;
        let (dims, data) = output_f32(value, self.output_f16).map_err(rt)?;
        batched::split(m, &dims, &data, 1, std::slice::from_mut(out))?;
        drop(outputs);
        drop(session);
        if !new_states.is_empty() {
            self.states = new_states;
        }
        Ok(())
    }

    fn run_batch(&mut self, inputs: &[&ModelInput], outs: &mut [LowResMask]) -> Result<()> {
        let total = inputs.len().max(self.pad_batch_to);
        if total <= 1 {
            return match (inputs.first(), outs.first_mut()) {
                (Some(i), Some(o)) => self.run(i, o),
                _ => Ok(()),
            };
        }
        let m = &self.model.manifest;
        if !m.recurrent.is_empty() {
            return Err(Error::Runtime(format!(
                "model {} carries recurrent state from frame to frame: its frames cannot share an inference call (use --batch 1)",
                m.name
            )));
        }
        let rt = |e: ort::Error| run_error(&format!("running {} on a batch of {total}", m.name), &e);
        let shape = batched::stack(inputs, total, &mut self.stack)?;
        let mut scratch = Vec::new();
        let tensor = image_feed(shape, &self.stack, self.input_f16, &mut scratch).map_err(rt)?;
        let mut feeds: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
            vec![(m.input.name.as_str().into(), tensor)];
        feeds.extend(constant_feeds(&m, rt)?);
        let options = self.host_run_options().map_err(rt)?;
        let mut session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned by an earlier panic".into()))?;
        let outputs = session.run_with_options(feeds, &options).map_err(rt)?;
        let value = outputs
            .get(&m.output.name)
            .ok_or_else(|| Error::Runtime(format!("model {} produced no output '{}'", m.name, m.output.name)))?;
        let (dims, data) = output_f32(value, self.output_f16).map_err(rt)?;
        let n = inputs.len().min(outs.len());
        batched::split(m, &dims, &data, total, &mut outs[..n])
    }
}

/// An error from ONNX Runtime's run call, with what to do where the cause is known. cuDNN's heuristic mode
/// (`--cudnn-search heuristic`) finds no algorithm for some fp16 convolutions (BiRefNet's deformable-conv
/// offsets on an H200, cuDNN 9.14: HEURISTIC_QUERY_FAILED); ONNX Runtime's message then runs to kilobytes of
/// JSON, so it is cut to the node and the advice.
pub(crate) fn run_error(context: &str, e: &dyn std::fmt::Display) -> Error {
    let msg = e.to_string();
    if msg.contains("HEURISTIC_QUERY_FAILED") || msg.contains("No valid engine configs") {
        let node = msg.split("Name:'").nth(1).and_then(|r| r.split('\'').next()).unwrap_or("?");
        return Error::Runtime(format!(
            "{context}: cuDNN's heuristic search found no algorithm for convolution node '{node}'; use {}, the default",
            crate::hint::CUDNN_SEARCH.to("exhaustive")
        ));
    }
    Error::Runtime(format!("{context}: {msg}"))
}

/// The manifest's constant inputs (`[[constants]]`) as session feeds.
fn constant_feeds<'a>(
    m: &'a crate::model::Manifest,
    rt: impl Fn(ort::Error) -> Error,
) -> Result<Vec<(std::borrow::Cow<'a, str>, ort::session::SessionInputValue<'a>)>> {
    let mut feeds = Vec::with_capacity(m.constants.len());
    for c in &m.constants {
        let shape = c.shape.clone().unwrap_or_else(|| vec![c.value.len() as i64]);
        let t = TensorRef::from_array_view((shape, c.value.as_slice())).map_err(&rt)?;
        feeds.push((c.name.as_str().into(), t.into()));
    }
    Ok(feeds)
}

/// Sets the calling thread's name (Linux `comm`, 15 bytes at most) until dropped, then restores the old one.
struct ThreadName([u8; 16]);

impl ThreadName {
    fn set(name: &std::ffi::CStr) -> ThreadName {
        let mut old = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer; PR_SET_NAME reads a NUL-terminated string.
        unsafe {
            libc::prctl(libc::PR_GET_NAME, old.as_mut_ptr());
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        }
        ThreadName(old)
    }
}

impl Drop for ThreadName {
    fn drop(&mut self) {
        // SAFETY: the buffer holds the NUL-terminated name read in `set`.
        unsafe { libc::prctl(libc::PR_SET_NAME, self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::run_error;

    #[test]
    fn heuristic_cudnn_failures_say_what_to_do() {
        // The message ONNX Runtime 1.31 gave on an H200 (cuDNN 9.14), shortened in the middle.
        let ort = "Non-zero status code returned while running Conv node. Name:'node_Conv_11201' Status Message: \
                   Failed to initialize CUDNN Frontend: /onnxruntime_src/onnxruntime/core/providers/cuda/cudnn_fe_call.cc:117 \
                   CUDNN_FE failure 8: HEURISTIC_QUERY_FAILED ; GPU=0 ; hostname=vm ; file=conv.cc ; line=238 ; \
                   expr=s_.cudnn_fe_graph->create_execution_plans({heur_mode}); \n\n with the cudnn frontend json:\n{\"context\":{}}";
        let e = run_error("device run of birefnet-lite", &ort).to_string();
        assert!(e.starts_with("ONNX Runtime: device run of birefnet-lite: cuDNN's heuristic search"), "{e}");
        assert!(e.contains("convolution node 'node_Conv_11201'") && e.contains("--cudnn-search exhaustive"), "{e}");
        assert!(!e.contains("json") && e.len() < 300, "{e}");
        // Anything else passes through whole.
        let e = run_error("running m", &"Got invalid dimensions for input: x").to_string();
        assert_eq!(e, "ONNX Runtime: running m: Got invalid dimensions for input: x");
    }
}

/// On CUDA, the graph `matteflow prepare` made of this model file, when the cache has one (the same masks,
/// BiRefNet about twice as fast: docs/BENCHMARKS.md); otherwise the file as given, with a hint for BiRefNet.
fn with_prepared_graph(mut model: ResolvedModel, opts: &ProviderOptions) -> ResolvedModel {
    let ModelSource::File(path) = &model.source else { return model };
    if opts.ignore_prepared || !matches!(opts.device, runtime::DeviceChoice::Cuda(_)) {
        return model;
    }
    let mut found = crate::model::prepare::find_cached(path);
    if found.first().is_some_and(|(_, fp16)| *fp16) && !crate::cuda::nvrtc_present() {
        // Its WindowAttention and DeformIm2Col would run as host operators, copying every tensor to the CPU.
        tracing::warn!(
            "{}: not using its fp16 prepared graph: its own operators' CUDA kernels need NVRTC (libnvrtc.so.13), \
             which is not found (install the CUDA 13 toolkit or `pip install nvidia-cuda-nvrtc` and add its lib \
             folder to LD_LIBRARY_PATH; `matteflow doctor --device cuda` checks)",
            path.display()
        );
        found.remove(0);
    }
    match found.into_iter().next().map(|(p, _)| p) {
        Some(prepared) => {
            tracing::info!(
                "{}: using its prepared graph {} (from `matteflow prepare`; {} runs the file as given)",
                path.display(),
                prepared.display(),
                crate::hint::NO_PREPARED.on()
            );
            model.source = ModelSource::File(prepared);
        }
        None => {
            let name = model.manifest.name.to_ascii_lowercase();
            if name.contains("birefnet") || name.contains("rmbg") {
                tracing::info!(
                    "{}: `matteflow prepare {} --fp16` once makes this model about twice as fast on CUDA (same masks; \
                     it is then used automatically)",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    model
}
