//! `com.matteflow.DeformIm2Col`: the columns of a modulated deformable convolution (what `matteflow prepare`'s
//! `deform-im2col` pass writes in place of ONNX's DeformConv, followed by a MatMul with the weights and a
//! Reshape). This is the host implementation, for the CPU provider and as the reference the CUDA kernel
//! (src/cuda/deform.cu) is checked against.
//!
//! Inputs: `x` [N, C, H, W]; `offset` [N, 2·kh·kw, Ho, Wo] ((Δy, Δx) pairs per kernel position, as DeformConv
//! with one offset group); `mask` [N, kh·kw, Ho, Wo] (optional: the modulation). Attributes as DeformConv's:
//! `kernel_shape`, `strides`, `pads`, `dilations` (group and offset group 1), and `ones_rows` (default 0).
//! Output [N, C·kh·kw + ones_rows, Ho·Wo], row c·kh·kw + i·kw + j (the order of the weights [Cout, C, kh, kw]
//! flattened); then, where `ones_rows` > 0, a row of ones and zero rows: the MatMul after it takes the
//! convolution's bias as one more weight column (8 rows keep its inner size a multiple of 8, as tensor cores
//! want), so no separate bias Add reads and writes the output again.

use std::sync::{Arc, Mutex};

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::{DynTensorValueType, TensorElementType};

use super::ops::{for_current_device, read_f32, write_f32, Loaded};

/// The operator's attributes, read once when the kernel is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    /// Top and left padding (the bottom and right only decide Ho and Wo, which the offsets carry).
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
    /// Rows after the columns: a row of ones, then zeros (0: none).
    pub ones_rows: usize,
}

impl Geometry {
    fn from_kernel(k: &KernelContext<'_>) -> ort::Result<Self> {
        let ints = |name: &str, len: usize, default: i64| -> ort::Result<Vec<usize>> {
            let v = k.get::<Vec<i64>>(name).unwrap_or_else(|| vec![default; len]);
            if v.len() < len || v.iter().any(|x| *x < 0) || (name != "pads" && v.contains(&0)) {
                return Err(ort::Error::new(format!("DeformIm2Col: attribute {name} {v:?} is not {len} valid values")));
            }
            Ok(v.into_iter().map(|x| x as usize).collect())
        };
        let ks = k.get::<Vec<i64>>("kernel_shape").ok_or_else(|| ort::Error::new("DeformIm2Col: attribute kernel_shape missing"))?;
        if ks.len() != 2 || ks.iter().any(|x| *x <= 0) {
            return Err(ort::Error::new(format!("DeformIm2Col: kernel_shape {ks:?} is not two positive sizes")));
        }
        let (s, p, d) = (ints("strides", 2, 1)?, ints("pads", 4, 0)?, ints("dilations", 2, 1)?);
        let ones_rows = k.get::<i64>("ones_rows").unwrap_or(0);
        if !(0..=64).contains(&ones_rows) {
            return Err(ort::Error::new(format!("DeformIm2Col: ones_rows {ones_rows} is not in 0..=64")));
        }
        Ok(Geometry {
            kh: ks[0] as usize,
            kw: ks[1] as usize,
            stride: (s[0], s[1]),
            pad: (p[0], p[1]),
            dilation: (d[0], d[1]),
            ones_rows: ones_rows as usize,
        })
    }

    pub fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Rows of the output for `c` input channels.
    pub fn rows(&self, c: usize) -> usize {
        c * self.taps() + self.ones_rows
    }
}

/// The sizes of one call: batch, channels, input map, output map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Dims {
    /// From the inputs' shapes, each checked against the others and `geo`.
    pub fn of(x: &[i64], offset: &[i64], mask: Option<&[i64]>, geo: Geometry) -> ort::Result<Dims> {
        let bad = |what: String| ort::Error::new(format!("DeformIm2Col: {what}"));
        if x.len() != 4 || offset.len() != 4 || x.iter().chain(offset).any(|d| *d <= 0) {
            return Err(bad(format!("x {x:?} and offset {offset:?} must be 4-D [N, C, H, W] and [N, 2·kh·kw, Ho, Wo]")));
        }
        let kk = geo.taps() as i64;
        if offset[0] != x[0] || offset[1] != 2 * kk {
            return Err(bad(format!("offset {offset:?} does not fit x {x:?} and a {}×{} kernel (one offset group)", geo.kh, geo.kw)));
        }
        if let Some(m) = mask {
            if m != [x[0], kk, offset[2], offset[3]] {
                return Err(bad(format!("mask {m:?} is not [{}, {kk}, {}, {}]", x[0], offset[2], offset[3])));
            }
        }
        let u = |v: i64| v as usize;
        Ok(Dims { n: u(x[0]), c: u(x[1]), h: u(x[2]), w: u(x[3]), ho: u(offset[2]), wo: u(offset[3]) })
    }

    pub fn cols_shape(&self, geo: Geometry) -> Vec<i64> {
        vec![self.n as i64, geo.rows(self.c) as i64, (self.ho * self.wo) as i64]
    }
}

