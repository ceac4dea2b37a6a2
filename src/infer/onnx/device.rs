//! Device runs (IO binding): the model's input and output stay in GPU memory, so the GPU frame path goes
//! decode → preprocess kernel → ONNX Runtime → upsample/composite kernels with no host copy of the tensor or
//! the mask.
//!
//! The input tensor is allocated by ONNX Runtime's own CUDA allocator and bound once; our preprocess kernel
//! writes into it before each run. Binding a tensor made with `TensorRefMut::from_raw` instead (what the first
//! version did) deadlocks: ort treats such a tensor as borrowed, so `IoBinding::bind_input` clones it through
//! a cached "identity" session, and that session's own `bind_input` clones the (again borrowed) source while
//! ort's lock on the identity-session cache is held — a second lock of the same mutex on the same thread.
//! That was the `--cuda-stages` stall at the first frame (H200, 2026-11-28). An owned tensor is never cloned.
//!
//! The output is bound to a device tensor of the shape the first run produced, so after that run the input
//! and output addresses never change (what ONNX Runtime's CUDA graphs need).

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use cudarc::driver::CudaStream;
use ort::session::{IoBinding, RunOptions};
use ort::value::{DynTensor, TensorElementType};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::OnnxSegmenter;
use crate::cuda::TensorElem;
use crate::error::{Error, Result};
use crate::model::Activation;
use crate::runtime::Provider;

/// The model's output left on the GPU by a device run: a device pointer to `batch` masks of `height` ×
/// `width` values of `elem` (logits when `sigmoid`), valid until the next run.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMask {
    pub ptr: u64,
    pub elem: TensorElem,
    pub width: u32,
    pub height: u32,
    pub batch: u32,
    pub sigmoid: bool,
}

impl DeviceMask {
    /// Device pointer to frame `i`'s mask.
    pub fn frame(&self, i: usize) -> u64 {
        self.ptr + (i * self.width as usize * self.height as usize * self.elem.size()) as u64
    }
}

/// The device element type for a model tensor: f32 or f16 (an fp16 export that keeps half-precision inputs and
/// outputs); anything else is refused with the reason.
fn device_elem(ty: Option<TensorElementType>, what: &str, model: &str) -> Result<TensorElem> {
    match ty {
        Some(TensorElementType::Float32) => Ok(TensorElem::F32),
        Some(TensorElementType::Float16) => Ok(TensorElem::F16),
        other => Err(Error::Runtime(format!(
            "model {model}: its {what} is {other:?}; the GPU frame path handles float32 and float16 tensors: use the CPU \
             stages ({})",
            crate::hint::STAGES.to("cpu")
        ))),
    }
}

fn elem_type(e: TensorElem) -> TensorElementType {
    match e {
        TensorElem::F32 => TensorElementType::Float32,
        TensorElem::F16 => TensorElementType::Float16,
    }
}

/// IO binding state for device runs: the binding, ONNX Runtime's CUDA allocator, and the bound input and
/// output tensors (allocated by it). Not `Send`: create it on the thread that runs the model.
#[derive(Default)]
pub struct DeviceIo {
    binding: Option<IoBinding>,
    allocator: Option<Allocator>,
    input: Option<DynTensor>,
    input_shape: [i64; 4],
    input_elem: TensorElem,
    output_elem: TensorElem,
    /// The bound output tensor once its shape is known (fixed address).
    output: Option<DynTensor>,
    /// ONNX Runtime's own output buffer of the first run (before the output was bound), kept until the next.
    first_output: Option<DynTensor>,
    output_bound: bool,
    runs: DeviceRuns,
}

/// The run options of one binding's device runs, made on first use: the CUDA graph its runs capture and
/// replay where the session captures graphs (`gpu_graph_id`: one per binding and input shape, since a graph
/// keeps the addresses it was captured with — two bindings on one session, as `--jobs` makes, must not share
/// one), and for the runs [`OnnxSegmenter::run_device_on`] only queues, no wait for the GPU at the end.
#[derive(Default)]
struct DeviceRuns {
    graph: i32,
    /// Runs so far (ONNX Runtime captures a graph on its second run).
    count: u32,
    waited: Option<RunOptions>,
    queued: Option<RunOptions>,
}

