//! The panel's background folder (`--background-dir`): the list, thumbnails (images scaled down; videos by
//! their first frame, decoded with GStreamer) and uploads of PNG or JPEG images, sent as the raw body
//! (`curl --data-binary @sea.png '…/backgrounds?name=sea.png'`) or as a multipart form with a file field (the
//! page's FormData, `curl -F file=@sea.png …/backgrounds`).

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Query, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{json, text, App, UPLOAD_LIMIT};

/// Image and video files the page shows as thumbnails.
const IMAGE_EXT: [&str; 3] = ["png", "jpg", "jpeg"];
const VIDEO_EXT: [&str; 5] = ["mp4", "mov", "mkv", "webm", "avi"];
/// What a multipart form may add around its file (boundaries, part headers, other small fields).
pub(super) const FORM_SLACK: usize = 64 << 10;
/// Thumbnail size (the page shows them at 16:9).
const THUMB: (u32, u32) = (160, 90);

fn ext_of(p: &Path) -> String {
    p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

pub(super) async fn list(AxState(app): AxState<App>) -> Response {
    let Some(dir) = app.cfg.background_dir.clone() else {
        return json(&serde_json::json!({ "folder": false, "files": [], "upload_limit": UPLOAD_LIMIT }));
    };
    let mut files: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let ext = ext_of(&p);
            let kind = if IMAGE_EXT.contains(&ext.as_str()) { "image" } else if VIDEO_EXT.contains(&ext.as_str()) { "video" } else { return None };
            (!name.starts_with('.')).then(|| serde_json::json!({ "name": name, "kind": kind }))
        })
        .collect();
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json(&serde_json::json!({ "folder": true, "files": files, "upload_limit": UPLOAD_LIMIT }))
}

/// A refusal: the status and the one-line reason.
type Refusal = (StatusCode, String);

/// A plain file name inside the folder (no separators, no `..`, no hidden files), or why not.
fn inside(dir: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err((StatusCode::FORBIDDEN, format!("'{name}' must be a plain file name inside the background folder")));
    }
    let p = dir.join(name);
    match p.is_file() {
        true => Ok(p),
        false => Err((StatusCode::NOT_FOUND, format!("no file '{name}' in the background folder"))),
    }
}

/// One video decoded at a time: a page full of videos must not take the CPU from the stream.
static VIDEO_DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub(super) async fn thumbnail(AxState(app): AxState<App>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(dir) = app.cfg.background_dir.clone() else {
        return text(StatusCode::NOT_FOUND, "no background folder: start with --background-dir");
    };
    let path = match inside(&dir, &name) {
        Ok(p) => p,
        Err((c, m)) => return text(c, m),
    };
    let ext = ext_of(&path);
    let video = VIDEO_EXT.contains(&ext.as_str());
    if !video && !IMAGE_EXT.contains(&ext.as_str()) {
        return text(StatusCode::NOT_FOUND, format!("'{name}' has no thumbnail (only PNG and JPEG images and videos do)"));
    }
    let _permit = match video {
        true => Some(VIDEO_DECODES.acquire().await),
        false => None,
    };
    let r = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let img = match video {
            true => first_frame(&path)?,
            false => image::open(&path).map_err(|e| e.to_string())?,
        };
        let small = img.thumbnail(THUMB.0, THUMB.1).to_rgb8();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&small).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .await;
    match r {
        Ok(Ok(j)) => ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=60")], j).into_response(),
        Ok(Err(e)) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("cannot decode '{name}': {e}")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A video's first frame.
fn first_frame(path: &Path) -> Result<image::DynamicImage, String> {
    let (w, h, rgba) = crate::source::decode_frames(path, 1)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("the video has no frame")?;
    image::RgbaImage::from_raw(w, h, rgba).map(image::DynamicImage::ImageRgba8).ok_or_else(|| "a frame of the wrong size".into())
}

#[derive(serde::Deserialize)]
pub(super) struct UploadQuery {
    name: Option<String>,
}

/// The stem of what the user called the file, reduced to letters, digits, `-` and `_` (at most 64).
fn sanitised_stem(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let stem = base.rsplit_once('.').map(|(s, _)| s).unwrap_or(base);
    let clean: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    let clean = clean.trim_matches('_').to_string();
    if clean.is_empty() { "upload".into() } else { clean }
}

fn too_large() -> Refusal {
    (StatusCode::PAYLOAD_TOO_LARGE, format!("the file is larger than {} MiB: choose a smaller image", UPLOAD_LIMIT >> 20))
}

/// The first file of a multipart form and the name it was sent under (other fields are ignored).
async fn form_file(req: Request) -> Result<(Bytes, Option<String>), Refusal> {
    let bad = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => (StatusCode::BAD_REQUEST, format!("the form cannot be read ({e}): send the image as a file field")),
    };
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| (e.status(), e.body_text()))?;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let Some(name) = field.file_name().map(str::to_string) else { continue };
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if data.len() + chunk.len() > UPLOAD_LIMIT {
                return Err(too_large());
            }
            data.extend_from_slice(&chunk);
        }
        return Ok((data.into(), Some(name)));
    }
    Err((StatusCode::BAD_REQUEST, "the form has no file: send the image as a file field (FormData.append('file', file))".into()))
}

/// The uploaded bytes and the name they were sent under: a multipart form's first file, or the raw body.
async fn received(q: UploadQuery, req: Request) -> Result<(Bytes, Option<String>), Refusal> {
    let form = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("multipart/form-data"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > UPLOAD_LIMIT + if form { FORM_SLACK } else { 0 }) {
        return Err(too_large());
    }
    if form {
        let (bytes, sent_as) = form_file(req).await?;
        return Ok((bytes, q.name.or(sent_as)));
    }
    let bytes = axum::body::to_bytes(req.into_body(), UPLOAD_LIMIT).await.map_err(|_| too_large())?;
    Ok((bytes, q.name))
}

pub(super) async fn upload(AxState(app): AxState<App>, Query(q): Query<UploadQuery>, req: Request) -> Response {
    let Some(dir) = app.cfg.background_dir.clone() else {
        return text(StatusCode::FORBIDDEN, "uploads need a background folder: start with --background-dir DIR");
    };
    let (bytes, sent_as) = match received(q, req).await {
        Ok(r) => r,
        Err((c, m)) => return text(c, m),
    };
    let ext = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => "png",
        Ok(image::ImageFormat::Jpeg) => "jpg",
        _ => return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not a PNG or JPEG image: only those can be uploaded as backgrounds"),
    };
    let name = format!("{}.{ext}", sanitised_stem(sent_as.as_deref().unwrap_or("upload")));
    let r = tokio::task::spawn_blocking(move || save_upload(&dir, &name, &bytes).map(|_| name)).await;
    match r {
        Ok(Ok(name)) => (StatusCode::CREATED, json(&serde_json::json!({ "name": name }))).into_response(),
        Ok(Err((c, m))) => text(c, m),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Decodes (a broken image is refused, not saved), then writes under a hidden temporary name and links it to
/// its name, which fails if the name is taken: nothing is overwritten.
fn save_upload(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Refusal> {
    if let Err(e) = image::load_from_memory(bytes) {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("the image cannot be decoded ({e}): is the file complete?")));
    }
    let tmp = dir.join(format!(".{name}.partial{}", std::process::id()));
    let io = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write into the background folder: {e}"));
    std::fs::write(&tmp, bytes).map_err(io)?;
    let linked = std::fs::hard_link(&tmp, dir.join(name));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err((StatusCode::CONFLICT, format!("'{name}' already exists in the background folder: rename the file")))
        }
        Err(e) => Err(io(e)),
    }
}
