//! The browser control panel against a running `matteflow live --input testsrc`: every refusal of the
//! endpoint's checks over plain HTTP, and the page itself in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over the WebDriver protocol).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const W: u32 = 320;
const H: u32 = 240;

/// A small PNG of one colour.
fn png(path: &Path, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(32, 18, image::Rgb(rgb)).save(path).unwrap();
}

/// Starts `matteflow live` on the ball pattern (mask = red channel: the white ball is kept, the black
/// background replaced) and returns it with its stderr and the control address it printed.
fn start_live(dir: &Path, bgdir: &Path, extra: &[&str]) -> (KillOnDrop, Arc<Mutex<String>>, String) {
    let manifest = known_answer_model(dir, 0, 64, 64, "NCHW", "none", "stretch");
    let mut c = Command::new(env!("CARGO_BIN_EXE_matteflow"));
    c.args(["live", "--input", "testsrc:ball", "--size", &format!("{W}x{H}"), "--fps", "30"]);
    c.args(["--model", manifest.to_str().unwrap(), "--background", "green", "--smooth", "0", "--stats-interval", "0"]);
    c.args(["--background-dir", bgdir.to_str().unwrap()]);
    c.args(extra);
    let mut child = c.stderr(Stdio::piped()).spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(err);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
            l2.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let t = Instant::now();
    let addr = loop {
        if let Some(l) = log.lock().unwrap().lines().find(|l| l.contains("control on http://")) {
            break l.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no control address printed: {}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    (KillOnDrop(child), log, addr)
}

/// One HTTP/1.1 request with extra header lines; returns the status and body (bytes).
fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("content-length:")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        head.push_str(&format!("{h}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body); // a refused upload may be answered (and closed) before it is all sent
    // Read to the declared length: chromedriver keeps the connection open despite `Connection: close`.
    let (mut resp, mut chunk) = (Vec::new(), [0u8; 65536]);
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        resp.extend_from_slice(&chunk[..n]);
        let Some(at) = find(&resp, b"\r\n\r\n").map(|i| i + 4) else {
            if n == 0 { break } else { continue }
        };
        let head = String::from_utf8_lossy(&resp[..at]).to_ascii_lowercase();
        let len = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse::<usize>().ok());
        if n == 0 || len.is_some_and(|l| resp.len() >= at + l) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let code = text.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0);
    let at = find(&resp, b"\r\n\r\n").map(|i| i + 4).unwrap_or(resp.len());
    (code, resp[at..].to_vec())
}

fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let (c, b) = request(addr, method, path, headers, body.as_bytes());
    (c, String::from_utf8_lossy(&b).into_owned())
}

/// The first JPEG of the MJPEG preview (within 10 s).
fn first_preview_jpeg(addr: &str, query: &str) -> image::RgbImage {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /preview.mjpg{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the preview stream closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let (Some(a), Some(b)) = (find(&buf, &[0xff, 0xd8]), find(&buf, &[0xff, 0xd9])) else { continue };
        if b > a {
            return image::load_from_memory(&buf[a..b + 2]).unwrap().to_rgb8();
        }
    }
    panic!("no JPEG in the preview within 10 s");
}

/// A short H.264 clip of one colour (videotestsrc's `red`, `blue`, …) in MP4.
fn clip(path: &Path, pattern: &str) {
    gst_make(&format!(
        "videotestsrc num-buffers=15 pattern={pattern} ! video/x-raw,width=320,height=180,framerate=15/1 ! x264enc ! mp4mux ! filesink location={}",
        path.display()
    ));
}

