//! Several frames in one inference call: how many a model can take at once, stacking per-frame tensors into
//! one `[N, …]` tensor, and cutting the model's `[N, …]` output back into one mask per frame.
//!
//! Padding: on the GPU a convolution library may pick another algorithm (and so round differently) for another
//! batch size, so there every call is padded with zero frames to the same size and a frame's mask does not
//! depend on how many other frames shared its call. On the CPU, ONNX Runtime computes each sample of a batch
//! exactly as it would alone (checked bit for bit in tests/batching.rs), so nothing is padded there.

use super::LowResMask;
use crate::error::{Error, Result};
use crate::model::{Activation, Manifest};
use crate::preprocess::ModelInput;
use crate::runtime::Provider;

/// How a model is run given the `--batch` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Frames per inference call, at most.
    pub size: usize,
    /// Every call is filled with zero frames up to this many (0: no padding).
    pub pad_to: usize,
    /// Why `size` differs from what was asked for, if it does.
    pub note: Option<String>,
}

/// Settles the batch size from what was asked, the model's declared batch dimension (`declared`: input
/// dimension 0, ≤ 0 when dynamic) and the provider that runs it.
pub fn plan(m: &Manifest, declared: i64, requested: usize, provider: Provider) -> BatchPlan {
    let requested = requested.max(1);
    let plain = |size: usize, note: Option<String>| BatchPlan { size, pad_to: 0, note };
    if !m.recurrent.is_empty() {
        let note = (requested > 1).then(|| {
            format!(
                "model {} carries recurrent state from one frame to the next ([[recurrent]] in its manifest), so its \
                 frames cannot share an inference call: --batch {requested} ignored, one frame per call",
                m.name
            )
        });
        return plain(1, note);
    }
    if provider == Provider::TensorRt && m.input.dynamic_multiple.is_some() && declared != 1 && requested > 1 {
        // runtime::trt_profile_for builds the engine's min/opt/max shapes with batch 1.
        return plain(
            1,
            Some(format!(
                "TensorRT's optimisation profile for the dynamic-size model {} covers batch 1 only: --batch {requested} \
                 falls back to one frame per call (or run it with --device cuda on the CUDA provider)",
                m.name
            )),
        );
    }
    match declared {
        1 => plain(
            1,
            (requested > 1).then(|| {
                format!(
                    "model {} has a fixed batch of 1 (input '{}' is [1,…]): --batch {requested} falls back to one frame \
                     per call; export the model with a dynamic batch dimension to batch frames",
                    m.name, m.input.name
                )
            }),
        ),
        b if b > 1 => {
            let b = b as usize;
            BatchPlan {
                size: b,
                pad_to: b,
                note: (requested != b).then(|| {
                    format!("model {} has a fixed batch of {b}: every call runs {b} frames (padded), not {requested}", m.name)
                }),
            }
        }
        _ if requested == 1 => plain(1, None),
        _ => BatchPlan { size: requested, pad_to: if provider == Provider::Cpu { 0 } else { requested }, note: None },
    }
}

/// Stacks the frames' tensors (all of one shape `[1, …]`) into `buf`, followed by zero frames up to `total`;
/// returns the stacked shape `[total, …]`.
pub fn stack(inputs: &[&ModelInput], total: usize, buf: &mut Vec<f32>) -> Result<[i64; 4]> {
    let first = inputs.first().ok_or_else(|| Error::Runtime("an inference call needs at least one frame".into()))?;
    let shape = first.shape;
    if shape[0] != 1 {
        return Err(Error::Runtime(format!("a frame's tensor must have batch 1 to be stacked; it is {shape:?}")));
    }
    if let Some(other) = inputs.iter().find(|i| i.shape != shape) {
        return Err(Error::Runtime(format!(
            "frames of different tensor shapes ({:?} and {:?}) cannot share an inference call",
            shape, other.shape
        )));
    }
    let per = first.data.len();
    buf.clear();
    buf.reserve(per * total.max(inputs.len()));
    for i in inputs {
        buf.extend_from_slice(&i.data);
    }
    buf.resize(per * total.max(inputs.len()), 0.0);
    Ok([total.max(inputs.len()) as i64, shape[1], shape[2], shape[3]])
}

