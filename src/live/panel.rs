//! The control panel: one page (`GET /`, embedded in the binary, no build step, nothing fetched from elsewhere)
//! served by the control endpoint, and what it needs besides the endpoint's own API:
//!
//! | request | what it does |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /preview.mjpg` | the output, scaled down, as MJPEG (a few frames a second; encoded on its own thread) |
//! | `GET /preview.mjpg?view=original` | the same of the input frames, before matting |
//! | `GET /stats` | JSON: the last minutes of latency, fps, masks, drops and CPU, one point every 2 s |
//! | `GET /models` | JSON: the models that may be chosen, present or missing, and the one in use |
//! | `GET /backgrounds` | JSON: the image and video files of `--background-dir` |
//! | `GET /backgrounds/NAME` | a JPEG thumbnail of that image, or of that video's first frame |
//! | `POST /backgrounds?name=NAME` | body: a PNG or JPEG (sniffed, not trusted by name), saved into the folder |
//! | `POST /backgrounds` | the same as a multipart form (the first file field; its file name unless `?name=`) |
//!
//! Every request passes [`guard`]: the token when one is set, the Host on loopback, the Origin on changes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::control::App;
use super::stats::LiveStats;

mod backgrounds;
mod preview;

pub use preview::{Due, Preview, View};

/// The page, with its CSS and script inline.
const PAGE: &str = include_str!("panel/index.html");
/// Largest background upload.
pub const UPLOAD_LIMIT: usize = 16 << 20;
/// Latency history: a point every 2 s, 10 minutes kept.
const HISTORY_STEP: Duration = Duration::from_secs(2);
const HISTORY_POINTS: usize = 300;

/// One point of the history the page charts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Point {
    /// Seconds since the run started.
    pub t: f64,
    pub fps: f64,
    pub g2g_p50: f64,
    pub g2g_p95: f64,
    pub matte_p50: f64,
    pub infer_p50: f64,
    pub composite_p50: f64,
    /// Frames in this step with their own mask, with an earlier one, dropped (before the model or compositing).
    pub own: u64,
    pub reused: u64,
    pub dropped: u64,
    /// Process CPU over the step, % of one core.
    pub cpu: f64,
    /// GPU memory in use, MiB (with a CUDA model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_mib: Option<f64>,
}

/// The panel's share of the endpoint's state.
pub struct Panel {
    pub preview: Arc<Preview>,
    history: Mutex<VecDeque<Point>>,
    /// Set when the endpoint shuts down: open preview streams end (a graceful shutdown waits for them).
    closed: tokio::sync::watch::Sender<bool>,
}

impl Panel {
    pub fn start() -> crate::error::Result<Arc<Panel>> {
        let closed = tokio::sync::watch::Sender::new(false);
        Ok(Arc::new(Panel { preview: Preview::start()?, history: Mutex::new(VecDeque::new()), closed }))
    }

    /// Ends the open preview streams.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// Samples the statistics every [`HISTORY_STEP`] into the panel's history (runs on the endpoint's runtime).
pub async fn keep_history(panel: Arc<Panel>, stats: Arc<LiveStats>, gpu: bool) {
    let mut marks = [0usize; 4];
    let counts = |s: &LiveStats| {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        [l(&s.output), l(&s.inferred), l(&s.reused), l(&s.dropped) + l(&s.skipped_stale)]
    };
    let (mut prev, mut prev_cpu, mut prev_t) = (counts(&stats), super::stats::process_usage().1, Instant::now());
    let mut tick = tokio::time::interval(HISTORY_STEP);
    tick.tick().await;
    loop {
        tick.tick().await;
        let sums = stats.since(&mut marks);
        let (now, cpu, dt) = (counts(&stats), super::stats::process_usage().1, prev_t.elapsed().as_secs_f64().max(1e-3));
        let gpu_mib = match gpu {
            true => tokio::task::spawn_blocking(super::stats::gpu_memory_used).await.ok().flatten().map(|b| b / 1048576.0),
            false => None,
        };
        let p = Point {
            t: stats.started.elapsed().as_secs_f64(),
            fps: (now[0] - prev[0]) as f64 / dt,
            g2g_p50: sums[0].p50,
            g2g_p95: sums[0].p95,
            matte_p50: sums[1].p50,
            infer_p50: sums[2].p50,
            composite_p50: sums[3].p50,
            own: now[1] - prev[1],
            reused: now[2] - prev[2],
            dropped: now[3] - prev[3],
            cpu: 100.0 * (cpu - prev_cpu) / dt,
            gpu_mib,
        };
        (prev, prev_cpu, prev_t) = (now, cpu, Instant::now());
        let mut h = panel.history.lock().unwrap();
        if h.len() == HISTORY_POINTS {
            h.pop_front();
        }
        h.push_back(p);
    }
}

/// The panel's routes, merged into the control endpoint's router.
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/", get(page))
        .route("/preview.mjpg", get(preview))
        .route("/stats", get(history))
        .route("/models", get(models))
        .route(
            "/backgrounds",
            get(backgrounds::list)
                .post(backgrounds::upload)
                .layer(axum::extract::DefaultBodyLimit::max(UPLOAD_LIMIT + backgrounds::FORM_SLACK)),
        )
        .route("/backgrounds/{name}", get(backgrounds::thumbnail))
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (code, m).into_response()
}

