//! Model manifests: what a model expects (input name, layout, size, colour order, normalisation) and what it
//! returns (output name, activation), plus where it came from. Parsed from models/*.toml or built from flags.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// How a frame of another aspect ratio is fitted to the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Scale each axis independently (what BiRefNet, IS-Net and MediaPipe do).
    #[default]
    Stretch,
    /// Keep the aspect ratio and pad the rest; the padding is cut off the mask again.
    Letterbox,
}

/// How pixels are resampled to the model's size, matching what the model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// PIL-style bilinear: the triangle filter widened by the scale factor when shrinking, so every source
    /// pixel contributes (PIL `Image.resize(BILINEAR)`, torchvision `Resize` on PIL images: BiRefNet).
    #[default]
    Antialias,
    /// Plain bilinear sampling at pixel centres, edges replicated (OpenCV `INTER_LINEAR`, MediaPipe's
    /// ImageToTensor, @imgly's tensorResizeBilinear).
    Bilinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The output already is a probability / alpha in [0, 1].
    #[default]
    None,
    /// The output is logits: apply the logistic function.
    Sigmoid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub layout: Layout,
    /// [height, width] the model runs at. For dynamic models: the size of the longer side is max(size).
    pub size: [u32; 2],
    /// Dynamic models accept any height/width that is a multiple of this; fixed models leave it out.
    #[serde(default)]
    pub dynamic_multiple: Option<u32>,
    #[serde(default = "default_color")]
    pub color: ColorOrder,
    /// value = (pixel * scale - mean) / std, per channel, in the model's colour order.
    #[serde(default = "default_scale")]
    pub scale: f32,
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub interpolation: Interpolation,
}

fn default_color() -> ColorOrder {
    ColorOrder::Rgb
}
fn default_scale() -> f32 {
    1.0 / 255.0
}
fn default_mean() -> [f32; 3] {
    [0.0; 3]
}
fn default_std() -> [f32; 3] {
    [1.0; 3]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    #[serde(default)]
    pub activation: Activation,
    /// Which channel holds the foreground when the output has several (default 0).
    #[serde(default)]
    pub channel: usize,
}

/// A recurrent state (RVM-style): the model's output `output` is fed back as `input` on the next frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrentSpec {
    pub input: String,
    pub output: String,
    /// Shape of the zero state fed on the first frame (RVM accepts [1,1,1,1]).
    #[serde(default = "default_state_shape")]
    pub initial_shape: Vec<i64>,
}

fn default_state_shape() -> Vec<i64> {
    vec![1, 1, 1, 1]
}

/// An input that takes the same value every frame (RVM's `downsample_ratio`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstantSpec {
    pub name: String,
    pub value: Vec<f32>,
    #[serde(default)]
    pub shape: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default)]
    pub licence: String,
    #[serde(default)]
    pub source: String,
    /// File next to the model holding the licence notice.
    #[serde(default)]
    pub notice: Option<String>,
    /// How a user obtains the file if it is not shipped.
    #[serde(default)]
    pub obtain: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The ONNX file, relative to the manifest's folder (or absolute).
    pub file: String,
    /// Optional sha256 of the file, checked when present.
    #[serde(default)]
    pub sha256: Option<String>,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Recurrent states carried from frame to frame.
    #[serde(default)]
    pub recurrent: Vec<RecurrentSpec>,
    /// Inputs with a fixed value.
    #[serde(default)]
    pub constants: Vec<ConstantSpec>,
    #[serde(default)]
    pub provenance: Provenance,
}

impl Manifest {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let m: Manifest = toml::from_str(text)
            .map_err(|e| Error::Manifest { path: origin.to_string(), reason: toml_reason(text, &e) })?;
        m.check(origin)?;
        Ok(m)
    }

    fn check(&self, origin: &str) -> Result<()> {
        let bad = |reason: String| Err(Error::Manifest { path: origin.to_string(), reason });
        if self.input.size[0] == 0 || self.input.size[1] == 0 {
            return bad(format!("input.size {:?} must be two positive numbers [height, width]", self.input.size));
        }
        if self.input.std.iter().any(|s| *s == 0.0) {
            return bad("input.std must not contain 0".into());
        }
        if let Some(m) = self.input.dynamic_multiple {
            if m == 0 {
                return bad("input.dynamic_multiple must be positive".into());
            }
        }
        Ok(())
    }

    /// The tensor shape the manifest promises for a given model-space size.
    pub fn input_shape(&self, h: u32, w: u32) -> [i64; 4] {
        match self.input.layout {
            Layout::Nchw => [1, 3, h as i64, w as i64],
            Layout::Nhwc => [1, h as i64, w as i64, 3],
        }
    }

    /// The model-space size used for a frame of `frame_w` × `frame_h`.
    pub fn model_size_for(&self, frame_w: u32, frame_h: u32) -> (u32, u32) {
        let [h, w] = self.input.size;
        match self.input.dynamic_multiple {
            None => (w, h),
            Some(m) => {
                let long = h.max(w) as f64;
                let s = long / frame_w.max(frame_h) as f64;
                let round = |v: f64| (((v / m as f64).round() as u32).max(1)) * m;
                (round(frame_w as f64 * s), round(frame_h as f64 * s))
            }
        }
    }
}

/// "line L, column C: message" in one line (toml's own Display draws a multi-line caret diagram).
pub fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// Describes a shape like `[1,3,1024,1024]` with `-1` shown as `?`.
pub fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
    format!("[{}]", dims.join(","))
}

