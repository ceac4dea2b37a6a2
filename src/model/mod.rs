//! Models: the shipped manifests (models/*.toml, embedded in the binary), where model files are looked for,
//! and turning a `--model` argument (a name, a manifest, or an ONNX file plus flags) into a [`ResolvedModel`].

pub mod manifest;
pub mod prepare;

use std::path::{Path, PathBuf};

pub use manifest::{Activation, ColorOrder, InputSpec, Interpolation, Layout, Manifest, OutputSpec, Provenance, ResizeMode};

use crate::error::{Error, Result};

/// Manifests shipped with matteflow, in the order `matteflow models` lists them.
pub const BUILTIN_MANIFESTS: &[(&str, &str)] = &[
    ("selfie", include_str!("../../models/selfie.toml")),
    ("selfie-landscape", include_str!("../../models/selfie-landscape.toml")),
    ("birefnet-general", include_str!("../../models/birefnet-general.toml")),
    ("birefnet-lite", include_str!("../../models/birefnet-lite.toml")),
    ("birefnet-hr", include_str!("../../models/birefnet-hr.toml")),
    ("birefnet-dynamic", include_str!("../../models/birefnet-dynamic.toml")),
    ("birefnet-matting", include_str!("../../models/birefnet-matting.toml")),
    ("rmbg-2.0", include_str!("../../models/rmbg-2.0.toml")),
    ("isnet", include_str!("../../models/isnet.toml")),
    ("rvm-mobilenetv3", include_str!("../../models/rvm-mobilenetv3.toml")),
];

/// Small models compiled into the binary so the default job works from anywhere.
const EMBEDDED_FILES: &[(&str, &[u8])] = &[
    ("selfie_segmentation.onnx", include_bytes!("../../models/selfie_segmentation.onnx")),
    ("selfie_segmentation_landscape.onnx", include_bytes!("../../models/selfie_segmentation_landscape.onnx")),
];

pub const DEFAULT_MODEL: &str = "selfie";

/// Where the model's bytes come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Embedded(&'static [u8]),
    File(PathBuf),
}

impl ModelSource {
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Embedded(_) => "embedded in the binary".into(),
            ModelSource::File(p) => p.display().to_string(),
        }
    }
}

/// A manifest together with the file it describes. `inferred` marks a manifest built from flags and the
/// model itself (input name, layout and size are then read from the ONNX file when the session opens).
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub manifest: Manifest,
    pub manifest_origin: String,
    pub source: ModelSource,
    pub inferred: bool,
}

/// Plain flags describing a user's own ONNX file when no manifest is given. Unset fields are read from the
/// model (input name, layout, size) or take the common default (RGB in [0,1], probability output).
#[derive(Debug, Clone, Default)]
pub struct ManualSpec {
    pub input_name: Option<String>,
    pub output_name: Option<String>,
    pub layout: Option<Layout>,
    pub size: Option<[u32; 2]>,
    pub color: Option<ColorOrder>,
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub activation: Option<Activation>,
    pub resize: Option<ResizeMode>,
}

impl ManualSpec {
    fn apply(&self, m: &mut Manifest) {
        if let Some(v) = &self.input_name {
            m.input.name = v.clone();
        }
        if let Some(v) = &self.output_name {
            m.output.name = v.clone();
        }
        if let Some(v) = self.layout {
            m.input.layout = v;
        }
        if let Some(v) = self.size {
            m.input.size = v;
        }
        if let Some(v) = self.color {
            m.input.color = v;
        }
        if let Some(v) = self.scale {
            m.input.scale = v;
        }
        if let Some(v) = self.mean {
            m.input.mean = v;
        }
        if let Some(v) = self.std {
            m.input.std = v;
        }
        if let Some(v) = self.activation {
            m.output.activation = v;
        }
        if let Some(v) = self.resize {
            m.input.resize = v;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.input_name.is_none()
            && self.output_name.is_none()
            && self.layout.is_none()
            && self.size.is_none()
            && self.color.is_none()
            && self.scale.is_none()
            && self.mean.is_none()
            && self.std.is_none()
            && self.activation.is_none()
            && self.resize.is_none()
    }
}

/// Folders searched for model files named by the shipped manifests, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("MATTEFLOW_MODEL_DIR") {
        dirs.extend(std::env::split_paths(&v));
    }
    dirs.push(PathBuf::from("models"));
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.join("models"));
        dirs.push(exe_dir.join("../share/matteflow/models"));
        dirs.push(exe_dir.join("../../models")); // target/release/matteflow inside a checkout
        dirs.push(exe_dir.join("../../.deps/models"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/models"));
    if let Some(home) = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
    }) {
        dirs.push(home.join("matteflow/models"));
    }
    dirs
}

