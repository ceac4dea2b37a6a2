//! The control endpoint (tokio + axum), off by default and on loopback unless told otherwise:
//!
//! | request | what it does |
//! |---|---|
//! | `GET /metrics` | Prometheus text: frames, drops, reused masks, per-stage and glass-to-glass latency, memory, CPU |
//! | `GET /status` | JSON: current settings, the run's statistics, each RTMP output's state and bitrate, GPU use ("no GPU" without one), preview watchers |
//! | `POST /background` | body `blur=20`, `#00ff00`, `green`, `transparent`, or a file name inside `background_dir` |
//! | `POST /model` | body: a model name from the allowed list (loaded in the background, then switched) |
//! | `POST /pause`, `POST /resume` | stop / restart matting (frames pass through) |
//! | `POST /mute`, `POST /unmute` | silence / restore the sound (the audio track goes on, silent) |
//! | `POST /matte` | JSON `{"smooth":0.6,"feather":2,"infer_every":2,"threshold":[0.1,0.9]}` (any subset) |
//!
//! Bad requests get 4xx with a one-line reason. The endpoint never reads a file outside `background_dir`
//! and writes only uploaded images into it. The browser panel (`GET /`, the preview, uploads) and the checks in
//! front of every request (token, Host, Origin) are in [`super::panel`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::matte::Controls;
use super::panel::Panel;
use super::stats::LiveStats;
use super::ControlConfig;
use crate::config::BackgroundSpec;
use crate::error::{Error, Result};
use crate::infer::OnnxSegmenter;

/// Opens a model by name (the binary passes one that uses its provider options).
pub type ModelOpener = Arc<dyn Fn(&str) -> Result<OnnxSegmenter> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct State {
    pub controls: Arc<Controls>,
    pub stats: Arc<LiveStats>,
    /// Every output carries alpha, so 'transparent' is allowed.
    pub alpha_outputs: bool,
    pub open_model: Option<ModelOpener>,
    /// The model runs on CUDA: report GPU memory too.
    pub gpu: bool,
    /// The run's sound, when it has some (`POST /mute`, `/unmute`).
    pub audio: Option<Arc<super::audio::AudioShared>>,
    /// The browser panel's preview and history.
    pub panel: Arc<Panel>,
}

#[derive(Clone)]
pub(super) struct App {
    pub(super) state: State,
    pub(super) cfg: Arc<ControlConfig>,
    /// Required on every request when set (always off loopback).
    pub(super) token: Option<Arc<str>>,
    /// Bound to a loopback address: only loopback Host names are served.
    pub(super) loopback: bool,
}

/// A running endpoint.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Checks the endpoint's configuration, the address included (bound and let go at once), so that a mistake is
/// said before anything goes live rather than after the input and outputs have started.
pub fn check(cfg: &ControlConfig) -> Result<()> {
    if let Some(d) = &cfg.background_dir {
        if !d.is_dir() {
            return Err(Error::config(format!("control: background folder {} does not exist", d.display())));
        }
    }
    if cfg.token.as_ref().is_some_and(|t| t.trim().is_empty()) {
        let named = crate::hint::CONTROL_TOKEN.name();
        return Err(Error::config(format!("the control token ({named}) is empty: give a token or leave it out")));
    }
    std::net::TcpListener::bind(cfg.listen).map(drop).map_err(|e| cannot_listen(cfg.listen, &e))
}

fn cannot_listen(addr: SocketAddr, e: &std::io::Error) -> Error {
    Error::config(format!(
        "control endpoint: cannot listen on {addr} ({e}); choose another address: {}",
        crate::hint::CONTROL.to("127.0.0.1:PORT")
    ))
}

