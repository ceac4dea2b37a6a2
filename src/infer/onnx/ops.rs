//! What matteflow's model operators (window_attention.rs, deform_im2col.rs) share: host tensors read and written
//! as f32 whatever their element type, and CUDA kernels compiled once per device and configuration.

use std::sync::{Arc, Mutex};

use half::f16;
use ort::operator::ComputeContext;
use ort::value::{TensorElementType, ValueRef};

/// An input's shape and values as f32 (f16 converted).
pub(super) fn read_f32(v: &ValueRef<'_>, ty: TensorElementType) -> ort::Result<(Vec<i64>, Vec<f32>)> {
    Ok(if ty == TensorElementType::Float16 {
        let (shape, d) = v.try_extract_tensor::<f16>()?;
        (shape.to_vec(), d.iter().map(|x| x.to_f32()).collect())
    } else {
        let (shape, d) = v.try_extract_tensor::<f32>()?;
        (shape.to_vec(), d.to_vec())
    })
}

/// Output 0 of `shape`, filled with `data` (converted to f16 where `ty` says).
pub(super) fn write_f32(ctx: &ComputeContext, shape: Vec<i64>, ty: TensorElementType, data: &[f32], op: &str) -> ort::Result<()> {
    let mut o = ctx.output(0, shape)?.ok_or_else(|| ort::Error::new(format!("{op}: no output")))?;
    if ty == TensorElementType::Float16 {
        let (_, dst) = o.try_extract_tensor_mut::<f16>()?;
        dst.iter_mut().zip(data).for_each(|(d, s)| *d = f16::from_f32(*s));
    } else {
        let (_, dst) = o.try_extract_tensor_mut::<f32>()?;
        dst.copy_from_slice(data);
    }
    Ok(())
}

/// Kernels loaded so far, by (device ordinal, configuration).
pub(super) type Loaded<K, T> = Mutex<Vec<((i32, K), Arc<T>)>>;

/// The kernel for `key` on the device whose context is current on this thread (ONNX Runtime's, inside a compute
/// call): from `loaded`, else made by `load` in that device's primary context (the one ONNX Runtime's CUDA
/// provider and cudarc both use) and kept.
pub(super) fn for_current_device<K: PartialEq + Copy, T>(
    loaded: &Loaded<K, T>,
    key: K,
    op: &str,
    load: impl FnOnce(&Arc<cudarc::driver::CudaContext>) -> crate::Result<T>,
) -> ort::Result<Arc<T>> {
    let mut dev = 0;
    // SAFETY: writes the current context's device ordinal into `dev`.
    unsafe { cudarc::driver::sys::cuCtxGetDevice(&mut dev) }
        .result()
        .map_err(|e| ort::Error::new(format!("{op}: no current CUDA device: {e}")))?;
    let mut loaded = loaded.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, k)) = loaded.iter().find(|(k, _)| *k == (dev, key)) {
        return Ok(k.clone());
    }
    let ctx = cudarc::driver::CudaContext::new(dev as usize).map_err(|e| ort::Error::new(format!("{op}: CUDA device {dev}: {e}")))?;
    let k = Arc::new(load(&ctx).map_err(|e| ort::Error::new(format!("{op}: {e}")))?);
    loaded.push(((dev, key), k.clone()));
    Ok(k)
}