fn find_file(file: &str) -> Option<PathBuf> {
    let p = Path::new(file);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    search_dirs().into_iter().map(|d| d.join(file)).find(|c| c.is_file())
}

fn embedded(file: &str) -> Option<&'static [u8]> {
    EMBEDDED_FILES.iter().find(|(n, _)| *n == file).map(|(_, b)| *b)
}

/// A shipped manifest by name.
pub fn builtin(name: &str) -> Option<Manifest> {
    BUILTIN_MANIFESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| Manifest::from_toml(text, &format!("models/{n}.toml")).expect("shipped manifest parses"))
}

/// Where a shipped model's file is right now: on disk (preferred, so users can swap it), embedded, or absent.
pub fn locate(m: &Manifest) -> Option<ModelSource> {
    find_file(&m.file).map(ModelSource::File).or_else(|| embedded(&m.file).map(ModelSource::Embedded))
}

/// How to name a model that is not shipped, in the words of the command at hand.
fn other_models() -> String {
    match crate::hint::dialect() {
        crate::hint::Dialect::CommandLine => {
            "Or pass a path to an .onnx file (with --manifest or flags) or a manifest .toml".into()
        }
        crate::hint::Dialect::PipelineFile => format!(
            "Or give the path of a manifest .toml, or of an .onnx file (described by its own inputs and outputs, or by {})",
            crate::hint::MANIFEST.to("FILE.toml")
        ),
    }
}

fn names() -> String {
    BUILTIN_MANIFESTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Resolves `--model` (name | manifest.toml | file.onnx), `--manifest` and the plain flags.
pub fn resolve(model: &str, manifest: Option<&Path>, flags: &ManualSpec) -> Result<ResolvedModel> {
    let model_path = Path::new(model);
    let is_toml = model.ends_with(".toml");
    let looks_like_file = is_toml || model.ends_with(".onnx") || model.contains('/') || model_path.is_file();

    if is_toml {
        return from_manifest_file(model_path, None, flags);
    }
    if !looks_like_file {
        let Some(mut m) = builtin(model) else {
            return Err(Error::Model {
                model: model.to_string(),
                reason: format!("no such model. Shipped models: {}. {}", names(), other_models()),
            });
        };
        let Some(source) = locate(&m) else {
            return Err(Error::Model {
                model: model.to_string(),
                reason: format!(
                    "file {} not found (looked in {}). {}",
                    m.file,
                    search_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                    m.provenance.obtain.clone().unwrap_or_default()
                ),
            });
        };
        check_sha256(&m, &source)?;
        flags.apply(&mut m);
        return Ok(ResolvedModel { manifest: m, manifest_origin: format!("models/{model}.toml"), source, inferred: false });
    }

    // A model file given by path.
    check_model_file(model_path)?;
    if let Some(man) = manifest {
        return from_manifest_file(man, Some(model_path), flags);
    }
    let mut m = Manifest {
        name: model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        description: "user model (described by flags and the model's own I/O)".into(),
        file: model.to_string(),
        sha256: None,
        input: InputSpec {
            name: String::new(),
            layout: Layout::Nchw,
            size: [0, 0],
            dynamic_multiple: None,
            color: ColorOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            resize: ResizeMode::Stretch,
            interpolation: Interpolation::Antialias,
        },
        output: OutputSpec { name: String::new(), activation: Activation::None, channel: 0 },
        recurrent: Vec::new(),
        constants: Vec::new(),
        provenance: Provenance::default(),
    };
    flags.apply(&mut m);
    Ok(ResolvedModel {
        manifest: m,
        manifest_origin: "command-line flags".into(),
        source: ModelSource::File(model_path.to_path_buf()),
        inferred: true,
    })
}

/// Checks a file against the manifest's sha256, when the manifest gives one.
fn check_sha256(m: &Manifest, source: &ModelSource) -> Result<()> {
    use sha2::Digest;
    let (Some(want), ModelSource::File(p)) = (&m.sha256, source) else { return Ok(()) };
    let bytes = std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
    let got = format!("{:x}", sha2::Sha256::digest(&bytes));
    if !got.eq_ignore_ascii_case(want) {
        return Err(Error::Model {
            model: p.display().to_string(),
            reason: format!(
                "sha256 is {got} but manifest {} expects {want}: the file is damaged or a different model; re-download it",
                m.name
            ),
        });
    }
    Ok(())
}

fn check_model_file(p: &Path) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| Error::Model {
        model: p.display().to_string(),
        reason: format!("cannot open the model file: {e}. Check the path, or use a shipped model name ({})", names()),
    })?;
    if !meta.is_file() {
        return Err(Error::Model { model: p.display().to_string(), reason: "is not a file".into() });
    }
    if meta.len() == 0 {
        return Err(Error::Model { model: p.display().to_string(), reason: "is empty (0 bytes): re-download it".into() });
    }
    Ok(())
}