/// The next binding's CUDA graph id (0 is ONNX Runtime's default, -1 its "no graph").
static NEXT_GRAPH: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);

/// Held for writing across the runs that may capture a CUDA graph. ONNX Runtime captures in CUDA's global mode:
/// meanwhile, a call of another thread that may synchronise the device (an allocation, a pageable copy) fails and
/// spoils the capture. Our other threads make such calls inside [`outside_capture`]. (GStreamer's CUDA decoder
/// allocates its pool when it starts, before the model's first run.)
static CAPTURE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Runs `f` (CUDA calls that may synchronise: allocations, pageable copies) while no CUDA graph is being captured.
pub fn outside_capture<T>(f: impl FnOnce() -> T) -> T {
    let _g = CAPTURE.read().unwrap_or_else(|p| p.into_inner());
    f()
}

impl DeviceRuns {
    /// For a new binding (or a new input shape): a graph of its own.
    fn renew(&mut self) {
        *self = DeviceRuns { graph: NEXT_GRAPH.fetch_add(1, Ordering::Relaxed), ..Default::default() };
    }

    /// `graph`: where the session captures graphs, whether this binding's runs use one (else `gpu_graph_id` -1).
    fn get(&mut self, queued: bool, graph: Option<bool>) -> ort::Result<&RunOptions> {
        let id = self.graph;
        let slot = if queued { &mut self.queued } else { &mut self.waited };
        if slot.is_none() {
            let mut o = RunOptions::new()?;
            if queued {
                o.disable_device_sync()?;
            }
            match graph {
                Some(true) => o.set("gpu_graph_id", id.to_string())?,
                Some(false) => o.set("gpu_graph_id", "-1")?,
                None => {}
            }
            *slot = Some(o);
        }
        Ok(slot.as_ref().unwrap())
    }
}

impl DeviceIo {
    /// The input tensor's shape (all zero before [`OnnxSegmenter::device_input`]).
    pub fn input_shape(&self) -> [i64; 4] {
        self.input_shape
    }

    /// The input tensor's element type (what the preprocess kernel must write).
    pub fn input_elem(&self) -> TensorElem {
        self.input_elem
    }
}

fn rt(name: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| super::run_error(&format!("device run of {name}"), &e)
}

static ORT_RUN_NS: AtomicU64 = AtomicU64::new(0);
static ORT_RUNS: AtomicU64 = AtomicU64::new(0);

/// Device runs so far in this process and the time spent inside ONNX Runtime's run call (the rest of a
/// device run's time is binding and output handling on our side).
pub fn ort_run_time() -> (u64, Duration) {
    (ORT_RUNS.load(Ordering::Relaxed), Duration::from_nanos(ORT_RUN_NS.load(Ordering::Relaxed)))
}

