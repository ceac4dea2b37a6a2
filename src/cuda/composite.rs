//! Compositing on the GPU: a device frame and a frame-sized device alpha become the output frame (alpha,
//! composite over a colour, image, video or blurred background, or the mask), in place. The ordered path
//! ([`super::stages::GpuStages::submit`]) composites the frames it already holds on the device; the budgeted
//! path, on a stream of its own beside the model's, either brings a host frame up, composites it with the latest
//! mask and takes it back down ([`GpuCompositor::run_host`]), or converts an NV12 frame the decoder left in CUDA
//! memory, composites it and takes it down once ([`GpuCompositor::run_nv12`]).

use cudarc::driver::CudaSlice;

use super::gst_cuda::CudaFrame;
use super::Gpu;
use crate::composite::Background;
use crate::config::{BackgroundSpec, OutputKind};
use crate::error::{Error, Result};

fn e(what: &str, x: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {x}"))
}

pub struct GpuCompositor {
    gpu: Gpu,
    /// The composite kernel's kind: 0 alpha, 1 composite, 2 mask.
    kind: i32,
    colour: [u8; 3],
    /// An image or video background: made on the CPU (cover-scaled image, next video frame), and uploaded — an
    /// image once per frame size, a video frame by frame. A blurred background is made on the GPU.
    background: Option<Background>,
    bg: Option<CudaSlice<u8>>,
    bg_size: Option<(u32, u32)>,
    /// A blurred background: the radius, and the box-filtered small frame between the two resizes.
    blur: Option<u32>,
    blur_small: Option<CudaSlice<u8>>,
    /// The device RGBA frame [`GpuCompositor::run_host`] and [`GpuCompositor::run_nv12`] composite in.
    canvas: Option<CudaSlice<u8>>,
}

impl GpuCompositor {
    /// What the GPU compositor supports; anything else keeps the CPU stages (the caller says so).
    pub fn supports(kind: OutputKind) -> std::result::Result<(), String> {
        match kind {
            OutputKind::SideBySide => Err("side-by-side output".into()),
            _ => Ok(()),
        }
    }

    /// Launches go to `gpu`'s stream (share the model's stream for the ordered path, a new one for a thread
    /// of its own).
    pub fn new(gpu: Gpu, kind: OutputKind, bg: &BackgroundSpec) -> Result<Self> {
        GpuCompositor::supports(kind).map_err(|w| Error::Cuda(format!("the GPU stages do not handle {w} yet")))?;
        let (k, colour) = match (kind, bg) {
            (OutputKind::Alpha, _) => (0, [0; 3]),
            (OutputKind::Mask, _) => (2, [0; 3]),
            (_, BackgroundSpec::Colour(c)) => (1, *c),
            (_, BackgroundSpec::Image(_) | BackgroundSpec::Video(_) | BackgroundSpec::Blur(_)) => (1, [0; 3]),
            _ => (0, [0; 3]),
        };
        let background = match (k, bg) {
            (1, BackgroundSpec::Image(_) | BackgroundSpec::Video(_)) => Some(Background::open(bg)?),
            _ => None,
        };
        let blur = match (k, bg) {
            (1, BackgroundSpec::Blur(r)) => Some(*r),
            _ => None,
        };
        Ok(GpuCompositor { gpu, kind: k, colour, background, bg: None, bg_size: None, blur, blur_small: None, canvas: None })
    }

    /// Launches from now on go to `gpu`'s stream.
    pub fn set_gpu(&mut self, gpu: Gpu) {
        self.gpu = gpu;
    }

    /// Brings the background for the next frame to the device (nothing for colour or transparent ones; an image
    /// only when the frame size changes; a video's next frame every time). The upload is ordered on the stream
    /// after the composites already queued, so each frame blends over its own background frame.
    fn next_background(&mut self, w: u32, h: u32) -> Result<()> {
        let Some(b) = self.background.as_mut() else { return Ok(()) };
        if !matches!(b, Background::Video { .. }) && self.bg_size == Some((w, h)) {
            return Ok(());
        }
        let host = b.frame(&[], w, h)?.ok_or_else(|| Error::Cuda("an image or video background gave no frame".into()))?;
        let st = &self.gpu.stream;
        match self.bg.as_mut() {
            Some(d) if d.len() == host.len() => st.memcpy_htod(host, d).map_err(|x| e("background upload", x))?,
            _ => self.bg = Some(st.clone_htod(host).map_err(|x| e("background upload", x))?),
        }
        self.bg_size = Some((w, h));
        Ok(())
    }