/// A multipart form (what a browser's FormData sends) with one file field.
fn form(filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----matteflowtestboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("Content-Type: multipart/form-data; boundary={boundary}"), body)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[test]
fn every_refusal_of_the_control_endpoint() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bgdir = dir.path().join("bg");
    std::fs::create_dir(&bgdir).unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    png(&bgdir.join("red.png"), [250, 10, 10]);
    clip(&bgdir.join("clip.mp4"), "blue");
    std::fs::write(bgdir.join("broken.mp4"), b"not a video").unwrap();
    std::fs::write(dir.path().join("secret.png"), b"not yours").unwrap();
    let (_live, log, addr) = start_live(dir.path(), &bgdir, &["--control", "127.0.0.1:0", "--output", &out("a.mkv"), "--duration", "30"]);
    let a = addr.as_str();

    // The page and the preview are served on loopback without a token.
    let (c, page) = http(a, "GET", "/", &[], "");
    assert!(c == 200 && page.contains("<canvas") && !page.contains("http://") && !page.contains("https://"), "{c} {page}");
    let frame = first_preview_jpeg(a, "");
    assert!(frame.width() <= 480 && frame.width() > 0, "{}x{}", frame.width(), frame.height());
    // No state change on GET.
    assert_eq!(http(a, "GET", "/pause", &[], "").0, 405);
    // DNS rebinding: a foreign Host on loopback.
    let (c, b) = http(a, "GET", "/status", &["Host: attacker.example:80"], "");
    assert!(c == 403 && b.contains("attacker.example"), "{c} {b}");
    // Cross-origin changes, by Origin and by Sec-Fetch-Site.
    let (c, b) = http(a, "POST", "/background", &["Origin: http://attacker.example"], "blue");
    assert!(c == 403 && b.contains("origin"), "{c} {b}");
    assert_eq!(http(a, "POST", "/pause", &["Sec-Fetch-Site: cross-site"], "").0, 403);
    let own = format!("Origin: http://{a}");
    assert_eq!(http(a, "POST", "/background", &[&own], "blue").0, 200);
    // Thumbnails only of plain names inside the folder.
    assert_eq!(http(a, "GET", "/backgrounds/..%2Fsecret.png", &[], "").0, 403);
    assert_eq!(http(a, "GET", "/backgrounds/nosuch.png", &[], "").0, 404);
    let (c, thumb) = request(a, "GET", "/backgrounds/red.png", &[], b"");
    assert!(c == 200 && image::load_from_memory(&thumb).is_ok());
    // A video's thumbnail is its first frame; a file that does not decode says so.
    let (c, thumb) = request(a, "GET", "/backgrounds/clip.mp4", &[], b"");
    assert_eq!(c, 200, "{}", String::from_utf8_lossy(&thumb));
    let thumb = image::load_from_memory(&thumb).unwrap().to_rgb8();
    let blue = thumb.pixels().filter(|p| p[2] > 200 && p[0] < 60 && p[1] < 60).count();
    assert!(thumb.width() == 160 && blue * 10 >= thumb.pixels().len() * 9, "{}x{}, {blue} blue", thumb.width(), thumb.height());
    let (c, b) = http(a, "GET", "/backgrounds/broken.mp4", &[], "");
    assert!(c == 422 && b.contains("cannot decode 'broken.mp4'"), "{c} {b}");
    // Uploads: too large, not an image (by content, whatever the name), broken, then a good one whose name
    // is sanitised into the folder, and the same name again.
    // (Refused on its declared length, before the body is read: the body is not sent.)
    let (c, b) = http(a, "POST", "/backgrounds?name=big.png", &["Content-Length: 16777217"], "");
    assert!(c == 413 && b.contains("16 MiB"), "{c} {b}");
    let (c, b) = http(a, "POST", "/backgrounds?name=x.png", &[], "#!/bin/sh\necho hi\n");
    assert!(c == 415 && b.contains("PNG or JPEG"), "{c} {b}");
    let mut good = Vec::new();
    image::RgbImage::from_pixel(16, 9, image::Rgb([1, 2, 3])).write_to(&mut std::io::Cursor::new(&mut good), image::ImageFormat::Png).unwrap();
    let (c, b) = request(a, "POST", "/backgrounds?name=cut.png", &[], &good[..good.len() / 2]);
    assert!(c == 422 && String::from_utf8_lossy(&b).contains("cannot be decoded"), "{c}");
    let (c, b) = request(a, "POST", "/backgrounds?name=..%2F..%2Fevil%20name!.sh", &[], &good);
    assert_eq!((c, String::from_utf8_lossy(&b).trim()), (201, "{\"name\":\"evil_name.png\"}"));
    assert!(bgdir.join("evil_name.png").is_file() && !dir.path().join("evil_name.png").exists());
    assert_eq!(request(a, "POST", "/backgrounds?name=evil_name.png", &[], &good).0, 409);
    // The same as a multipart form (the page's FormData): the file field's name is sanitised, other fields are
    // ignored; a form without a file, a file that is not an image and a form too large are refused.
    let (ct, body) = form("../form shot!.png", &good);
    let (c, b) = request(a, "POST", "/backgrounds", &[&ct], &body);
    assert_eq!((c, String::from_utf8_lossy(&b).trim()), (201, "{\"name\":\"form_shot.png\"}"));
    assert!(bgdir.join("form_shot.png").is_file());
    let (ct, body) = form("x.png", b"#!/bin/sh\n");
    let (c, b) = request(a, "POST", "/backgrounds", &[&ct], &body);
    assert!(c == 415 && String::from_utf8_lossy(&b).contains("PNG or JPEG"), "{c}");
    let no_file = b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--B--\r\n";
    let (c, b) = request(a, "POST", "/backgrounds", &["Content-Type: multipart/form-data; boundary=B"], no_file);
    assert!(c == 400 && String::from_utf8_lossy(&b).contains("has no file"), "{c} {}", String::from_utf8_lossy(&b));
    let (c, b) = http(a, "POST", "/backgrounds", &["Content-Type: multipart/form-data; boundary=B", "Content-Length: 18000000"], "");
    assert!(c == 413 && b.contains("16 MiB"), "{c} {b}");
    // A form whose file outgrows the limit while it is read (its declared length within the form's slack).
    let (ct, body) = form("big.png", &vec![0x89; (16 << 20) + 1000]);
    let (c, b) = request(a, "POST", "/backgrounds", &[&ct], &body);
    assert!(c == 413 && String::from_utf8_lossy(&b).contains("16 MiB"), "{c} {}", String::from_utf8_lossy(&b));
    let (_, list) = http(a, "GET", "/backgrounds", &[], "");
    assert!(list.contains("\"red.png\"") && list.contains("\"evil_name.png\"") && !list.contains(".partial"), "{list}");
    assert!(list.contains("{\"kind\":\"video\",\"name\":\"clip.mp4\"}"), "{list}");
    let names: Vec<String> = std::fs::read_dir(&bgdir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.len() == 5, "temporary files left in the folder: {names:?}");
    assert!(log.lock().unwrap().is_empty() || !log.lock().unwrap().contains("panicked"));
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bgdir = dir.path().join("bg");
    std::fs::create_dir(&bgdir).unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    // Generated and printed once.
    let (live, log, _) = start_live(dir.path(), &bgdir, &["--control", &listen, "--output", &out("a.mkv"), "--duration", "30"]);
    let a = format!("127.0.0.1:{port}");
    let t = Instant::now();
    let token = loop {
        let l = log.lock().unwrap().clone();
        if let Some(i) = l.find("?token=") {
            break l[i + 7..].split_whitespace().next().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no token printed: {l}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(log.lock().unwrap().matches(&token).count(), 2, "printed once (in the message and the address)");
    for (m, p) in [("GET", "/"), ("GET", "/status"), ("GET", "/metrics"), ("GET", "/preview.mjpg"), ("GET", "/stats"), ("POST", "/pause")] {
        let (c, b) = http(&a, m, p, &[], "");
        assert!(c == 401 && b.contains("token"), "{m} {p}: {c} {b}");
        assert_eq!(http(&a, m, p, &["Authorization: Bearer wrong"], "").0, 401, "{m} {p}");
    }
    assert_eq!(http(&a, "GET", &format!("/status?token={token}x"), &[], "").0, 401);
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(http(&a, "GET", "/status", &[&bearer], "").0, 200);
    assert_eq!(http(&a, "POST", "/pause", &[&bearer], "").0, 200);
    assert_eq!(http(&a, "GET", &format!("/?token={token}"), &[], "").0, 200);
    let frame = first_preview_jpeg(&a, &format!("?token={token}"));
    assert!(frame.width() > 0);
    drop(live);
    // A given token is used as given.
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let (_live, _, _) = start_live(dir.path(), &bgdir, &["--control", &listen, "--control-token", "s3cret", "--output", &out("b.mkv"), "--duration", "30"]);
    let a = format!("127.0.0.1:{port}");
    assert_eq!(http(&a, "GET", "/status", &[], "").0, 401);
    assert_eq!(http(&a, "GET", "/status?token=s3cret", &[], "").0, 200);
}

/// chromedriver on a free port, killed on drop, and a WebDriver session with headless Chromium.
struct Browser {
    _driver: KillOnDrop,
    base: String,
    session: String,
}

fn webdriver(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let b = body.map(|v| v.to_string()).unwrap_or_default();
    let (c, text) = http(base, method, path, &["Content-Type: application/json"], &b);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("WebDriver {method} {path}: {c} {text}"));
    assert_eq!(c, 200, "WebDriver {method} {path}: {v}");
    v["value"].clone()
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver not found: run scripts/setup.sh (it installs chromium and chromium-driver)");
        let driver = KillOnDrop(driver);
        let base = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while TcpStream::connect(&base).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "chromedriver did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"];
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": args}}}});
        let v = webdriver(&base, "POST", "/session", Some(caps));
        let session = v["sessionId"].as_str().unwrap().to_string();
        Browser { _driver: driver, base, session }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        webdriver(&self.base, method, &format!("/session/{}{path}", self.session), body)
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(serde_json::json!({"using": "css selector", "value": css})));
        v.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string()
    }

    fn script(&self, js: &str) -> serde_json::Value {
        self.cmd("POST", "/execute/sync", Some(serde_json::json!({"script": js, "args": []})))
    }

    /// Polls a script until it returns true.
    fn wait_for(&self, js: &str, limit: Duration) {
        let t = Instant::now();
        while self.script(js) != serde_json::json!(true) {
            assert!(t.elapsed() < limit, "waited {limit:?} for: {js}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(&self.base, "DELETE", &format!("/session/{}", self.session), &[], "");
    }
}

fn bg_pixel(f: &Decoded) -> [u8; 3] {
    let i = ((10 * f.width + 10) * 4) as usize;
    [f.rgba[i], f.rgba[i + 1], f.rgba[i + 2]]
}

#[test]
fn the_page_in_headless_chromium() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bgdir = dir.path().join("bg");
    std::fs::create_dir(&bgdir).unwrap();
    png(&bgdir.join("red.png"), [250, 10, 10]);
    clip(&bgdir.join("clip.mp4"), "blue");
    let bad: PathBuf = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let rec = dir.path().join("rec.mkv");
    // The browser first: Chromium can take many seconds to start on a busy machine.
    let b = Browser::start();
    let (mut live, log, addr) = start_live(dir.path(), &bgdir, &["--control", "127.0.0.1:0", "--output", rec.to_str().unwrap(), "--duration", "60"]);
    assert!(TcpStream::connect(&addr).is_ok(), "live is not listening on {addr}: {}", log.lock().unwrap());
    b.cmd("POST", "/url", Some(serde_json::json!({"url": format!("http://{addr}/")})));
    // The preview shows frames, and they change (the ball moves).
    b.wait_for("const i = document.getElementById('preview'); return i.naturalWidth > 0;", Duration::from_secs(15));
    // Two looks at the preview 0.7 s apart differ (drawn into a canvas by the page's own script context).
    let look = "const i = document.getElementById('preview'); const c = document.createElement('canvas'); \
                c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0); \
                const d = g.getImageData(0, 0, c.width, c.height).data; let h = 0; \
                for (let k = 0; k < d.length; k += 4) h = (h * 31 + d[k] + 7 * d[k + 1]) >>> 0; return h;";
    let first = b.script(look);
    std::thread::sleep(Duration::from_millis(700));
    let second = b.script(look);
    assert_ne!(first, second, "the preview did not change in 0.7 s");
    // The chart draws once two points of history exist (a point every 2 s).
    b.wait_for("return Number(document.body.dataset.points || 0) >= 2;", Duration::from_secs(10));
    let drawn = "const c = document.getElementById('chart'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                 let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 120) n++; return n;";
    let blue_pixels = b.script(drawn).as_u64().unwrap();
    assert!(blue_pixels > 50, "the glass-to-glass line is not drawn ({blue_pixels} pixels)");
    // The original beside the output, on request: the input before matting (the white ball on black) where the
    // output has the green background. It is streamed only while shown.
    let toggle = b.element("#show-original");
    b.cmd("POST", &format!("/element/{toggle}/click"), Some(serde_json::json!({})));
    b.wait_for("const i = document.getElementById('original'); return !!i && i.naturalWidth > 0;", Duration::from_secs(15));
    let shares = |id: &str| {
        let js = format!(
            "const i = document.getElementById('{id}'); const c = document.createElement('canvas'); \
             c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0); \
             const d = g.getImageData(0, 0, c.width, c.height).data; let green = 0, black = 0; \
             for (let k = 0; k < d.length; k += 4) {{ \
               if (d[k] < 80 && d[k + 1] > 120 && d[k + 2] < 120) green++; \
               if (d[k] < 40 && d[k + 1] < 40 && d[k + 2] < 40) black++; }} \
             const n = d.length / 4; return [green / n, black / n, c.width];"
        );
        let v = b.script(&js);
        (v[0].as_f64().unwrap(), v[1].as_f64().unwrap(), v[2].as_u64().unwrap())
    };
    let (out_green, out_black, out_w) = shares("preview");
    let (orig_green, orig_black, orig_w) = shares("original");
    assert!(out_green > 0.6 && out_black < 0.1, "output preview: {out_green:.2} green, {out_black:.2} black");
    assert!(orig_black > 0.6 && orig_green < 0.05, "original preview: {orig_green:.2} green, {orig_black:.2} black");
    assert_eq!((out_w, orig_w), (W as u64, W as u64), "both previews at the frame's width (under 480 px)");
    assert_eq!(b.script("return document.getElementById('show-original').getAttribute('aria-pressed');"), "true");
    let watchers = || -> serde_json::Value {
        let (c, st) = http(&addr, "GET", "/status", &[], "");
        assert_eq!(c, 200, "{st}");
        serde_json::from_str::<serde_json::Value>(&st).unwrap()["preview_watchers"].clone()
    };
    assert_eq!(watchers(), serde_json::json!({"output": 1, "original": 1}));
    b.cmd("POST", &format!("/element/{toggle}/click"), Some(serde_json::json!({})));
    b.wait_for("return document.getElementById('original') === null;", Duration::from_secs(5));
    let t = Instant::now();
    while watchers()["original"] != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the original's stream is still open 10 s after hiding it: {}", watchers());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Videos have thumbnails too (their first frame).
    b.wait_for("const i = document.querySelector(\"#thumbs button[data-name='clip.mp4'] img\"); return !!i && i.complete && i.naturalWidth === 160;", Duration::from_secs(15));
    // A bad upload (sent as the page sends every upload: a FormData form) shows the server's reason.
    let input = b.element("#upload");
    b.cmd("POST", &format!("/element/{input}/value"), Some(serde_json::json!({"text": bad.to_str().unwrap()})));
    b.wait_for("return document.getElementById('msg').textContent.includes('not a PNG or JPEG');", Duration::from_secs(10));
    assert_eq!(b.script("return document.getElementById('msg').className;"), "error");
    // Clicking a background changes the output: the recording turns from green to red.
    let thumb = b.element("#thumbs button[data-name='red.png']");
    b.cmd("POST", &format!("/element/{thumb}/click"), Some(serde_json::json!({})));
    b.wait_for("return document.getElementById('msg').textContent.includes('red.png');", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child, which finishes its recording on SIGINT.
    unsafe { libc::kill(live.0.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    while live.0.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(40), "live did not stop: {}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let frames = decode(&rec);
    assert!(frames.len() > 100, "{} frames recorded", frames.len());
    let near = |p: [u8; 3], q: [u8; 3]| p.iter().zip(q).all(|(a, b)| (*a as i32 - b as i32).abs() <= 8);
    // (The ball may pass over the sampled corner now and then.)
    let first_red = frames.iter().position(|f| near(bg_pixel(f), [250, 10, 10])).expect("the red background never appeared");
    let green_before = frames[..first_red].iter().filter(|f| near(bg_pixel(f), [0, 177, 64])).count();
    assert!(green_before * 10 >= first_red * 9 && first_red > 0, "green before the click: {green_before} of {first_red}");
    assert!(!frames[first_red..].iter().any(|f| near(bg_pixel(f), [0, 177, 64])), "green again after the click");
    let red_after = frames[first_red..].iter().filter(|f| near(bg_pixel(f), [250, 10, 10])).count();
    assert!(red_after * 10 >= (frames.len() - first_red) * 9, "red after the click: {red_after} of {}", frames.len() - first_red);
}

/// The page's numbers for the outputs and the machine, against a real nginx-rtmp: the RTMP output shows
/// "connected" with the bitrate of the bytes sent (near the encoder's), "reconnecting" once the server is gone and
/// "connected" again once it is back; its stream key is not shown. The GPU line says "no GPU" on a machine
/// without an NVIDIA driver.
#[test]
fn rtmp_state_and_gpu_use_in_the_page() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bgdir = dir.path().join("bg");
    std::fs::create_dir(&bgdir).unwrap();
    let mut nginx = Nginx::start(dir.path(), free_port());
    let url = nginx.url("panelkey");
    let b = Browser::start();
    let args = ["--control", "127.0.0.1:0", "--output", &url, "--bitrate", "1500", "--rtmp-retry", "1", "--duration", "90"];
    let (_live, log, addr) = start_live(dir.path(), &bgdir, &args);
    b.cmd("POST", "/url", Some(serde_json::json!({"url": format!("http://{addr}/")})));
    let rtmp = "const d = document.querySelector(\"#numbers dd[data-k='rtmp0']\"); if (!d) return false; \
                const kbps = parseFloat(d.textContent.split('·')[1]);";
    // x264 is CBR with filler at 1500 kbit/s; FLV adds little. (The bitrate is over the last 4 s: it settles
    // a few seconds after the connection.)
    b.wait_for(
        &format!("{rtmp} return d.textContent.startsWith('connected') && kbps > 1200 && kbps < 2000;"),
        Duration::from_secs(30),
    );
    let numbers = b.script("return document.getElementById('numbers').textContent;");
    let numbers = numbers.as_str().unwrap();
    assert!(numbers.contains("RTMP rtmp://127.0.0.1") && !numbers.contains("panelkey"), "the stream key is shown: {numbers}");
    if std::path::Path::new("/dev/nvidiactl").exists() {
        b.wait_for("const d = document.querySelector(\"#numbers dd[data-k='gpu0']\"); return !!d && d.textContent.includes('% busy');", Duration::from_secs(10));
    } else {
        let gpu = b.script("const d = document.querySelector(\"#numbers dd[data-k='gpu']\"); return d && d.textContent;");
        assert_eq!(gpu, "no GPU", "{numbers}");
    }
    nginx.kill();
    b.wait_for(&format!("{rtmp} return d.textContent.startsWith('reconnecting');"), Duration::from_secs(20));
    nginx.spawn();
    b.wait_for(&format!("{rtmp} return d.textContent.startsWith('connected') && kbps > 0;"), Duration::from_secs(30));
    assert!(!log.lock().unwrap().contains("panicked"), "{}", log.lock().unwrap());
}