impl OnnxSegmenter {
    /// The device buffer the model reads its input from, for an input of `shape` (f32 values laid out as the
    /// manifest says): allocated by ONNX Runtime on GPU `device_id` and bound to the session on first use or
    /// when the shape changes. Write the tensor there (on any stream, synchronised before [`Self::run_device`]).
    pub fn device_input(&mut self, io: &mut DeviceIo, shape: [i64; 4], device_id: i32) -> Result<u64> {
        let m = self.model.manifest.clone();
        let rt = rt(&m.name);
        if self.provider != Provider::Cuda && self.provider != Provider::TensorRt {
            return Err(Error::Runtime(format!(
                "device runs need the CUDA provider; {} runs on {}",
                m.name,
                self.provider.name()
            )));
        }
        if !m.recurrent.is_empty() || !m.constants.is_empty() {
            return Err(Error::Runtime(format!(
                "device runs do not carry recurrent state or constant inputs yet; use the CPU stages ({})",
                crate::hint::STAGES.to("cpu")
            )));
        }
        if io.input.is_some() && io.input_shape == shape {
            return Ok(io.input.as_mut().unwrap().data_ptr_mut() as u64);
        }
        let session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned".into()))?;
        if io.allocator.is_none() {
            let mem = MemoryInfo::new(AllocationDevice::CUDA, device_id, AllocatorType::Device, MemoryType::Default).map_err(&rt)?;
            io.allocator = Some(Allocator::new(&session, mem).map_err(&rt)?);
        }
        if io.binding.is_none() {
            io.binding = Some(session.create_binding().map_err(&rt)?);
        }
        let alloc = io.allocator.as_ref().unwrap();
        let binding = io.binding.as_mut().unwrap();
        let in_elem = device_elem(
            session.inputs().iter().find(|i| i.name() == m.input.name).and_then(|i| i.dtype().tensor_type()),
            &format!("input '{}'", m.input.name),
            &m.name,
        )?;
        let out_info = session.outputs().iter().find(|o| o.name() == m.output.name);
        let out_elem = device_elem(out_info.and_then(|o| o.dtype().tensor_type()), &format!("output '{}'", m.output.name), &m.name)?;
        let mut input = DynTensor::new(alloc, elem_type(in_elem), shape.map(|d| d as usize)).map_err(&rt)?;
        // An owned tensor: ort binds it as is (no clone), so later kernel writes into it are what the model reads.
        binding.bind_input(m.input.name.as_str(), &input).map_err(&rt)?;
        // The output: a tensor of its declared shape (batch as the input's) bound now, so the addresses are fixed
        // from the first run (CUDA graphs need that); a model with other dynamic output dimensions gets its
        // output sized by the first run instead.
        let declared: Option<Vec<i64>> = out_info.and_then(|o| o.dtype().tensor_shape().map(|s| s.to_vec()));
        let fixed = declared
            .map(|mut d| {
                if let Some(b) = d.first_mut().filter(|b| **b <= 0) {
                    *b = shape[0];
                }
                d
            })
            .filter(|d| !d.is_empty() && d.iter().all(|x| *x > 0));
        io.first_output = None;
        match fixed {
            Some(dims) => {
                let mut out = DynTensor::new(alloc, elem_type(out_elem), dims.iter().map(|d| *d as usize).collect::<Vec<_>>()).map_err(&rt)?;
                binding.bind_output(m.output.name.as_str(), &mut out).map_err(&rt)?;
                io.output = Some(out);
                io.output_bound = true;
            }
            None => {
                let mem = MemoryInfo::new(AllocationDevice::CUDA, device_id, AllocatorType::Device, MemoryType::Default).map_err(&rt)?;
                binding.bind_output_to_device(m.output.name.as_str(), &mem).map_err(&rt)?;
                io.output = None;
                io.output_bound = false;
            }
        }
        io.input_shape = shape;
        io.runs.renew();
        io.input_elem = in_elem;
        io.output_elem = out_elem;
        let ptr = input.data_ptr_mut() as u64;
        io.input = Some(input);
        Ok(ptr)
    }

    /// Runs the model on the bound device input (see [`Self::device_input`]). Returns when the output is
    /// complete; the mask stays on the GPU. CUDA provider only; single-channel outputs.
    pub fn run_device(&mut self, io: &mut DeviceIo) -> Result<DeviceMask> {
        self.run_device_ordered(io, None)
    }

    /// Runs the model after the work queued on `stream` so far (which writes its input), and queues on `stream`
    /// a wait for the run, so that kernels queued there next may read the mask. Where the session runs on a
    /// stream of ours ([`Self::compute_stream`]) this returns once the run is queued, without waiting for the
    /// GPU: the host goes on to the next frame while the model runs. Otherwise it waits for `stream` before
    /// the run and for the run's end, as [`Self::run_device`].
    pub fn run_device_on(&mut self, io: &mut DeviceIo, stream: &CudaStream) -> Result<DeviceMask> {
        self.run_device_ordered(io, Some(stream))
    }

