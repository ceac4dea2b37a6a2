//! `com.matteflow.WindowAttention`: Swin's window attention as one operator (what `matteflow prepare`'s
//! `window-attention` pass writes). This is the host implementation, for the CPU provider and as the reference
//! the CUDA kernel is checked against.
//!
//! Inputs: `qkv` [W·S·3C] laid out [W, S, 3, heads, head_dim] (the qkv Linear's output, without its bias);
//! `bias` [Wb, Hb, S, S] added to the scaled logits, window w reading `bias[w % Wb]`, head h `bias[.., h % Hb]`
//! (optional); `qkv_bias` [3C] (optional); `mask` [Wm, Hm, S, S] added as `bias` is (optional: Swin's shift
//! mask [nW, 1, S, S], kept apart from its relative-position bias [1, heads, S, S] so that neither is broadcast
//! over the other in memory). Attributes: `heads`, `head_dim`, `tokens` (S), `scale`.
//! Output [W, S, C], laid out [W, S, heads, head_dim] (the exporter's `(attn @ v).transpose(1, 2)`).

use std::sync::{Arc, Mutex};

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::{DynTensorValueType, TensorElementType};

use super::ops::{for_current_device, read_f32, write_f32, Loaded};

pub const DOMAIN: &str = "com.matteflow";

/// The operator's attributes, read once when the kernel is made.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub heads: usize,
    pub head_dim: usize,
    pub tokens: usize,
    pub scale: f32,
}

impl Shape {
    fn from_kernel(k: &KernelContext<'_>) -> ort::Result<Self> {
        let int = |name: &str| -> ort::Result<usize> {
            k.get::<i64>(name)
                .filter(|v| *v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| ort::Error::new(format!("WindowAttention: attribute {name} missing or not positive")))
        };
        let scale = k.get::<f32>("scale").ok_or_else(|| ort::Error::new("WindowAttention: attribute scale missing"))?;
        Ok(Shape { heads: int("heads")?, head_dim: int("head_dim")?, tokens: int("tokens")?, scale })
    }

    pub fn channels(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Whether the CUDA kernel takes this shape (head size 32, at most 160 tokens a window).
    pub fn fits_kernel(&self) -> bool {
        self.head_dim == 32 && self.tokens <= 160
    }
}

/// The attention itself, in f32: `qkv` as described above, `out` [W, S, C]. The reference for the CUDA kernel.
/// `biases`: each (values [Wb, Hb, S, S], Wb, Hb), all added.
pub fn attend(sh: Shape, qkv: &[f32], biases: &[(&[f32], usize, usize)], qkv_bias: Option<&[f32]>, out: &mut [f32]) {
    let (s, hd, c) = (sh.tokens, sh.head_dim, sh.channels());
    let windows = qkv.len() / (s * 3 * c);
    let mut logits = vec![0f32; s];
    let mut acc = vec![0f32; hd];
    let get = |w: usize, t: usize, which: usize, h: usize, d: usize| -> f32 {
        let i = which * c + h * hd + d;
        qkv[(w * s + t) * 3 * c + i] + qkv_bias.map_or(0.0, |b| b[i])
    };
    for w in 0..windows {
        for h in 0..sh.heads {
            for i in 0..s {
                let mut max = f32::NEG_INFINITY;
                for (j, l) in logits.iter_mut().enumerate() {
                    let dot: f32 = (0..hd).map(|d| get(w, i, 0, h, d) * get(w, j, 1, h, d)).sum();
                    let b: f32 = biases.iter().map(|(b, wb, hb)| b[(((w % wb) * hb + h % hb) * s + i) * s + j]).sum();
                    *l = dot * sh.scale + b;
                    max = max.max(*l);
                }
                let mut sum = 0.0;
                for l in logits.iter_mut() {
                    *l = (*l - max).exp();
                    sum += *l;
                }
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (j, p) in logits.iter().enumerate() {
                    for (d, a) in acc.iter_mut().enumerate() {
                        *a += p * get(w, j, 2, h, d);
                    }
                }
                let o = &mut out[(w * s + i) * c + h * hd..][..hd];
                for (o, a) in o.iter_mut().zip(&acc) {
                    *o = a / sum;
                }
            }
        }
    }
}

/// The host operator for one element type (f32 or f16; f16 is computed in f32).
pub(super) struct Host(pub TensorElementType);

impl Operator for Host {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "WindowAttention"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(self.0), OperatorInput::optional(self.0), OperatorInput::optional(self.0), OperatorInput::optional(self.0)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.0)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let sh = Shape::from_kernel(k)?;
        let ty = self.0;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let qkv = ctx.input(0)?.ok_or_else(|| ort::Error::new("WindowAttention: no qkv input"))?;
            let (_, qkv) = read_f32(&qkv, ty)?;
            let per_window = sh.tokens * 3 * sh.channels();
            if qkv.is_empty() || qkv.len() % per_window != 0 {
                return Err(ort::Error::new(format!(
                    "WindowAttention: qkv has {} values, not a multiple of tokens·3·channels = {per_window}",
                    qkv.len()
                )));
            }
            let windows = qkv.len() / per_window;
            let mut biases = Vec::new();
            for i in [1, 3] {
                if let Some(b) = ctx.input(i)? {
                    let (shape, b) = read_f32(&b, ty)?;
                    let (wb, hb) = check_bias(&shape, sh, windows)?;
                    biases.push((b, wb, hb));
                }
            }
            let qkv_bias = match ctx.input(2)? {
                Some(b) => Some(read_f32(&b, ty)?.1),
                None => None,
            };
            let mut out = vec![0f32; windows * sh.tokens * sh.channels()];
            let biases: Vec<_> = biases.iter().map(|(b, wb, hb)| (b.as_slice(), *wb, *hb)).collect();
            attend(sh, &qkv, &biases, qkv_bias.as_deref(), &mut out);
            write_f32(ctx, vec![windows as i64, sh.tokens as i64, sh.channels() as i64], ty, &out, "WindowAttention")
        }))
    }
}