/// The bilinear sample of one map at (y, x) as torchvision's deform_conv2d takes it: 0 outside (−1, H) × (−1, W),
/// each corner outside the map read as 0.
fn sample(map: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    if y <= -1.0 || y >= h as f32 || x <= -1.0 || x >= w as f32 {
        return 0.0;
    }
    let (fy, fx) = (y.floor(), x.floor());
    let (ly, lx) = (y - fy, x - fx);
    let (y0, x0) = (fy as i64, fx as i64);
    let at = |yy: i64, xx: i64| -> f32 {
        if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
            0.0
        } else {
            map[yy as usize * w + xx as usize]
        }
    };
    (1.0 - ly) * (1.0 - lx) * at(y0, x0) + (1.0 - ly) * lx * at(y0, x0 + 1) + ly * (1.0 - lx) * at(y0 + 1, x0) + ly * lx * at(y0 + 1, x0 + 1)
}

/// The columns in f32: `x` [N, C, H, W], `offset` [N, 2·KK, Ho, Wo], `mask` [N, KK, Ho, Wo] or None, `cols`
/// [N, C·KK + ones_rows, Ho·Wo]. The reference for the CUDA kernel.
pub fn im2col(geo: Geometry, d: Dims, x: &[f32], offset: &[f32], mask: Option<&[f32]>, cols: &mut [f32]) {
    let (kk, p, rows) = (geo.taps(), d.ho * d.wo, geo.rows(d.c));
    for n in 0..d.n {
        for r in 0..geo.ones_rows {
            cols[(n * rows + d.c * kk + r) * p..][..p].fill(if r == 0 { 1.0 } else { 0.0 });
        }
        for k in 0..kk {
            let (i, j) = (k / geo.kw, k % geo.kw);
            for oh in 0..d.ho {
                for ow in 0..d.wo {
                    let q = oh * d.wo + ow;
                    let dy = offset[(n * 2 * kk + 2 * k) * p + q];
                    let dx = offset[(n * 2 * kk + 2 * k + 1) * p + q];
                    let m = mask.map_or(1.0, |m| m[(n * kk + k) * p + q]);
                    let y = (oh * geo.stride.0 + i * geo.dilation.0) as f32 - geo.pad.0 as f32 + dy;
                    let xx = (ow * geo.stride.1 + j * geo.dilation.1) as f32 - geo.pad.1 as f32 + dx;
                    for c in 0..d.c {
                        let map = &x[(n * d.c + c) * d.h * d.w..][..d.h * d.w];
                        cols[(n * rows + c * kk + k) * p + q] = m * sample(map, d.h, d.w, y, xx);
                    }
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
        "DeformIm2Col"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(self.0), OperatorInput::required(self.0), OperatorInput::optional(self.0)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.0)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let geo = Geometry::from_kernel(k)?;
        let ty = self.0;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| ort::Error::new(format!("DeformIm2Col: no {what} input")));
            let (xs, x) = read_f32(&input(0, "x")?, ty)?;
            let (os, offset) = read_f32(&input(1, "offset")?, ty)?;
            let mask = ctx.input(2)?.map(|m| read_f32(&m, ty)).transpose()?;
            let d = Dims::of(&xs, &os, mask.as_ref().map(|(s, _)| s.as_slice()), geo)?;
            let mut cols = vec![0f32; d.n * geo.rows(d.c) * d.ho * d.wo];
            im2col(geo, d, &x, &offset, mask.as_ref().map(|(_, m)| m.as_slice()), &mut cols);
            write_f32(ctx, d.cols_shape(geo), ty, &cols, "DeformIm2Col")
        }))
    }
}

/// The kernel of src/cuda/deform.cu, loaded into a device's primary context (the one ONNX Runtime's CUDA
/// provider and cudarc both use).
pub struct Kernel {
    _module: Arc<cudarc::driver::CudaModule>,
    f: cudarc::driver::CudaFunction,
}

static LOADED: Loaded<(), Kernel> = Mutex::new(Vec::new());

/// Threads per block of the launch.
const BLOCK: usize = 256;

impl Kernel {
    /// Compiles the kernel for `ctx`'s device and loads it there.
    pub fn load(ctx: &Arc<cudarc::driver::CudaContext>) -> crate::Result<Kernel> {
        let ptx = crate::cuda::compile_deform(crate::cuda::arch_of(ctx)?)?;
        let cuda = |what: &str, e: cudarc::driver::DriverError| crate::Error::Cuda(format!("deformable im2col kernel: {what}: {e}"));
        let module = ctx.load_module(ptx).map_err(|e| cuda("load", e))?;
        let f = module.load_function("deform_im2col").map_err(|e| cuda("function", e))?;
        Ok(Kernel { _module: module, f })
    }