impl Server {
    /// Binds and serves on its own small runtime ([`check`] first).
    pub fn start(cfg: ControlConfig, state: State) -> Result<Server> {
        check(&cfg)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the control endpoint's runtime", e))?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(cfg.listen)).map_err(|e| cannot_listen(cfg.listen, &e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("control endpoint address", e))?;
        let token = match (&cfg.token, addr.ip().is_loopback()) {
            (Some(t), _) => Some(Arc::from(t.trim())),
            (None, true) => None,
            (None, false) => {
                let t = super::panel::new_token()?;
                tracing::warn!("control endpoint on {addr} is reachable from the network; every request needs this token (printed once): {t}; open http://{addr}/?token={t}");
                Some(Arc::from(t.as_str()))
            }
        };
        let app = App { state, cfg: Arc::new(cfg), token, loopback: addr.ip().is_loopback() };
        let history = super::panel::keep_history(app.state.panel.clone(), app.state.stats.clone(), app.state.gpu);
        let panel = app.state.panel.clone();
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/status", get(status))
            .route("/background", post(set_background))
            .route("/model", post(set_model))
            .route("/pause", post(pause))
            .route("/resume", post(resume))
            .route("/matte", post(set_matte))
            .route("/mute", post(mute))
            .route("/unmute", post(unmute))
            .merge(super::panel::routes())
            .fallback(|| async {
                (StatusCode::NOT_FOUND, "unknown path: try GET / (the panel), GET /metrics, GET /status, POST /background, /model, /pause, /resume, /matte, /mute, /unmute\n")
            })
            .layer(axum::middleware::from_fn_with_state(app.clone(), super::panel::guard))
            .with_state(app);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mf-control".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::spawn(history);
                    let _ = axum::serve(listener, router).with_graceful_shutdown(async move {
                        let _ = rx.await;
                        panel.close();
                    }).await;
                });
            })
            .map_err(|e| Error::io("starting the control thread", e))?;
        tracing::info!("control endpoint on http://{addr}");
        Ok(Server { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bad(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (code, m).into_response()
}

async fn metrics(AxState(app): AxState<App>) -> Response {
    let (rss, cpu) = super::stats::process_usage();
    let s = app.state.controls.get();
    let extra = [
        ("matteflow_resident_memory_bytes", "Resident memory of the process", rss),
        ("matteflow_cpu_seconds", "CPU time used by the process (user + system)", cpu),
        ("matteflow_paused", "1 while matting is paused", if s.paused { 1.0 } else { 0.0 }),
        ("matteflow_infer_every", "The model runs on every Nth frame", s.infer_every as f64),
    ];
    let mut extra = extra.to_vec();
    if app.state.gpu {
        if let Some(used) = tokio::task::spawn_blocking(super::stats::gpu_memory_used).await.ok().flatten() {
            extra.push(("matteflow_gpu_memory_used_bytes", "GPU memory in use on the device (all processes)", used));
        }
    }
    let body = app.state.stats.prometheus(&extra);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn status(AxState(app): AxState<App>) -> Response {
    let gpu = tokio::task::spawn_blocking(super::gpu::gpu_use_json).await.unwrap_or_else(|_| super::gpu::NO_GPU.into());
    let v = serde_json::json!({
        "settings": app.state.controls.get(),
        "stats": app.state.stats.total(),
        "audio": app.state.audio.as_ref().map(|a| serde_json::json!({ "muted": a.muted.load(std::sync::atomic::Ordering::Relaxed) })),
        "rtmp": app.state.stats.rtmp_outputs(),
        "gpu": gpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "preview_watchers": app.state.panel.preview.watchers(),
    });
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Colours, blur and transparency; `None` when the text names none of them (then it may be a file).
fn non_file_background(s: &str) -> Option<std::result::Result<BackgroundSpec, String>> {
    let l = s.to_ascii_lowercase();
    let is_named = ["transparent", "none", "green", "blue", "black", "white", "grey", "gray", "red", "magenta"].contains(&l.as_str());
    if is_named || l.starts_with('#') || l == "blur" || l.starts_with("blur=") || l.starts_with("blur:") {
        return Some(s.parse());
    }
    None
}

/// A file background, only inside the configured folder.
fn file_background(dir: Option<&Path>, name: &str) -> std::result::Result<BackgroundSpec, (StatusCode, String)> {
    let Some(dir) = dir else {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "image and video backgrounds need a background folder ({}) when chosen over the control endpoint",
                crate::hint::BACKGROUND_DIR.to("DIR")
            ),
        ));
    };
    let rel = Path::new(name.trim_start_matches("image:").trim_start_matches("video:"));
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err((StatusCode::FORBIDDEN, format!("'{name}' must be a plain file name inside the background folder")));
    }
    let base = std::fs::canonicalize(dir).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let full = std::fs::canonicalize(base.join(rel))
        .map_err(|_| (StatusCode::NOT_FOUND, format!("no file '{name}' in the background folder")))?;
    if !full.starts_with(&base) || !full.is_file() {
        return Err((StatusCode::FORBIDDEN, format!("'{name}' is not a file inside the background folder")));
    }
    full.to_str()
        .ok_or((StatusCode::BAD_REQUEST, "file name is not UTF-8".to_string()))?
        .parse::<BackgroundSpec>()
        .map_err(|e| (StatusCode::BAD_REQUEST, e))
}