/// The kernel's compile-time sizes: `tiles` key tiles of 8 (the tokens padded to a multiple of 16), scored
/// `chunk` tiles at a time (the online softmax's step; fewer registers, more rescaling), registers budgeted for
/// `min_blocks` blocks per SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelConfig {
    pub tiles: usize,
    pub chunk: usize,
    pub min_blocks: usize,
}

impl KernelConfig {
    /// What the operator compiles for `tokens`: 16 keys a step, registers for 2 blocks per SM (ptxas on sm_90 for
    /// 144 tokens: 84 registers, no spills; `gpu-check` times the others beside it).
    pub fn for_tokens(tokens: usize) -> KernelConfig {
        KernelConfig { tiles: tokens.div_ceil(16) * 2, chunk: 2, min_blocks: 2 }
    }

    pub fn defines(&self) -> Vec<String> {
        vec![format!("WA_TILES={}", self.tiles), format!("WA_CHUNK={}", self.chunk), format!("WA_MIN_BLOCKS={}", self.min_blocks)]
    }
}

/// The kernel of src/cuda/attention.cu for one `KernelConfig`, loaded into a device's primary context (the
/// one ONNX Runtime's CUDA provider and cudarc both use).
pub struct Kernel {
    cfg: KernelConfig,
    _module: Arc<cudarc::driver::CudaModule>,
    f: cudarc::driver::CudaFunction,
}

static LOADED: Loaded<KernelConfig, Kernel> = Mutex::new(Vec::new());

impl Kernel {
    /// Compiles the kernel for `cfg` and `ctx`'s device and loads it there.
    pub fn load(ctx: &Arc<cudarc::driver::CudaContext>, cfg: KernelConfig) -> crate::Result<Kernel> {
        let ptx = crate::cuda::compile_attention(crate::cuda::arch_of(ctx)?, &cfg.defines())?;
        let cuda = |what: &str, e: cudarc::driver::DriverError| crate::Error::Cuda(format!("window attention kernel: {what}: {e}"));
        let module = ctx.load_module(ptx).map_err(|e| cuda("load", e))?;
        let f = module.load_function("window_attention").map_err(|e| cuda("function", e))?;
        Ok(Kernel { cfg, _module: module, f })
    }

