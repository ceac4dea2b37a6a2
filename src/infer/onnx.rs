//! ONNX Runtime segmenter. Opens the session (from a file or the embedded bytes), checks the model's inputs
//! and outputs against the manifest, and runs frames.

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use super::{LowResMask, Segmenter};
use crate::error::{Error, Result};
use crate::model::{manifest, Activation, Layout, ModelSource, ResolvedModel};
use crate::preprocess::ModelInput;
use crate::runtime::{self, Provider, ProviderOptions};

/// The model's output left on the GPU by a device run (IO binding): a device pointer, valid until the next run.
pub struct DeviceMask {
    pub ptr: u64,
    pub width: u32,
    pub height: u32,
    pub sigmoid: bool,
}

/// IO binding state for device runs: the binding and the output buffer ONNX Runtime allocated on the GPU.
/// Not `Send`: create it on the thread that runs the model.
#[derive(Default)]
pub struct DeviceIo {
    binding: Option<ort::session::IoBinding>,
    output: Option<ort::value::Tensor<f32>>,
}

pub struct OnnxSegmenter {
    /// Shared by every handle (`share()`): one model in memory, however many files are in flight.
    session: std::sync::Arc<std::sync::Mutex<Session>>,
    model: ResolvedModel,
    provider: Provider,
    /// Recurrent state per `manifest.recurrent` entry: (shape, values).
    states: Vec<(Vec<i64>, Vec<f32>)>,
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
        let env = runtime::environment()?;
        let label = model.source.describe();
        let model_name = match &model.source {
            ModelSource::File(p) => p.display().to_string(),
            ModelSource::Embedded(_) => format!("{} ({label})", model.manifest.name),
        };
        let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

        let build = || -> ort::Result<(Session, Provider, Vec<String>)> {
            let b = Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(ort::Error::<()>::from)?
                .with_intra_threads(threads)
                .map_err(ort::Error::<()>::from)?;
            let mut opts = opts.clone();
            if opts.trt_profile.is_none() {
                opts.trt_profile = runtime::trt_profile_for(&model.manifest);
            }
            let (mut b, provider, skipped) = runtime::register(b, &opts)?;
            let s = match &model.source {
                ModelSource::File(p) => b.commit_from_file(p)?,
                ModelSource::Embedded(bytes) => b.commit_from_memory(bytes)?,
            };
            Ok((s, provider, skipped))
        };
        let (session, provider, skipped) = build().map_err(|e| {
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
            tracing::warn!("--device cuda was asked for, but the model runs on the CPU: {}", skipped.join("; "));
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
        let states = model
            .manifest
            .recurrent
            .iter()
            .map(|r| (r.initial_shape.clone(), vec![0f32; r.initial_shape.iter().product::<i64>().max(0) as usize]))
            .collect();
        Ok(OnnxSegmenter {
            session: std::sync::Arc::new(std::sync::Mutex::new(session)),
            model,
            provider,
            states,
        })
    }

    pub fn model(&self) -> &ResolvedModel {
        &self.model
    }

    /// Another handle on the same session, with its own (fresh) recurrent state: for converting several
    /// files at once with one loaded model.
    pub fn share(&self) -> OnnxSegmenter {
        let mut h = OnnxSegmenter {
            session: self.session.clone(),
            model: self.model.clone(),
            provider: self.provider,
            states: Vec::new(),
        };
        h.states = self.states.clone();
        h.reset();
        h
    }

    /// Runs the model on a tensor already on the GPU (`input`: device pointer to f32 values of `shape`) with
    /// IO binding: no host copy in or out. The mask stays on the GPU (see [`DeviceMask`]). CUDA provider only;
    /// single-channel outputs and models without recurrent state.
    pub fn run_device(&mut self, io: &mut DeviceIo, input: u64, shape: [i64; 4], device_id: i32) -> Result<DeviceMask> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        use ort::value::TensorRefMut;
        let m = self.model.manifest.clone();
        let rt = |e: ort::Error| Error::Runtime(format!("device run of {}: {e}", m.name));
        if self.provider != Provider::Cuda && self.provider != Provider::TensorRt {
            return Err(Error::Runtime(format!("device runs need the CUDA provider; {} runs on {}", m.name, self.provider.name())));
        }
        if !m.recurrent.is_empty() || !m.constants.is_empty() {
            return Err(Error::Runtime("device runs do not carry recurrent state yet; use the CPU stages".into()));
        }
        let mem = MemoryInfo::new(AllocationDevice::CUDA, device_id, AllocatorType::Device, MemoryType::Default).map_err(rt)?;
        let mut session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned".into()))?;
        if io.binding.is_none() {
            let mut b = session.create_binding().map_err(rt)?;
            b.bind_output_to_device(m.output.name.as_str(), &mem).map_err(rt)?;
            io.binding = Some(b);
        }
        let binding = io.binding.as_mut().unwrap();
        // SAFETY: `input` points to shape.product() f32 values on device `device_id`, alive for this call.
        let tensor = unsafe { TensorRefMut::<f32>::from_raw(mem, input as *mut _, ort::value::Shape::new(shape)) }.map_err(rt)?;
        binding.bind_input(m.input.name.as_str(), &tensor).map_err(rt)?;
        let mut outputs = session.run_binding(binding).map_err(rt)?;
        let value = outputs
            .remove(&m.output.name)
            .ok_or_else(|| Error::Runtime(format!("model {} produced no output '{}'", m.name, m.output.name)))?;
        drop(outputs);
        let t = value.downcast::<ort::value::TensorValueType<f32>>().map_err(rt)?;
        let dims: Vec<i64> = t.shape().to_vec();
        let (h, w) = match dims.as_slice() {
            [1, 1, h, w] | [1, h, w, 1] | [1, h, w] | [h, w] => (*h, *w),
            _ => return Err(Error::Runtime(format!("device runs need a single-channel output; '{}' is {dims:?}", m.output.name))),
        };
        let ptr = t.data_ptr() as u64;
        let out = DeviceMask { ptr, width: w as u32, height: h as u32, sigmoid: m.output.activation == Activation::Sigmoid };
        io.output = Some(t);
        binding.synchronize_outputs().map_err(rt)?;
        Ok(out)
    }

