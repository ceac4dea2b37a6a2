//! Shared helpers for the integration tests: run the real binary, make clips with GStreamer, decode outputs
//! back with GStreamer, build known-answer ONNX models with the `onnx` Python package from set-up.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample(name: &str) -> PathBuf {
    root().join("assets/media").join(name)
}

pub fn matteflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matteflow")).args(args).output().expect("run matteflow")
}

/// Runs matteflow and insists it succeeded, showing its stderr otherwise.
pub fn matteflow_ok(args: &[&str]) -> String {
    let out = matteflow(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "matteflow {args:?} failed ({}): {stderr}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The long flags `matteflow COMMAND` takes, read from its own --help.
pub fn flags_of(command: &str) -> Vec<String> {
    let help = matteflow_ok(&[command, "--help"]);
    let mut flags = long_flags(&help);
    flags.sort();
    flags.dedup();
    flags
}

/// The `--flag` words of a text, outside `backquoted` spans (those quote other programs and pipeline-file keys).
pub fn long_flags(text: &str) -> Vec<String> {
    let unquoted: String = text.split('`').step_by(2).collect::<Vec<_>>().join(" ");
    unquoted
        .split(|c: char| c.is_whitespace() || "(),;:[]=".contains(c))
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())
        .filter(|f| !f.is_empty())
        .map(|f| format!("--{f}"))
        .collect()
}

/// Every flag a message names is one `matteflow COMMAND` takes: its hints can be followed there.
pub fn assert_flags_work_in(command: &str, message: &str) {
    let takes = flags_of(command);
    for f in long_flags(message) {
        assert!(takes.contains(&f), "`matteflow {command}` does not take {f} (it takes {takes:?}), yet said: {message}");
    }
}

pub struct Decoded {
    /// Running-time presentation timestamp, ns.
    pub pts: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

/// Decodes every video frame of a file to RGBA with GStreamer.
pub fn decode(path: &Path) -> Vec<Decoded> {
    gst::init().unwrap();
    let uri = gst::glib::filename_to_uri(std::fs::canonicalize(path).unwrap(), None).unwrap();
    let p = gst::parse::launch(&format!(
        "uridecodebin uri={uri} ! videoconvert ! video/x-raw,format=RGBA ! appsink name=s sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut frames = Vec::new();
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(20)) {
        let caps = s.caps().unwrap();
        let st = caps.structure(0).unwrap();
        let (w, h) = (st.get::<i32>("width").unwrap() as u32, st.get::<i32>("height").unwrap() as u32);
        let seg = s.segment().and_then(|g| g.downcast_ref::<gst::ClockTime>().cloned());
        let b = s.buffer().unwrap();
        let pts = b.pts().and_then(|t| seg.as_ref().map_or(Some(t), |g| g.to_running_time(t))).map(|t| t.nseconds());
        let m = b.map_readable().unwrap();
        let stride = m.len() / h as usize;
        let mut rgba = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h as usize {
            rgba.extend_from_slice(&m[y * stride..y * stride + w as usize * 4]);
        }
        frames.push(Decoded { pts, width: w, height: h, rgba });
    }
    let bus = p.bus().unwrap();
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("decoding {} failed: {}", path.display(), e.error());
        }
    }
    p.set_state(gst::State::Null).unwrap();
    frames
}

/// Reads a PNG folder written by matteflow, in frame order.
pub fn read_png_dir(dir: &Path) -> Vec<image::RgbaImage> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    names.iter().map(|p| image::open(p).unwrap().to_rgba8()).collect()
}

/// Writes RGBA frames losslessly (FFV1 in Matroska) at `fps`.
pub fn write_lossless_clip(path: &Path, w: u32, h: u32, fps: i32, frames: &[Vec<u8>]) {
    gst::init().unwrap();
    let p = gst::parse::launch(&format!(
        "appsrc name=src format=time ! videoconvert ! video/x-raw,format=BGRA ! avenc_ffv1 ! matroskamux ! filesink location={}",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = p.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGBA")
            .field("width", w as i32)
            .field("height", h as i32)
            .field("framerate", gst::Fraction::new(fps, 1))
            .build(),
    ));
    p.set_state(gst::State::Playing).unwrap();
    let dur = gst::ClockTime::SECOND / fps as u64;
    for (i, f) in frames.iter().enumerate() {
        let mut b = gst::Buffer::from_slice(f.clone());
        let bm = b.get_mut().unwrap();
        bm.set_pts(dur * i as u64);
        bm.set_duration(dur);
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let bus = p.bus().unwrap();
    match bus.timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(m) if m.type_() == gst::MessageType::Eos => {}
        other => panic!("writing {} failed: {other:?}", path.display()),
    }
    p.set_state(gst::State::Null).unwrap();
}