    /// Launches the attention on `stream` over device buffers: `qkv` [windows, S, 3, heads, 32] f16, `bias` and
    /// `mask` each (pointer to [Wb, Hb, S, S] f16, Wb, Hb) or None, `qkv_bias` [3·heads·32] f16 or null, `out`
    /// [windows, S, heads·32] f16.
    ///
    /// # Safety
    /// The pointers must be device buffers of those sizes in this kernel's context, live until the stream
    /// reaches the kernel; `sh.head_dim` must be 32 and the kernel's config the one for `sh.tokens`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch(
        &self,
        stream: cudarc::driver::sys::CUstream,
        sh: Shape,
        windows: usize,
        qkv: *const std::ffi::c_void,
        bias: Option<(*const std::ffi::c_void, usize, usize)>,
        qkv_bias: *const std::ffi::c_void,
        mask: Option<(*const std::ffi::c_void, usize, usize)>,
        out: *mut std::ffi::c_void,
    ) -> Result<(), cudarc::driver::DriverError> {
        debug_assert!(sh.head_dim == 32 && sh.tokens.div_ceil(16) * 2 == self.cfg.tiles);
        let (mut p_qkv, mut p_qb, mut p_out) = (qkv, qkv_bias, out);
        let (mut p_bias, wb, hb) = bias.unwrap_or((std::ptr::null(), 1, 1));
        let (mut p_mask, wm, hm) = mask.unwrap_or((std::ptr::null(), 1, 1));
        let [mut wb, mut hb, mut wm, mut hm] = [wb, hb, wm, hm].map(|v| v as i32);
        let (mut s, mut h, mut scale) = (sh.tokens as i32, sh.heads as i32, sh.scale);
        let sp = self.cfg.tiles * 8;
        let mut params: [*mut std::ffi::c_void; 12] = [
            (&raw mut p_qkv).cast(),
            (&raw mut p_bias).cast(),
            (&raw mut p_qb).cast(),
            (&raw mut p_mask).cast(),
            (&raw mut p_out).cast(),
            (&raw mut s).cast(),
            (&raw mut h).cast(),
            (&raw mut wb).cast(),
            (&raw mut hb).cast(),
            (&raw mut wm).cast(),
            (&raw mut hm).cast(),
            (&raw mut scale).cast(),
        ];
        // SAFETY: the caller's contract; the twelve parameters are the kernel's, in its order and types. Grid
        // (windows, heads), SP/16 warps, 192·SP bytes of shared memory (src/cuda/attention.cu).
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.f.cu_function(),
                (windows as u32, sh.heads as u32, 1),
                ((sp / 16 * 32) as u32, 1, 1),
                (192 * sp) as u32,
                stream,
                &mut params,
            )
        }
    }
}

/// The CUDA provider's operator: float16 on device buffers, launched on the provider's stream.
pub(super) struct Cuda;