    /// Forgets recurrent state (a new clip starts).
    pub fn reset(&mut self) {
        for (r, st) in self.model.manifest.recurrent.iter().zip(self.states.iter_mut()) {
            *st = (r.initial_shape.clone(), vec![0f32; r.initial_shape.iter().product::<i64>().max(0) as usize]);
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
                return Err(err(format!(
                    "input '{}' has dynamic size {}: pass --input-size HxW (e.g. 1024x1024) or a manifest",
                    m.input.name,
                    manifest::shape_str(shape)
                )));
            }
        }
    }
    Ok(())
}

impl Segmenter for OnnxSegmenter {
    fn provider(&self) -> Provider {
        self.provider
    }

    fn run(&mut self, input: &ModelInput, out: &mut LowResMask) -> Result<()> {
        let m = &self.model.manifest;
        let rt = |e: ort::Error| Error::Runtime(format!("running {}: {e}", m.name));
        let tensor = TensorRef::from_array_view((input.shape, input.data.as_slice())).map_err(rt)?;
        let mut feeds: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
            vec![(m.input.name.as_str().into(), tensor.into())];
        for (r, (shape, data)) in m.recurrent.iter().zip(&self.states) {
            let t = TensorRef::from_array_view((shape.clone(), data.as_slice())).map_err(rt)?;
            feeds.push((r.input.as_str().into(), t.into()));
        }
        for c in &m.constants {
            let shape = c.shape.clone().unwrap_or_else(|| vec![c.value.len() as i64]);
            let t = TensorRef::from_array_view((shape, c.value.as_slice())).map_err(rt)?;
            feeds.push((c.name.as_str().into(), t.into()));
        }
        let mut session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned by an earlier panic".into()))?;
        let outputs = session.run(feeds).map_err(rt)?;
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
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(rt)?;
        let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
        // Work out (channels, height, width, channel-last?) from the output's shape.
        let (c, h, w, last) = match dims.as_slice() {
            [1, a, b, d] if *d <= 4 && *a > 4 => (*d, *a, *b, true),
            [1, c, h, w] => (*c, *h, *w, false),
            [1, h, w] | [h, w] => (1, *h, *w, false),
            _ => {
                return Err(Error::Runtime(format!(
                    "output '{}' of {} has shape {:?}; expected [1,1,H,W], [1,H,W,1], [1,H,W] or [H,W]",
                    m.output.name, m.name, dims
                )))
            }
        };
        let ch = m.output.channel;
        if ch >= c {
            return Err(Error::Runtime(format!(
                "manifest asks for output channel {ch} but '{}' has {c}",
                m.output.name
            )));
        }
        out.width = w as u32;
        out.height = h as u32;
        out.data.clear();
        let sigmoid = m.output.activation == Activation::Sigmoid;
        let f = |v: f32| {
            let p = if sigmoid { 1.0 / (1.0 + (-v).exp()) } else { v };
            p.clamp(0.0, 1.0)
        };
        if last {
            out.data.extend(data.iter().skip(ch).step_by(c).map(|v| f(*v)));
        } else {
            out.data.extend(data[ch * h * w..(ch + 1) * h * w].iter().map(|v| f(*v)));
        }
        drop(outputs);
        drop(session);
        if !new_states.is_empty() {
            self.states = new_states;
        }
        Ok(())
    }
}