/// Encodes a test-pattern clip with gst-launch-style syntax (e.g. with audio) into `path`.
pub fn gst_make(desc: &str) {
    gst::init().unwrap();
    let p = gst::parse::launch(desc).unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    match bus.timed_pop_filtered(gst::ClockTime::from_seconds(120), &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(m) if m.type_() == gst::MessageType::Eos => {}
        other => panic!("{desc} failed: {other:?}"),
    }
    p.set_state(gst::State::Null).unwrap();
}

/// Builds the known-answer model (mask = input channel `ch`) at `h`×`w` and its manifest; returns the manifest.
pub fn known_answer_model(dir: &Path, ch: usize, h: u32, w: u32, layout: &str, activation: &str, resize: &str) -> PathBuf {
    let onnx = dir.join(format!("ka_{ch}_{h}x{w}_{layout}_{activation}.onnx"));
    let py = root().join(".deps/py");
    let out = Command::new("python3")
        .env("PYTHONPATH", &py)
        .arg(root().join("tests/fixtures/make_known_answer.py"))
        .args([onnx.to_str().unwrap(), &ch.to_string(), &h.to_string(), &w.to_string(), layout, if activation == "sigmoid" { "logit" } else { "none" }])
        .output()
        .expect("python3");
    assert!(out.status.success(), "building the known-answer model failed (run scripts/setup.sh): {}", String::from_utf8_lossy(&out.stderr));
    let manifest = onnx.with_extension("toml");
    std::fs::write(
        &manifest,
        format!(
            r#"name = "known-answer"
file = "{}"
[input]
name = "pixels"
layout = "{layout}"
size = [{h}, {w}]
scale = 0.00392156862745098
resize = "{resize}"
[output]
name = "mask"
activation = "{activation}"
"#,
            onnx.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    manifest
}

/// Output frame count, and no leftovers (partial files) in a folder.
pub fn assert_no_partials(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".partial"), "partial output left behind: {n}");
    }
}