/// Checks the model's declared input/output against the manifest. `inputs`/`outputs` are (name, shape) pairs
/// as ONNX Runtime reports them (-1 for dynamic dimensions).
pub fn validate_io(
    m: &Manifest,
    model: &str,
    manifest: &str,
    inputs: &[(String, Vec<i64>, String)],
    outputs: &[(String, Vec<i64>)],
) -> Result<()> {
    let mismatch = |reason: String| {
        Err(Error::ManifestMismatch { model: model.to_string(), manifest: manifest.to_string(), reason })
    };
    let names = |v: Vec<&str>| v.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    let Some((_, shape, dtype)) = inputs.iter().find(|(n, _, _)| *n == m.input.name) else {
        let have = names(inputs.iter().map(|(n, _, _)| n.as_str()).collect());
        return mismatch(format!(
            "the manifest expects input '{}' but the model's inputs are {have}; fix input.name in the manifest",
            m.input.name
        ));
    };
    if dtype != "f32" && dtype != "f16" {
        return mismatch(format!(
            "input '{}' is {dtype}; image inputs must be float32 or float16 (export the model with float I/O)",
            m.input.name
        ));
    }
    let [h, w] = m.input.size;
    let want = m.input_shape(h, w);
    let describe = format!("{} {}", m.input.layout, shape_str(&want));
    if shape.len() != 4 {
        return mismatch(format!(
            "input '{}' has shape {} (rank {}) but the manifest describes {describe}",
            m.input.name,
            shape_str(shape),
            shape.len()
        ));
    }
    let dynamic = m.input.dynamic_multiple.is_some();
    let chan_axis = if m.input.layout == Layout::Nchw { 1 } else { 3 };
    for (axis, (&got, &exp)) in shape.iter().zip(want.iter()).enumerate() {
        let spatial = axis != 0 && axis != chan_axis;
        // Any batch: how many frames go in one call is settled when the session opens (infer/batched.rs).
        let ok = got < 0 || got == exp || axis == 0 || (spatial && dynamic);
        if !ok {
            return mismatch(format!(
                "input '{}' has shape {} but the manifest describes {describe}{}",
                m.input.name,
                shape_str(shape),
                if spatial { " (check input.size / input.layout)" } else { " (check input.layout)" }
            ));
        }
    }
    if dynamic && shape.iter().enumerate().any(|(a, d)| a != 0 && a != chan_axis && *d > 0) {
        // A fixed-size model declared dynamic would fail at run time on the first odd frame size.
        return mismatch(format!(
            "input '{}' has fixed spatial size {} but the manifest declares it dynamic (dynamic_multiple); remove dynamic_multiple",
            m.input.name,
            shape_str(shape)
        ));
    }
    for r in &m.recurrent {
        if !inputs.iter().any(|(n, _, _)| *n == r.input) || !outputs.iter().any(|(n, _)| *n == r.output) {
            return mismatch(format!(
                "recurrent state '{}' → '{}' is not an input/output pair of the model",
                r.output, r.input
            ));
        }
    }
    for c in &m.constants {
        if !inputs.iter().any(|(n, _, _)| *n == c.name) {
            return mismatch(format!("constant input '{}' is not an input of the model", c.name));
        }
    }
    if !outputs.iter().any(|(n, _)| *n == m.output.name) {
        let have = names(outputs.iter().map(|(n, _)| n.as_str()).collect());
        return mismatch(format!(
            "the manifest expects output '{}' but the model's outputs are {have}; fix output.name in the manifest",
            m.output.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selfie() -> Manifest {
        Manifest::from_toml(include_str!("../../models/selfie.toml"), "selfie.toml").unwrap()
    }

    #[test]
    fn dynamic_size_rounds_to_multiple_keeping_aspect() {
        let mut m = selfie();
        m.input.size = [1024, 1024];
        m.input.dynamic_multiple = Some(64);
        assert_eq!(m.model_size_for(1920, 1080), (1024, 576));
        assert_eq!(m.model_size_for(720, 1280), (576, 1024));
        assert_eq!(m.model_size_for(176, 144), (1024, 832));
    }

    #[test]
    fn dynamic_models_get_a_tensorrt_profile() {
        let m = crate::model::builtin("birefnet-dynamic").unwrap();
        let (min, opt, max) = crate::runtime::trt_profile_for(&m).unwrap();
        assert_eq!(min, "input_image:1x3x64x64");
        assert_eq!(opt, "input_image:1x3x1024x1024");
        assert_eq!(max, "input_image:1x3x2048x2048");
        assert!(crate::runtime::trt_profile_for(&selfie()).is_none());
    }

    #[test]
    fn validate_names_both_sides_on_mismatch() {
        let m = selfie();
        let err = validate_io(
            &m,
            "x.onnx",
            "selfie.toml",
            &[("input_image".into(), vec![1, 3, 1024, 1024], "f32".into())],
            &[("out".into(), vec![1, 1, 1024, 1024])],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'input_1'") && err.contains("'input_image'"), "{err}");
        let err = validate_io(
            &m,
            "x.onnx",
            "selfie.toml",
            &[("input_1".into(), vec![1, 3, 256, 256], "f32".into())],
            &[("activation_10".into(), vec![1, 256, 256, 1])],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[1,3,256,256]") && err.contains("NHWC [1,256,256,3]"), "{err}");
        validate_io(
            &m,
            "x.onnx",
            "selfie.toml",
            &[("input_1".into(), vec![-1, 256, 256, 3], "f32".into())],
            &[("activation_10".into(), vec![-1, 256, 256, 1])],
        )
        .unwrap();
    }
}