fn json(v: &impl serde::Serialize) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(v).unwrap_or_default()).into_response()
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        PAGE,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct PreviewQuery {
    view: Option<String>,
}

async fn preview(AxState(app): AxState<App>, Query(q): Query<PreviewQuery>) -> Response {
    let view = match q.view.as_deref().map(View::from_name) {
        None => View::Output,
        Some(Some(v)) => v,
        Some(None) => return text(StatusCode::BAD_REQUEST, "view must be 'output' or 'original'"),
    };
    let panel = app.state.panel.clone();
    let (mut rx, watching) = panel.preview.watch(view);
    rx.mark_changed();
    let closed = panel.closed.subscribe();
    let parts = futures_util::stream::unfold((rx, closed, watching), |(mut rx, mut closed, w)| async move {
        loop {
            tokio::select! {
                r = rx.changed() => r.ok()?,
                _ = closed.wait_for(|c| *c) => return None,
            }
            let Some(jpeg) = rx.borrow_and_update().clone() else { continue };
            let mut part = format!("--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len()).into_bytes();
            part.extend_from_slice(&jpeg);
            part.extend_from_slice(b"\r\n");
            return Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(part)), (rx, closed, w)));
        }
    });
    (
        [(header::CONTENT_TYPE, "multipart/x-mixed-replace; boundary=frame"), (header::CACHE_CONTROL, "no-store")],
        Body::from_stream(parts),
    )
        .into_response()
}

async fn history(AxState(app): AxState<App>) -> Response {
    let points: Vec<Point> = app.state.panel.history.lock().unwrap().iter().cloned().collect();
    json(&serde_json::json!({ "step_s": HISTORY_STEP.as_secs_f64(), "points": points }))
}

async fn models(AxState(app): AxState<App>) -> Response {
    let allowed: Vec<String> = match app.cfg.models.is_empty() {
        true => crate::model::BUILTIN_MANIFESTS.iter().map(|(n, _)| n.to_string()).collect(),
        false => app.cfg.models.clone(),
    };
    let list: Vec<serde_json::Value> = allowed
        .iter()
        .map(|name| {
            let m = crate::model::builtin(name);
            // Installed (non-shipped) manifests are checked when chosen.
            let present = m.as_ref().map(|m| crate::model::locate(m).is_some());
            let description = m.map(|m| m.description).unwrap_or_default();
            serde_json::json!({ "name": name, "description": description, "present": present })
        })
        .collect();
    let can_switch = app.state.open_model.is_some();
    json(&serde_json::json!({ "current": app.state.controls.get().model, "can_switch": can_switch, "models": list }))
}

/// Token, Host and Origin checks in front of every route.
///
/// - With a token, every request must carry it (`Authorization: Bearer T`, or `?token=T` for the page, the
///   preview image and the thumbnails).
/// - On loopback, the Host must be a loopback name: a web page elsewhere cannot reach the panel by pointing
///   its own host name at 127.0.0.1 (DNS rebinding).
/// - Requests that change something (every method but GET and HEAD) must come from the panel's own origin.
pub(super) async fn guard(AxState(app): AxState<App>, req: Request, next: Next) -> Response {
    if let Some(want) = app.token.as_deref() {
        if !has_token(req.headers(), req.uri().query(), want) {
            return text(StatusCode::UNAUTHORIZED, "this endpoint needs its token: open the address with ?token=… or send Authorization: Bearer …");
        }
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    if app.loopback && !is_loopback_host(&host) {
        return text(StatusCode::FORBIDDEN, format!("host '{host}' refused: on loopback, open http://127.0.0.1:PORT or http://localhost:PORT"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Err(why) = same_origin(req.headers(), &host) {
            return text(StatusCode::FORBIDDEN, why);
        }
    }
    next.run(req).await
}

fn has_token(h: &HeaderMap, query: Option<&str>, want: &str) -> bool {
    let bearer = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let in_query = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("token="));
    [bearer, in_query].into_iter().flatten().any(|got| same_bytes(got.trim().as_bytes(), want.as_bytes()))
}

/// Compares without stopping at the first difference (the time taken says nothing about the token).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Browsers send Origin (and Sec-Fetch-Site) with every cross-origin POST; tools like curl send neither.
fn same_origin(h: &HeaderMap, host: &str) -> Result<(), String> {
    if h.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|s| s == "cross-site" || s == "same-site") {
        return Err("cross-site request refused: change settings from the panel's own page".into());
    }
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Err(format!("request from origin '{origin}' refused: change settings from the panel's own page (http://{host})"));
    }
    Ok(())
}

/// A fresh random token (128 bits, hex).
pub fn new_token() -> crate::error::Result<String> {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| crate::error::Error::io("reading /dev/urandom for the control token", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