    /// Launches the columns on `stream` over device buffers: `x` [N, C, H, W] f16, `offset` [N, 2·KK, Ho, Wo]
    /// f16, `mask` [N, KK, Ho, Wo] f16 or null, `cols` [N, C·KK + ones_rows, Ho·Wo] f16.
    ///
    /// # Safety
    /// The pointers must be device buffers of those sizes in this kernel's context, live until the stream
    /// reaches the kernel.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch(
        &self,
        stream: cudarc::driver::sys::CUstream,
        geo: Geometry,
        d: Dims,
        x: *const std::ffi::c_void,
        offset: *const std::ffi::c_void,
        mask: *const std::ffi::c_void,
        cols: *mut std::ffi::c_void,
    ) -> Result<(), cudarc::driver::DriverError> {
        let blocks = (geo.taps() * d.ho * d.wo).div_ceil(BLOCK);
        // Enough blocks to fill the GPU (a few thousand): the channels split into runs when the map is small.
        let runs = 2048usize.div_ceil(blocks).clamp(1, d.c);
        let cpb = d.c.div_ceil(runs);
        let (mut px, mut po, mut pm, mut pc) = (x, offset, mask, cols);
        let mut ints = [d.c, d.h, d.w, d.ho, d.wo, geo.kh, geo.kw, geo.stride.0, geo.stride.1, geo.pad.0, geo.pad.1, geo.dilation.0, geo.dilation.1, cpb, geo.ones_rows]
            .map(|v| v as i32);
        let mut params: Vec<*mut std::ffi::c_void> = vec![(&raw mut px).cast(), (&raw mut po).cast(), (&raw mut pm).cast(), (&raw mut pc).cast()];
        params.extend(ints.iter_mut().map(|v| (v as *mut i32).cast::<std::ffi::c_void>()));
        // SAFETY: the caller's contract; the nineteen parameters are the kernel's, in its order and types.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.f.cu_function(),
                (blocks as u32, d.c.div_ceil(cpb) as u32, d.n as u32),
                (BLOCK as u32, 1, 1),
                0,
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
        "DeformIm2Col"
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some("CUDAExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let t = TensorElementType::Float16;
        [OperatorInput::required(t), OperatorInput::required(t), OperatorInput::optional(t)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float16)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let geo = Geometry::from_kernel(k)?;
        let mut kernel: Option<Arc<Kernel>> = None;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let stream = ctx.stream()?.ok_or_else(|| ort::Error::new("DeformIm2Col: no CUDA stream"))?;
            let kern = match &kernel {
                Some(k) => k.clone(),
                None => kernel.insert(for_current_device(&LOADED, (), "DeformIm2Col", Kernel::load)?).clone(),
            };
            let tensor = |i: usize| -> ort::Result<_> { ctx.input(i)?.map(|b| b.downcast::<DynTensorValueType>()).transpose() };
            let x = tensor(0)?.ok_or_else(|| ort::Error::new("DeformIm2Col: no x input"))?;
            let offset = tensor(1)?.ok_or_else(|| ort::Error::new("DeformIm2Col: no offset input"))?;
            let mask = tensor(2)?;
            let d = Dims::of(x.shape(), offset.shape(), mask.as_ref().map(|m| &**m.shape()), geo)?;
            let cols = ctx.output(0, d.cols_shape(geo))?.ok_or_else(|| ort::Error::new("DeformIm2Col: no output"))?.downcast::<DynTensorValueType>()?;
            let mask = mask.as_ref().map_or(std::ptr::null(), |m| m.data_ptr());
            // SAFETY: ONNX Runtime's device buffers for this call (shapes checked above; the output's buffer is
            // writable: GetTensorMutableData underneath), on its stream, in the current (its) context.
            unsafe { kern.launch(stream.as_ptr().cast(), geo, d, x.data_ptr(), offset.data_ptr(), mask, cols.data_ptr().cast_mut()) }
                .map_err(|e| ort::Error::new(format!("DeformIm2Col: launch: {e}")))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×2 map, a 1×1 kernel: zero offsets copy the map; half-pixel offsets average neighbours; a sample past
    /// the edge reads 0 there; the mask scales.
    #[test]
    fn samples_by_hand() {
        let geo = Geometry { kh: 1, kw: 1, stride: (1, 1), pad: (0, 0), dilation: (1, 1), ones_rows: 0 };
        let d = Dims { n: 1, c: 1, h: 2, w: 2, ho: 2, wo: 2 };
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut cols = [0f32; 4];
        im2col(geo, d, &x, &[0.0; 8], None, &mut cols);
        assert_eq!(cols, x);
        // Δx = 0.5 everywhere: (1+2)/2 at the left column; at the right one the corner past the edge is 0
        let mut off = [0f32; 8];
        off[4..].fill(0.5);
        im2col(geo, d, &x, &off, Some(&[1.0, 1.0, 1.0, 0.5]), &mut cols);
        assert_eq!(cols, [1.5, 1.0, 3.5, 1.0]);
        // Δy = −1 everywhere: the top row samples y = −1, outside: 0
        let mut off = [0f32; 8];
        off[..4].fill(-1.0);
        im2col(geo, d, &x, &off, None, &mut cols);
        assert_eq!(cols, [0.0, 0.0, 1.0, 2.0]);
        // two ones rows after the columns: ones, then zeros
        let geo = Geometry { ones_rows: 2, ..geo };
        let mut cols = [9f32; 12];
        im2col(geo, d, &x, &[0.0; 8], None, &mut cols);
        assert_eq!(cols, [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