fn from_manifest_file(path: &Path, model_override: Option<&Path>, flags: &ManualSpec) -> Result<ResolvedModel> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Manifest { path: path.display().to_string(), reason: format!("cannot read: {e}") })?;
    let mut m = Manifest::from_toml(&text, &path.display().to_string())?;
    flags.apply(&mut m);
    let file = match model_override {
        Some(p) => p.to_path_buf(),
        None => {
            let f = Path::new(&m.file);
            let beside = path.parent().unwrap_or(Path::new(".")).join(f);
            if f.is_absolute() || beside.is_file() {
                if f.is_absolute() { f.to_path_buf() } else { beside }
            } else if let Some(found) = find_file(&m.file) {
                found
            } else if let Some(bytes) = embedded(&m.file) {
                return Ok(ResolvedModel {
                    manifest: m,
                    manifest_origin: path.display().to_string(),
                    source: ModelSource::Embedded(bytes),
                    inferred: false,
                });
            } else {
                return Err(Error::Model {
                    model: m.file.clone(),
                    reason: format!(
                        "file not found next to the manifest {} or in the model folders. {}",
                        path.display(),
                        m.provenance.obtain.clone().unwrap_or_default()
                    ),
                });
            }
        }
    };
    check_model_file(&file)?;
    let source = ModelSource::File(file);
    if model_override.is_none() {
        check_sha256(&m, &source)?;
    }
    Ok(ResolvedModel {
        manifest: m,
        manifest_origin: path.display().to_string(),
        source,
        inferred: false,
    })
}

/// One line per shipped model for `matteflow models`.
pub struct ModelListing {
    pub name: String,
    pub description: String,
    pub input: String,
    pub status: String,
    pub licence: String,
}

pub fn list() -> Vec<ModelListing> {
    BUILTIN_MANIFESTS
        .iter()
        .map(|(name, _)| {
            let m = builtin(name).unwrap();
            let status = match locate(&m) {
                Some(ModelSource::File(p)) => format!("present: {}", p.display()),
                Some(ModelSource::Embedded(_)) => "present (embedded)".into(),
                None => format!("missing {}", m.file),
            };
            let [h, w] = m.input.size;
            let input = format!(
                "{} {} {}x{}{}",
                m.input.name,
                m.input.layout,
                w,
                h,
                m.input.dynamic_multiple.map(|k| format!(" (dynamic, multiple of {k})")).unwrap_or_default()
            );
            ModelListing {
                name: name.to_string(),
                description: m.description.clone(),
                input,
                status,
                licence: m.provenance.licence.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_manifest_parses() {
        for (name, _) in BUILTIN_MANIFESTS {
            let m = builtin(name).unwrap();
            assert_eq!(&m.name, name);
        }
    }

    #[test]
    fn default_model_is_always_available() {
        let r = resolve(DEFAULT_MODEL, None, &ManualSpec::default()).unwrap();
        assert_eq!(r.manifest.input.size, [256, 256]);
    }

    #[test]
    fn unknown_name_lists_the_shipped_ones() {
        let e = resolve("nope", None, &ManualSpec::default()).unwrap_err().to_string();
        assert!(e.contains("selfie") && e.contains("birefnet-general"), "{e}");
    }
}

#[cfg(test)]
mod sha_tests {
    use super::*;

    #[test]
    fn damaged_model_file_is_caught_by_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = include_str!("../../models/selfie.toml").to_string();
        text = text.replace("file = \"selfie_segmentation.onnx\"", "file = \"damaged.onnx\"");
        std::fs::write(dir.path().join("m.toml"), text).unwrap();
        let mut bytes = include_bytes!("../../models/selfie_segmentation.onnx").to_vec();
        bytes[1000] ^= 0xff;
        std::fs::write(dir.path().join("damaged.onnx"), bytes).unwrap();
        let e = resolve(dir.path().join("m.toml").to_str().unwrap(), None, &ManualSpec::default()).unwrap_err().to_string();
        assert!(e.contains("sha256") && e.contains("damaged.onnx"), "{e}");
    }
}