    /// Composites the RGBA device `frame` (w × h) with `alpha` (w × h), in place.
    pub fn run(&mut self, frame: &mut CudaSlice<u8>, alpha: &CudaSlice<u8>, w: u32, h: u32) -> Result<()> {
        let n = (w * h) as usize;
        self.next_background(w, h)?;
        if let Some(r) = self.blur {
            // The blur of this frame, made before the composite overwrites it.
            if self.bg.as_ref().is_none_or(|b| b.len() != n * 4) {
                self.bg = Some(self.gpu.stream.alloc_zeros::<u8>(n * 4).map_err(|x| e("alloc", x))?);
            }
            self.gpu.blur_background(frame, w, h, r, &mut self.blur_small, self.bg.as_mut().unwrap())?;
        }
        self.gpu.composite(frame, alpha, self.bg.as_ref(), n, self.kind, self.colour)
    }

    /// Composites an RGBA frame in host memory with a device `alpha`: up, composite, down into `frame`. Waits
    /// for the download (the frame is ready when this returns).
    pub fn run_host(&mut self, frame: &mut [u8], w: u32, h: u32, alpha: &CudaSlice<u8>) -> Result<()> {
        // (On a thread of its own beside the model's: its allocations and pageable copies wait for any CUDA graph
        // capture to end.)
        crate::infer::outside_capture(|| self.host_frame(frame, w, h, alpha))
    }

    fn host_frame(&mut self, frame: &mut [u8], w: u32, h: u32, alpha: &CudaSlice<u8>) -> Result<()> {
        let n = (w * h) as usize;
        if frame.len() != n * 4 || alpha.len() != n {
            return Err(Error::Cuda(format!("a {w}x{h} frame of {} bytes with a mask of {} values", frame.len(), alpha.len())));
        }
        let st = self.gpu.stream.clone();
        let mut canvas = match self.canvas.take() {
            Some(c) if c.len() == n * 4 => c,
            _ => st.alloc_zeros::<u8>(n * 4).map_err(|x| e("alloc", x))?,
        };
        st.memcpy_htod(&*frame, &mut canvas).map_err(|x| e("upload", x))?;
        self.run(&mut canvas, alpha, w, h)?;
        st.memcpy_dtoh(&canvas, frame).map_err(|x| e("download", x))?;
        st.synchronize().map_err(|x| e("sync", x))?;
        self.canvas = Some(canvas);
        Ok(())
    }

    /// Converts an NV12 frame in CUDA memory to RGBA on the device (the kernel the ordered path uses), composites
    /// it with `alpha` when there is one (else it stays the unmatted picture), and downloads it into `out` (RGBA,
    /// `w * h * 4`). Waits for the download: the decoder's frame is no longer read when this returns.
    pub fn run_nv12(&mut self, frame: &CudaFrame, alpha: Option<&CudaSlice<u8>>, out: &mut [u8]) -> Result<()> {
        crate::infer::outside_capture(|| self.nv12_frame(frame, alpha, out))
    }

    fn nv12_frame(&mut self, frame: &CudaFrame, alpha: Option<&CudaSlice<u8>>, out: &mut [u8]) -> Result<()> {
        let (w, h) = (frame.width, frame.height);
        let n = (w * h) as usize;
        if out.len() != n * 4 || alpha.is_some_and(|a| a.len() != n) {
            return Err(Error::Cuda(format!("a {w}x{h} NV12 frame into {} bytes with a mask of {:?} values", out.len(), alpha.map(|a| a.len()))));
        }
        let st = self.gpu.stream.clone();
        let mut canvas = match self.canvas.take() {
            Some(c) if c.len() == n * 4 => c,
            _ => st.alloc_zeros::<u8>(n * 4).map_err(|x| e("alloc", x))?,
        };
        self.gpu.nv12_to_rgba(frame.ptr, w, h, frame.pitch, frame.uv_offset, frame.color, &mut canvas)?;
        if let Some(a) = alpha {
            self.run(&mut canvas, a, w, h)?;
        }
        st.memcpy_dtoh(&canvas, out).map_err(|x| e("download", x))?;
        st.synchronize().map_err(|x| e("sync", x))?;
        self.canvas = Some(canvas);
        Ok(())
    }
}