impl Operator for Cuda {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "WindowAttention"
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some("CUDAExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let t = TensorElementType::Float16;
        [OperatorInput::required(t), OperatorInput::optional(t), OperatorInput::optional(t), OperatorInput::optional(t)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float16)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let sh = Shape::from_kernel(k)?;
        if !sh.fits_kernel() {
            return Err(ort::Error::new(format!("WindowAttention on CUDA takes head size 32 and ≤ 160 tokens, not {} and {}", sh.head_dim, sh.tokens)));
        }
        let mut kernel: Option<Arc<Kernel>> = None;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let stream = ctx.stream()?.ok_or_else(|| ort::Error::new("WindowAttention: no CUDA stream"))?;
            let kern = match &kernel {
                Some(k) => k.clone(),
                None => {
                    let cfg = KernelConfig::for_tokens(sh.tokens);
                    kernel.insert(for_current_device(&LOADED, cfg, "WindowAttention", |ctx| Kernel::load(ctx, cfg))?).clone()
                }
            };
            let qkv = ctx.input(0)?.ok_or_else(|| ort::Error::new("WindowAttention: no qkv input"))?.downcast::<DynTensorValueType>()?;
            let n: i64 = qkv.shape().iter().product();
            let per_window = (sh.tokens * 3 * sh.channels()) as i64;
            if n == 0 || n % per_window != 0 {
                return Err(ort::Error::new(format!("WindowAttention: qkv has {n} values, not a multiple of {per_window}")));
            }
            let windows = (n / per_window) as usize;
            let tensor = |i: usize| -> ort::Result<_> { ctx.input(i)?.map(|b| b.downcast::<DynTensorValueType>()).transpose() };
            let (bias, qkv_bias, mask) = (tensor(1)?, tensor(2)?, tensor(3)?);
            let bias_dims = bias.as_ref().map(|b| check_bias(b.shape(), sh, windows)).transpose()?;
            let mask_dims = mask.as_ref().map(|b| check_bias(b.shape(), sh, windows)).transpose()?;
            let out = ctx
                .output(0, vec![windows as i64, sh.tokens as i64, sh.channels() as i64])?
                .ok_or_else(|| ort::Error::new("WindowAttention: no output"))?
                .downcast::<DynTensorValueType>()?;
            let bias = bias.as_ref().zip(bias_dims).map(|(b, (wb, hb))| (b.data_ptr(), wb, hb));
            let mask = mask.as_ref().zip(mask_dims).map(|(b, (wb, hb))| (b.data_ptr(), wb, hb));
            let qkv_bias = qkv_bias.as_ref().map_or(std::ptr::null(), |b| b.data_ptr());
            // SAFETY: ONNX Runtime's device buffers for this call (sizes checked above; the output's buffer is
            // writable: GetTensorMutableData underneath), on its stream, in the current (its) context.
            unsafe { kern.launch(stream.as_ptr().cast(), sh, windows, qkv.data_ptr(), bias, qkv_bias, mask, out.data_ptr().cast_mut()) }
                .map_err(|e| ort::Error::new(format!("WindowAttention: launch: {e}")))
        }))
    }
}

/// (Wb, Hb) of a bias of shape [Wb, Hb, S, S] that fits `windows` windows of `sh`, else the error.
fn check_bias(shape: &[i64], sh: Shape, windows: usize) -> ort::Result<(usize, usize)> {
    let s = sh.tokens as i64;
    let ok = shape.len() == 4
        && shape[2] == s
        && shape[3] == s
        && shape[0] > 0
        && windows % shape[0] as usize == 0
        && (shape[1] == 1 || shape[1] == sh.heads as i64);
    if !ok {
        return Err(ort::Error::new(format!("WindowAttention: bias shape {shape:?} does not fit {windows} windows of {s} tokens, {} heads", sh.heads)));
    }
    Ok((shape[0] as usize, shape[1] as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One window, one head, two tokens, head size 1: worked by hand.
    #[test]
    fn two_tokens_by_hand() {
        let sh = Shape { heads: 1, head_dim: 1, tokens: 2, scale: 1.0 };
        // token 0: q=1 k=0 v=10; token 1: q=0 k=1 v=20
        let qkv = [1.0, 0.0, 10.0, 0.0, 1.0, 20.0];
        let mut out = [0f32; 2];
        attend(sh, &qkv, &[], None, &mut out);
        // token 0: logits [0, 1] → p = [1/(1+e), e/(1+e)]
        let e = 1f32.exp();
        assert!((out[0] - (10.0 + 20.0 * e) / (1.0 + e)).abs() < 1e-5, "{out:?}");
        assert!((out[1] - 15.0).abs() < 1e-5, "{out:?}");
        // a bias of −∞ on key 1 for every query: only token 0's value is left
        let bias = [0.0, -1e9, 0.0, -1e9];
        attend(sh, &qkv, &[(&bias, 1, 1)], None, &mut out);
        assert!((out[0] - 10.0).abs() < 1e-4 && (out[1] - 10.0).abs() < 1e-4, "{out:?}");
        // the same split in two, each −∞ half: a bias and a mask add up
        let half = [0.0, -5e8, 0.0, -5e8];
        attend(sh, &qkv, &[(&half, 1, 1), (&half, 1, 1)], None, &mut out);
        assert!((out[0] - 10.0).abs() < 1e-4 && (out[1] - 10.0).abs() < 1e-4, "{out:?}");
        // a qkv bias of +1 on token values: every output moves by 1
        let qkv_bias = [0.0, 0.0, 1.0];
        attend(sh, &qkv, &[], Some(&qkv_bias), &mut out);
        assert!((out[1] - 16.0).abs() < 1e-5, "{out:?}");
    }
}