/// A recurrent test model in `dir` (rec.onnx + rec.toml, 16² input): mask_t = 0.5·R_t + 0.5·mask_{t-1}, with
/// one recurrent state and one constant input. Returns the manifest path.
pub fn recurrent_model(dir: &Path) -> PathBuf {
    let onnx = dir.join("rec.onnx");
    let out = Command::new("python3")
        .env("PYTHONPATH", root().join(".deps/py"))
        .arg(root().join("tests/fixtures/make_recurrent.py"))
        .args([onnx.to_str().unwrap(), "16", "16"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = dir.join("rec.toml");
    std::fs::write(
        &manifest,
        "name='rec'\nfile='rec.onnx'\n[input]\nname='pixels'\nlayout='NCHW'\nsize=[16,16]\n[output]\nname='mask'\n\
         [[recurrent]]\ninput='r1i'\noutput='r1o'\n[[constants]]\nname='ratio'\nvalue=[0.5]\n",
    )
    .unwrap();
    manifest
}

/// Runs a fixture script of tests/fixtures with the set-up's `onnx` package; panics with its stderr on failure.
pub fn fixture_py(script: &str, args: &[&Path]) {
    let out = Command::new("python3")
        .env("PYTHONPATH", root().join(".deps/py"))
        .arg(root().join("tests/fixtures").join(script))
        .args(args)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{script} failed (run scripts/setup.sh): {}", String::from_utf8_lossy(&out.stderr));
}

/// The shipped selfie manifest pointed at `onnx` (a rewritten selfie model) under the name `name`, written beside
/// it; returns its path.
pub fn selfie_manifest_for(onnx: &Path, name: &str) -> PathBuf {
    let toml = std::fs::read_to_string(root().join("models/selfie.toml")).unwrap();
    let toml: String = toml
        .lines()
        .filter(|l| !l.starts_with("sha256") && !l.starts_with("notice"))
        .map(|l| match l {
            l if l.starts_with("name = \"selfie\"") => format!("name = \"{name}\""),
            l if l.starts_with("file = ") => format!("file = \"{}\"", onnx.file_name().unwrap().to_str().unwrap()),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let manifest = onnx.with_extension("toml");
    std::fs::write(&manifest, toml).unwrap();
    manifest
}

/// A pseudo-random 256×256 NHWC model input for the selfie model (an LCG: no extra dependency).
pub fn noise_input(state: &mut u64) -> matteflow::preprocess::ModelInput {
    matteflow::preprocess::ModelInput {
        data: (0..256 * 256 * 3)
            .map(|_| {
                *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (*state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect(),
        shape: [1, 256, 256, 3],
        geometry: None,
    }
}

/// Milliseconds per run of a model on the CPU with `threads` threads: the median of `runs` runs on noise, after
/// two warm-up runs (the first run of a session pays for memory planning).
pub fn cpu_ms_per_run(manifest: &Path, threads: usize, runs: usize) -> f64 {
    use matteflow::infer::{LowResMask, Segmenter};
    let opts = matteflow::runtime::ProviderOptions {
        device: matteflow::runtime::DeviceChoice::Cpu,
        threads: Some(threads),
        ..Default::default()
    };
    let model = matteflow::model::resolve(manifest.to_str().unwrap(), None, &Default::default()).unwrap();
    let mut seg = matteflow::open_segmenter(model, &opts).unwrap();
    let input = noise_input(&mut 7u64);
    let mut mask = LowResMask::default();
    let mut ms: Vec<f64> = (0..runs + 2)
        .map(|_| {
            let t = std::time::Instant::now();
            seg.run(&input, &mut mask).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .skip(2)
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// A genuinely slow model with the shipped selfie model's interface and manifest (tests/fixtures/make_slow.py:
/// a chain of MatMuls; the mask is the input's red channel), its length calibrated on this machine so that one
/// run costs about `target_ms` on `threads` CPU threads. Returns its manifest and the cost measured here, ms.
/// The cost is only aimed at: tests read what the model really cost from their own run.
pub fn slow_model(dir: &Path, target_ms: f64, threads: usize) -> (PathBuf, f64) {
    let build = |layers: usize| {
        let onnx = dir.join(format!("slow_{layers}.onnx"));
        let n = layers.to_string();
        fixture_py("make_slow.py", &[&onnx, Path::new(&n)]);
        selfie_manifest_for(&onnx, "slow")
    };
    const PROBE: usize = 8;
    let per_layer = cpu_ms_per_run(&build(PROBE), threads, 5) / PROBE as f64;
    let layers = (target_ms / per_layer).round().clamp(1.0, 1000.0) as usize;
    let manifest = build(layers);
    let ms = cpu_ms_per_run(&manifest, threads, 3);
    (manifest, ms)
}

/// A small real file system (tmpfs of `kib` KiB) mounted at `dir`, to fill up; unmounted on drop. Mounting
/// needs root: without it this returns `None` and the caller skips, saying so (it panics if root cannot mount).
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(dir: &Path, kib: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: geteuid only reads the process's user id.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a small file system to fill up needs root");
            return None;
        }
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"]).arg(dir).status().unwrap();
        assert!(st.success(), "mount -t tmpfs failed as root");
        Some(SmallDisk { dir: dir.to_path_buf() })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An unprivileged nginx with the RTMP module on a free port; killed on drop.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Nginx {
    pub fn start(dir: &Path, port: u16) -> Nginx {
        let d = dir.join(format!("nginx-{port}"));
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let module = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
        assert!(Path::new(module).exists(), "{module} missing: run scripts/setup.sh (it installs libnginx-mod-rtmp)");
        let conf = d.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module {module};\ndaemon off;\nmaster_process off;\npid {0}/nginx.pid;\nerror_log {0}/logs/error.log info;\n\
                 events {{ worker_connections 64; }}\nrtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n",
                d.display()
            ),
        )
        .unwrap();
        let mut n = Nginx { dir: d, port, child: None };
        n.spawn();
        n
    }
    pub fn spawn(&mut self) {
        let child = Command::new("nginx")
            .args(["-p", self.dir.to_str().unwrap(), "-c", self.dir.join("nginx.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (run scripts/setup.sh)");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serialises the tests of one binary that measure time or start live jobs (the machine may have two cores).
/// A failed test poisons the lock; the others still run.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process killed on drop (a failed assertion must not leave it running).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