async fn set_background(AxState(app): AxState<App>, body: String) -> Response {
    let text = body.trim();
    if text.is_empty() {
        return bad(StatusCode::BAD_REQUEST, "empty body: send e.g. blur=20, #00ff00, green, transparent or a file name");
    }
    let spec = match non_file_background(text) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return bad(StatusCode::BAD_REQUEST, e),
        None => match file_background(app.cfg.background_dir.as_deref(), text) {
            Ok(s) => s,
            Err((c, m)) => return bad(c, m),
        },
    };
    if spec == BackgroundSpec::Transparent && !app.state.alpha_outputs {
        return bad(StatusCode::CONFLICT, "transparent needs outputs that carry alpha; these outputs do not");
    }
    // Images are decoded here so a broken file is refused instead of silently ignored.
    if let BackgroundSpec::Image(p) = &spec {
        if let Err(e) = image::open(p) {
            return bad(StatusCode::UNPROCESSABLE_ENTITY, format!("cannot decode {}: {e}", p.display()));
        }
    }
    let shown = String::from(spec.clone());
    app.state.controls.update(|s| s.set_background(spec));
    (StatusCode::OK, format!("background {shown}\n")).into_response()
}

async fn set_model(AxState(app): AxState<App>, body: String) -> Response {
    let name = body.trim().to_string();
    let allowed: Vec<String> = if app.cfg.models.is_empty() {
        crate::model::BUILTIN_MANIFESTS.iter().map(|(n, _)| n.to_string()).collect()
    } else {
        app.cfg.models.clone()
    };
    if !allowed.contains(&name) {
        return bad(StatusCode::BAD_REQUEST, format!("model '{name}' is not allowed here; choose one of: {}", allowed.join(", ")));
    }
    let Some(open) = app.state.open_model.clone() else {
        return bad(StatusCode::NOT_IMPLEMENTED, "this run cannot switch models");
    };
    let controls = app.state.controls.clone();
    let n2 = name.clone();
    let r = tokio::task::spawn_blocking(move || open(&n2).and_then(|seg| controls.swap_model(n2.clone(), seg))).await;
    match r {
        Ok(Ok(())) => (StatusCode::OK, format!("model {name}\n")).into_response(),
        Ok(Err(e)) => bad(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn set_muted(app: &App, muted: bool) -> Response {
    match &app.state.audio {
        Some(a) => {
            a.muted.store(muted, std::sync::atomic::Ordering::Relaxed);
            (StatusCode::OK, if muted { "muted\n" } else { "unmuted\n" }).into_response()
        }
        None => (
            StatusCode::CONFLICT,
            format!("this stream has no sound ({}, or the input has none and no capture device was found)\n", crate::hint::AUDIO.to("none")),
        )
            .into_response(),
    }
}

async fn mute(AxState(app): AxState<App>) -> Response {
    set_muted(&app, true)
}

async fn unmute(AxState(app): AxState<App>) -> Response {
    set_muted(&app, false)
}

async fn pause(AxState(app): AxState<App>) -> Response {
    app.state.controls.update(|s| s.paused = true);
    (StatusCode::OK, "paused\n").into_response()
}

async fn resume(AxState(app): AxState<App>) -> Response {
    app.state.controls.update(|s| s.paused = false);
    (StatusCode::OK, "matting\n").into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MatteChange {
    smooth: Option<f32>,
    feather: Option<u32>,
    threshold: Option<Option<(f32, f32)>>,
    infer_every: Option<u32>,
    motion_threshold: Option<f32>,
}

async fn set_matte(AxState(app): AxState<App>, body: String) -> Response {
    let c: MatteChange = match serde_json::from_str(&body) {
        Ok(c) => c,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("body must be JSON like {{\"smooth\":0.6,\"feather\":2}}: {e}")),
    };
    if c.smooth.is_some_and(|v| !(0.0..=0.95).contains(&v)) {
        return bad(StatusCode::BAD_REQUEST, "smooth must be from 0 to 0.95");
    }
    if c.feather.is_some_and(|v| v > 64) {
        return bad(StatusCode::BAD_REQUEST, "feather must be from 0 to 64 pixels");
    }
    if c.infer_every.is_some_and(|v| v == 0 || v > 120) {
        return bad(StatusCode::BAD_REQUEST, "infer_every must be from 1 to 120");
    }
    if let Some(Some((lo, hi))) = c.threshold {
        if !(0.0 <= lo && lo < hi && hi <= 1.0) {
            return bad(StatusCode::BAD_REQUEST, "threshold needs 0 ≤ lo < hi ≤ 1");
        }
    }
    if c.motion_threshold.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
        return bad(StatusCode::BAD_REQUEST, "motion_threshold must be from 0 to 1");
    }
    app.state.controls.update(|s| {
        if let Some(v) = c.smooth {
            s.post.smooth = v;
        }
        if let Some(v) = c.feather {
            s.post.feather = v;
        }
        if let Some(v) = c.threshold {
            s.post.threshold = v;
        }
        if let Some(v) = c.motion_threshold {
            s.post.motion_threshold = v;
        }
        if let Some(v) = c.infer_every {
            s.infer_every = v;
        }
    });
    let s = app.state.controls.get();
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&s).unwrap_or_default()).into_response()
}
