//! `matteflow prepare`: rewrites an ONNX model once into the graph ONNX Runtime's CUDA provider runs fastest
//! (src/model/prepare.py, embedded here; docs/BENCHMARKS.md has what each pass gains). The graph surgery is
//! Python with the `onnx` package, at preparation time only: inference stays Rust. Results are cached by the
//! model's sha256, so preparing the same file again is instant.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The preparation script, fed to the interpreter on stdin.
pub const SCRIPT: &str = include_str!("prepare.py");

#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Convert to float16 after the passes (input and output stay float32).
    pub fp16: bool,
    /// Passes in order (None: the script's defaults).
    pub passes: Option<String>,
    /// With fp16: operators kept in float32.
    pub keep_fp32: Vec<String>,
    /// The `fold` pass's size limit (elements of one constant written into the file; None: the script's).
    pub fold_limit: Option<u64>,
    /// Python interpreter (default: $MATTEFLOW_PYTHON, else python3).
    pub python: Option<PathBuf>,
    /// Where to write (default: the cache, named by the model's hash).
    pub output: Option<PathBuf>,
    /// Write the script's JSON report here too.
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Prepared {
    pub path: PathBuf,
    /// False when the cache already held it.
    pub fresh: bool,
    /// The script's report (passes fired, node counts), when it ran.
    pub report: Option<serde_json::Value>,
}

/// The cache folder: $MATTEFLOW_CACHE_DIR, else $XDG_CACHE_HOME/matteflow, else ~/.cache/matteflow; prepared
/// graphs go to its `prepared/`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MATTEFLOW_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("matteflow")
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The first 8 hex digits of the passes' own hash: a matteflow with other passes prepares again instead of
/// reusing what an older one left in the cache.
fn script_tag() -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(SCRIPT.as_bytes()))[..8].to_string()
}

/// The model file's sha256, remembered in the cache by path, size and modification time so that opening a
/// large model on CUDA does not hash it every time.
fn model_hash(model: &Path) -> Result<String> {
    use sha2::Digest;
    let meta = std::fs::metadata(model).map_err(|e| Error::io(format!("reading {}", model.display()), e))?;
    let canon = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let key = format!("{:x}", sha2::Sha256::digest(format!("{}|{}|{mtime}", canon.display(), meta.len()).as_bytes()));
    let index = cache_dir().join("prepared").join(".hashes").join(&key[..24]);
    if let Ok(h) = std::fs::read_to_string(&index) {
        if h.len() == 64 {
            return Ok(h);
        }
    }
    let h = sha256_file(model)?;
    if std::fs::create_dir_all(index.parent().unwrap()).is_ok() {
        let tmp = index.with_extension(format!("partial-{}", std::process::id()));
        if std::fs::write(&tmp, &h).is_ok() {
            let _ = std::fs::rename(&tmp, &index);
        }
    }
    Ok(h)
}

/// Where the cache keeps the prepared form of `model` under `o`: the model's name, its hash, the passes'
/// version, the options.
pub fn cached_path(model: &Path, o: &PrepareOptions) -> Result<PathBuf> {
    let hash = model_hash(model)?;
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let mut tag = String::new();
    if o.fp16 {
        tag += "-fp16";
    }
    if let Some(p) = &o.passes {
        tag += &format!("-{}", p.replace(',', "+"));
    }
    if !o.keep_fp32.is_empty() {
        tag += &format!("-keep-{}", o.keep_fp32.join("+"));
    }
    if let Some(n) = o.fold_limit {
        tag += &format!("-fold{n}");
    }
    Ok(cache_dir().join("prepared").join(format!("{stem}-{}-p{}{tag}.onnx", &hash[..16], script_tag())))
}

/// The prepared forms of `model` that `matteflow prepare MODEL [--fp16]` left in the cache with this
/// matteflow's passes, the fp16 one first: (path, whether it is the fp16 form, which carries matteflow's own
/// operators).
pub fn find_cached(model: &Path) -> Vec<(PathBuf, bool)> {
    let prepared_dir = cache_dir().join("prepared");
    if model.starts_with(&prepared_dir) {
        return Vec::new(); // already a prepared file
    }
    [true, false]
        .into_iter()
        .filter_map(|fp16| cached_path(model, &PrepareOptions { fp16, ..Default::default() }).ok().map(|p| (p, fp16)))
        .filter(|(p, _)| p.is_file())
        .collect()
}

fn python(o: &PrepareOptions) -> PathBuf {
    o.python
        .clone()
        .or_else(|| std::env::var_os("MATTEFLOW_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Checks that the interpreter runs and has what the options need, with an error that says how to get it.
fn check_python(py: &Path, fp16: bool) -> Result<()> {
    let modules = if fp16 { "onnx, numpy, onnxconverter_common" } else { "onnx, numpy" };
    let install = if fp16 { "onnx numpy onnxconverter-common" } else { "onnx numpy" };
    let out = Command::new(py).args(["-c", &format!("import {modules}")]).output();
    let reason = match out {
        Err(e) => format!("cannot run {} ({e})", py.display()),
        Ok(o) if !o.status.success() => String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string(),
        Ok(_) => return Ok(()),
    };
    Err(Error::Config(format!(
        "matteflow prepare needs Python 3 with {modules}: {reason}. Install them (`{} -m pip install {install}`) or \
         point --python / MATTEFLOW_PYTHON at an interpreter that has them",
        py.display()
    )))
}

/// Prepares `model` (an .onnx file) as `o` says; a cached result for the same file and options is reused.
pub fn prepare(model: &Path, o: &PrepareOptions) -> Result<Prepared> {
    if !model.is_file() {
        return Err(Error::Model { model: model.display().to_string(), reason: "no such file".into() });
    }
    let out = match &o.output {
        Some(p) => p.clone(),
        None => cached_path(model, o)?,
    };
    if o.output.is_none() && out.is_file() {
        return Ok(Prepared { path: out, fresh: false, report: None });
    }
    let py = python(o);
    check_python(&py, o.fp16)?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    // The script goes in on stdin (`python3 - ARGS`): nothing to write or clean up.
    let tmp_report = std::env::temp_dir().join(format!("matteflow-prepare-{}.json", std::process::id()));
    let report = o.report.clone().unwrap_or_else(|| tmp_report.clone());
    let mut cmd = Command::new(&py);
    cmd.arg("-").arg(model).arg(&out).arg("--report").arg(&report).stdin(std::process::Stdio::piped());
    if o.fp16 {
        cmd.arg("--fp16");
    }
    if let Some(p) = &o.passes {
        cmd.args(["--passes", p]);
    }
    if !o.keep_fp32.is_empty() {
        cmd.args(["--keep-fp32", &o.keep_fp32.join(",")]);
    }
    if let Some(n) = o.fold_limit {
        cmd.args(["--fold-limit", &n.to_string()]);
    }
    let mut child = cmd.spawn().map_err(|e| Error::io(format!("running {}", py.display()), e))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(SCRIPT.as_bytes()).map_err(|e| Error::io(format!("feeding {}", py.display()), e))?;
    }
    let status = child.wait().map_err(|e| Error::io(format!("running {}", py.display()), e))?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp_report);
        return Err(Error::Model {
            model: model.display().to_string(),
            reason: format!("preparation failed ({status}); the model is unchanged, see the messages above"),
        });
    }
    let report = std::fs::read_to_string(&report).ok().and_then(|t| serde_json::from_str(&t).ok());
    let _ = std::fs::remove_file(&tmp_report);
    Ok(Prepared { path: out, fresh: true, report })
}