/// Cuts the model's output (`dims`, values `data`, `batch` samples) into one mask per entry of `outs` (the
/// first `outs.len()` samples; the rest is padding), applying the manifest's channel and activation.
pub fn split(m: &Manifest, dims: &[usize], data: &[f32], batch: usize, outs: &mut [LowResMask]) -> Result<()> {
    let bad = || {
        Error::Runtime(format!(
            "output '{}' of {} has shape {:?}; expected [{batch},1,H,W], [{batch},H,W,1], [{batch},H,W]{}",
            m.output.name,
            m.name,
            dims,
            if batch == 1 { " or [H,W]" } else { "" }
        ))
    };
    // Work out (channels, height, width, channel-last?) of one sample from the output's shape.
    let (c, h, w, last) = match dims {
        [n, a, b, d] if *n == batch && *d <= 4 && *a > 4 => (*d, *a, *b, true),
        [n, c, h, w] if *n == batch => (*c, *h, *w, false),
        [n, h, w] if *n == batch => (1, *h, *w, false),
        [h, w] if batch == 1 => (1, *h, *w, false),
        _ => return Err(bad()),
    };
    let ch = m.output.channel;
    if ch >= c {
        return Err(Error::Runtime(format!("manifest asks for output channel {ch} but '{}' has {c}", m.output.name)));
    }
    let per = c * h * w;
    if data.len() < per * outs.len() {
        return Err(bad());
    }
    let sigmoid = m.output.activation == Activation::Sigmoid;
    let f = |v: f32| {
        let p = if sigmoid { 1.0 / (1.0 + (-v).exp()) } else { v };
        p.clamp(0.0, 1.0)
    };
    for (k, out) in outs.iter_mut().enumerate() {
        let sample = &data[k * per..(k + 1) * per];
        out.width = w as u32;
        out.height = h as u32;
        out.data.clear();
        if last {
            out.data.extend(sample.iter().skip(ch).step_by(c).map(|v| f(*v)));
        } else {
            out.data.extend(sample[ch * h * w..(ch + 1) * h * w].iter().map(|v| f(*v)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(recurrent: bool) -> Manifest {
        let mut m = Manifest::from_toml(
            r#"name = "t"
file = "t.onnx"
[input]
name = "x"
layout = "NCHW"
size = [2, 2]
[output]
name = "y"
"#,
            "t.toml",
        )
        .unwrap();
        if recurrent {
            m.recurrent.push(crate::model::manifest::RecurrentSpec { input: "a".into(), output: "b".into(), initial_shape: vec![1] });
        }
        m
    }

    #[test]
    fn plan_follows_the_model() {
        let m = manifest(false);
        let (cpu, cuda) = (Provider::Cpu, Provider::Cuda);
        assert_eq!(plan(&m, -1, 4, cpu), BatchPlan { size: 4, pad_to: 0, note: None });
        assert_eq!(plan(&m, -1, 4, cuda), BatchPlan { size: 4, pad_to: 4, note: None });
        assert_eq!(plan(&m, -1, 1, cuda).size, 1);
        let fixed = plan(&m, 1, 4, cpu);
        assert_eq!(fixed.size, 1);
        assert!(fixed.note.unwrap().contains("fixed batch of 1"));
        assert_eq!(plan(&m, 1, 1, cpu).note, None);
        assert_eq!(plan(&m, 8, 4, cpu).pad_to, 8);
        let mut dynamic_size = m.clone();
        dynamic_size.input.dynamic_multiple = Some(32);
        assert_eq!(plan(&dynamic_size, -1, 4, cuda).size, 4);
        assert!(plan(&dynamic_size, -1, 4, Provider::TensorRt).note.unwrap().contains("TensorRT"));
        let r = plan(&manifest(true), -1, 4, cpu);
        assert_eq!(r.size, 1);
        assert!(r.note.unwrap().contains("recurrent"));
    }

    #[test]
    fn stack_pads_and_split_cuts() {
        let a = ModelInput { data: vec![1.0; 3 * 2 * 2], shape: [1, 3, 2, 2], geometry: None };
        let b = ModelInput { data: vec![2.0; 3 * 2 * 2], shape: [1, 3, 2, 2], geometry: None };
        let mut buf = Vec::new();
        assert_eq!(stack(&[&a, &b], 4, &mut buf).unwrap(), [4, 3, 2, 2]);
        assert_eq!(buf.len(), 48);
        assert!(buf[..12].iter().all(|v| *v == 1.0) && buf[12..24].iter().all(|v| *v == 2.0) && buf[24..].iter().all(|v| *v == 0.0));
        let c = ModelInput { data: vec![0.0; 3 * 4 * 4], shape: [1, 3, 4, 4], geometry: None };
        assert!(stack(&[&a, &c], 2, &mut buf).unwrap_err().to_string().contains("different tensor shapes"));

        let m = manifest(false);
        let out: Vec<f32> = (0..16).map(|v| v as f32 / 16.0).collect(); // [4,1,2,2]
        let mut masks = vec![LowResMask::default(); 2];
        split(&m, &[4, 1, 2, 2], &out, 4, &mut masks).unwrap();
        assert_eq!(masks[1].data, vec![4.0 / 16.0, 5.0 / 16.0, 6.0 / 16.0, 7.0 / 16.0]);
        assert!(split(&m, &[2, 1, 2, 2], &out, 4, &mut masks).is_err());
    }
}