    fn run_device_ordered(&mut self, io: &mut DeviceIo, after: Option<&CudaStream>) -> Result<DeviceMask> {
        let m = self.model.manifest.clone();
        let rt = rt(&m.name);
        let (Some(binding), Some(_)) = (io.binding.as_mut(), io.input.as_ref()) else {
            return Err(Error::Runtime("run_device before device_input".into()));
        };
        let cuda = |what: &'static str| move |x: cudarc::driver::DriverError| Error::Cuda(format!("{what}: {x}"));
        let queued = match (after, self.stream.as_deref()) {
            (Some(after), Some(ours)) => Some((after, ours)),
            (Some(after), None) => {
                after.synchronize().map_err(cuda("sync"))?;
                None
            }
            (None, _) => None,
        };
        let mut session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned".into()))?;
        let t0 = Instant::now();
        // ONNX Runtime captures on a binding's second run; the first three are guarded (see CAPTURE).
        let graph = self.graphs.then_some(self.device_graphs);
        let _capturing = (graph == Some(true) && io.runs.count < 3).then(|| CAPTURE.write().unwrap_or_else(|p| p.into_inner()));
        io.runs.count += 1;
        let options = io.runs.get(queued.is_some(), graph).map_err(&rt)?;
        let mut outputs = match queued {
            Some((after, ours)) => {
                // (The GPU stages queue on the session's own stream: stream order does it, no events.)
                let other = after.cu_stream() != ours.cu_stream();
                if other {
                    ours.join(after).map_err(cuda("ordering the run after its input"))?;
                }
                let outputs = session.run_binding_with_options(binding, options).map_err(&rt)?;
                if other {
                    after.join(ours).map_err(cuda("ordering the mask steps after the run"))?;
                }
                outputs
            }
            None => session.run_binding_with_options(binding, options).map_err(&rt)?,
        };
        ORT_RUN_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        ORT_RUNS.fetch_add(1, Ordering::Relaxed);
        let value = outputs
            .remove(&m.output.name)
            .ok_or_else(|| Error::Runtime(format!("model {} produced no output '{}'", m.name, m.output.name)))?;
        drop(outputs);
        let t = value.downcast::<ort::value::DynTensorValueType>().map_err(&rt)?;
        let elem = io.output_elem;
        let dims: Vec<i64> = t.shape().to_vec();
        let batch = io.input_shape[0];
        let (h, w) = match dims.as_slice() {
            [b, 1, h, w] | [b, h, w, 1] | [b, h, w] if *b == batch => (*h, *w),
            [h, w] if batch == 1 => (*h, *w),
            _ => {
                return Err(Error::Runtime(format!(
                    "device runs need a single-channel output per frame; '{}' is {dims:?} for a batch of {batch}",
                    m.output.name
                )))
            }
        };
        let ptr = t.data_ptr() as u64;
        let out = DeviceMask {
            ptr,
            elem,
            width: w as u32,
            height: h as u32,
            batch: batch as u32,
            sigmoid: m.output.activation == Activation::Sigmoid,
        };
        if io.output_bound {
            // The first run's buffer (if any) was valid until this run.
            io.first_output = None;
        } else {
            // Keep this run's buffer alive for the caller until the next run, and bind a tensor of this shape
            // for the next runs: fixed addresses from then on.
            let alloc = io.allocator.as_ref().unwrap();
            let mut fixed = DynTensor::new(alloc, elem_type(elem), dims.iter().map(|d| *d as usize).collect::<Vec<_>>()).map_err(&rt)?;
            binding.bind_output(m.output.name.as_str(), &mut fixed).map_err(&rt)?;
            io.first_output = Some(t);
            io.output = Some(fixed);
            io.output_bound = true;
        }
        Ok(out)
    }
}

impl OnnxSegmenter {
    /// The model input's declared batch dimension (≤ 0: dynamic, any batch size runs).
    pub fn declared_batch(&self) -> i64 {
        self.declared_batch
    }

    /// Ends ONNX Runtime's session profiling (enabled with `ProviderOptions::profile`) and returns the JSON
    /// file it wrote.
    pub fn end_profiling(&self) -> Result<String> {
        let mut session = self.session.lock().map_err(|_| Error::Runtime("inference session poisoned".into()))?;
        session.end_profiling().map_err(|e| Error::Runtime(format!("ending the profile: {e}")))
    }
}
