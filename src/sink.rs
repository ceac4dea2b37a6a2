//! Sink: RGBA frames from the pipeline are encoded and muxed by GStreamer into the chosen format, written
//! under a temporary name and renamed into place only when the file is complete.
//!
//! ```text
//! appsrc ─ videoconvert ─ <format caps> ─ encoder ─ mux ─ filesink (.name.partial-PID)
//!                     audio (from the source) ─ audioconvert ─ <audio encoder> ─┘
//! ```

use std::path::{Path, PathBuf};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::config::Format;
use crate::error::{Error, Result};

/// The element that pads odd frame sizes to even ones for 4:2:0 H.264 ([`crate::evenpad`]).
pub fn even_pad() -> Result<gst::Element> {
    crate::evenpad::make().map_err(|e| Error::Gst(format!("the padding element cannot be created: {e}")))
}

/// The elements each format needs, so `doctor` can say what is missing.
pub fn required_elements(f: Format) -> &'static [&'static str] {
    match f {
        Format::Prores => &["avenc_prores_ks", "qtmux", "filesink"],
        Format::Png => &["pngenc", "multifilesink"],
        Format::Ffv1 => &["avenc_ffv1", "matroskamux", "filesink", "flacenc"],
        Format::H264 => &["x264enc", "mp4mux", "filesink", "avenc_aac"],
        Format::Vp9 => &["vp9enc", "webmmux", "filesink", "opusenc"],
        Format::PngImage => &["pngenc", "filesink"],
        Format::JpegImage => &["jpegenc", "filesink"],
        Format::WebpImage => &["webpenc", "filesink"],
    }
}

/// Which Debian package provides an element (for error messages).
pub fn package_of(element: &str) -> &'static str {
    match element {
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "avenc_prores_ks" | "avenc_ffv1" | "avenc_aac" => "gstreamer1.0-libav",
        "qtmux" | "mp4mux" | "matroskamux" | "webmmux" | "vp9enc" | "pngenc" | "multifilesink" | "flacenc" => {
            "gstreamer1.0-plugins-good"
        }
        "opusenc" | "videoconvert" | "appsrc" | "appsink" | "uridecodebin" | "audioconvert" => {
            "gstreamer1.0-plugins-base"
        }
        "rtmp2sink" | "h264parse" | "webpenc" => "gstreamer1.0-plugins-bad",
        "jpegenc" => "gstreamer1.0-plugins-good",
        _ => "the GStreamer plugin packages (see `matteflow doctor`)",
    }
}

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name).build().map_err(|_| {
        Error::Gst(format!("element '{name}' is missing: install {} (then run `matteflow doctor`)", package_of(name)))
    })
}

/// The output being written: a temporary name that becomes the real one on `commit`. Dropping it without
/// committing removes the temporary file or folder, so nothing half-written looks complete.
pub struct StagedOutput {
    pub final_path: PathBuf,
    pub temp_path: PathBuf,
    pub is_dir: bool,
    committed: bool,
}

impl StagedOutput {
    /// Checks the destination (exists? writable?) and reserves the temporary name.
    pub fn prepare(output: &Path, format: Format, overwrite: bool) -> Result<Self> {
        let is_dir = format == Format::Png;
        let out_err = |reason: String| Error::Output { path: output.to_path_buf(), reason };
        let trimmed = PathBuf::from(output.to_string_lossy().trim_end_matches('/'));
        let name = trimmed
            .file_name()
            .ok_or_else(|| out_err("has no file name".into()))?
            .to_string_lossy()
            .into_owned();
        let parent = trimmed.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(out_err(format!("{} is not a folder", parent.display()))),
            Err(e) => {
                return Err(out_err(format!(
                    "the folder {} {}; create it first or choose another -o",
                    parent.display(),
                    if e.kind() == std::io::ErrorKind::NotFound { "does not exist".into() } else { format!("cannot be used ({e})") }
                )))
            }
        }
        if trimmed.exists() {
            if !overwrite {
                return Err(out_err(format!("already exists; pass {} to replace it", crate::hint::OVERWRITE.on())));
            }
            if trimmed.is_dir() != is_dir {
                return Err(out_err(format!(
                    "exists and is {}; refusing to replace it with {}",
                    if trimmed.is_dir() { "a folder" } else { "a file" },
                    if is_dir { "a PNG folder" } else { "a file" }
                )));
            }
        }
        let temp_path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        let probe = if is_dir {
            std::fs::create_dir(&temp_path)
        } else {
            std::fs::File::create(&temp_path).map(|_| ())
        };
        probe.map_err(|e| out_err(format!("cannot write in {}: {e}", parent.display())))?;
        Ok(StagedOutput { final_path: trimmed, temp_path, is_dir, committed: false })
    }

    /// Moves the finished output into place (replacing an existing one only when `--overwrite` allowed it).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.is_dir && self.final_path.exists() {
            std::fs::remove_dir_all(&self.final_path)
                .map_err(|e| Error::io(format!("replacing {}", self.final_path.display()), e))?;
        }
        std::fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| Error::io(format!("moving the finished output to {}", self.final_path.display()), e))?;
        self.committed = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for StagedOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = if self.is_dir { std::fs::remove_dir_all(&self.temp_path) } else { std::fs::remove_file(&self.temp_path) };
        }
    }
}

/// The disk a path is on, for "disk full" messages: "the file system mounted at /mnt/x (ext4), 0 bytes free".
pub fn disk_of(path: &Path) -> String {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    // The longest mount point the folder is under; /proc/mounts writes spaces in names as \040.
    let mount = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.get(1)?.replace("\\040", " "), f.get(2)?.to_string()))
        })
        .filter(|(m, _)| dir.starts_with(m))
        .max_by_key(|(m, _)| m.len());
    match mount {
        Some((m, fs)) => format!("no space left on the file system mounted at {m} ({fs}); free some space there or write elsewhere"),
        None => format!("no space left on the disk holding {}; free some space there or write elsewhere", dir.display()),
    }
}

/// The audio elements for a container; empty (audio dropped, with a warning) when one is not installed, so
/// video-only work never fails for want of an audio encoder.
fn audio_chain(names: &[&str], raw_format: Option<&str>) -> Vec<gst::Element> {
    let mut v = Vec::new();
    for n in names {
        match make(n) {
            Ok(e) => v.push(e),
            Err(e) => {
                tracing::warn!("audio will not be carried: {e}");
                return Vec::new();
            }
        }
    }
    if let Some(f) = raw_format {
        match gst::ElementFactory::make("capsfilter")
            .property("caps", gst::Caps::builder("audio/x-raw").field("format", f).build())
            .build()
        {
            Ok(c) => v.push(c),
            Err(_) => return Vec::new(),
        }
    }
    v
}

/// The encoding half of the pipeline.
pub struct EncodeBranch {
    pub appsrc: gst_app::AppSrc,
    /// Where an audio pad from the source links, if this format carries audio.
    pub audio_sink: Option<gst::Pad>,
}

/// The H.264 encoder: NVENC (`nvh264enc`, GStreamer's nvcodec; registered only where the GPU has an NVENC
/// unit) when `gpu` runs are asked for and it is there, else x264. `has` says whether an element exists.
pub fn h264_encoder(gpu: bool, has: impl Fn(&str) -> bool) -> &'static str {
    if gpu && has("nvh264enc") {
        "nvh264enc"
    } else {
        "x264enc"
    }
}

/// Builds appsrc → encoder → mux → file for `format`, writing to `location`. `gpu`: the run uses an NVIDIA GPU,
/// so H.264 goes to NVENC where the GPU has one.
pub fn build(pipeline: &gst::Pipeline, format: Format, location: &Path, frame_bytes: u64, gpu: bool) -> Result<EncodeBranch> {
    let appsrc = gst_app::AppSrc::builder()
        .format(gst::Format::Time)
        .is_live(false)
        .block(true)
        // Hold about three frames: stages overlap, memory stays bounded.
        .max_bytes(frame_bytes * 3)
        .build();
    pipeline.add(&appsrc)?;
    let (head, audio_sink) = encoder_chain(pipeline, format, location, gpu)?;
    appsrc.link(&head)?;
    Ok(EncodeBranch { appsrc, audio_sink })
}

/// Builds videoconvert → encoder → mux → file for `format` inside `pipeline` and returns its head (to link
/// raw video to) and, when the container carries audio, the pad an audio stream links to.
pub fn encoder_chain(pipeline: &impl IsA<gst::Bin>, format: Format, location: &Path, gpu: bool) -> Result<(gst::Element, Option<gst::Pad>)> {
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
    let caps = |fmt: &str| -> Result<gst::Element> {
        Ok(gst::ElementFactory::make("capsfilter")
            .property("caps", gst::Caps::builder("video/x-raw").field("format", fmt).build())
            .build()?)
    };
    let loc = location.display().to_string();
    let mut chain: Vec<gst::Element> = vec![convert];
    let (mux, audio_enc): (Option<gst::Element>, Vec<gst::Element>) = match format {
        Format::Prores => {
            chain.push(caps("A444_10LE")?);
            let enc = make("avenc_prores_ks")?;
            enc.set_property_from_str("profile", "4444");
            chain.push(enc);
            let audio = audio_chain(&["audioconvert"], Some("S16LE"));
            (Some(make("qtmux")?), audio)
        }
        Format::Ffv1 => {
            chain.push(caps("BGRA")?);
            chain.push(make("avenc_ffv1")?);
            (Some(make("matroskamux")?), audio_chain(&["audioconvert", "flacenc"], None))
        }
        Format::H264 => {
            // 4:2:0 H.264 takes only even sizes: odd frames are padded (the element passes even ones through).
            chain.insert(0, even_pad()?);
            let name = h264_encoder(gpu, |e| gst::ElementFactory::find(e).is_some());
            if name == "nvh264enc" {
                // NVENC at constant QP 20, as x264 below (NV12 is what every NVENC generation takes).
                chain.push(caps("NV12")?);
                let enc = make(name)?;
                if enc.find_property("rc-mode").is_some() {
                    enc.set_property_from_str("rc-mode", "constqp");
                }
                if enc.find_property("qp-const").is_some() {
                    enc.set_property_from_str("qp-const", "20");
                }
                tracing::info!("H.264 is encoded on the GPU (NVENC, nvh264enc)");
                chain.push(enc);
                // nvh264enc gives byte-stream; the MP4 muxer wants avc.
                chain.push(make("h264parse")?);
            } else {
                if gpu {
                    tracing::info!("H.264 is encoded by x264 on the CPU: this GPU has no NVENC (nvh264enc is not registered)");
                }
                chain.push(caps("I420")?);
                let enc = make("x264enc")?;
                enc.set_property_from_str("speed-preset", "veryfast");
                enc.set_property_from_str("pass", "quant");
                enc.set_property("quantizer", 20u32);
                chain.push(enc);
            }
            (Some(make("mp4mux")?), audio_chain(&["audioconvert", "audioresample", "avenc_aac"], None))
        }
        Format::Vp9 => {
            chain.push(caps("I420")?);
            let enc = make("vp9enc")?;
            enc.set_property("deadline", 1i64);
            enc.set_property("cpu-used", 8i32);
            enc.set_property("row-mt", true);
            // Without this, libvpx's alt-ref lookahead loses frames at the end of the stream (seen: 118 of 120).
            enc.set_property("lag-in-frames", 0i32);
            enc.set_property_from_str("end-usage", "cq");
            enc.set_property("target-bitrate", 20_000_000i32); // a cap; quality comes from cq-level
            enc.set_property("cq-level", 30i32);
            chain.push(enc);
            (Some(make("webmmux")?), audio_chain(&["audioconvert", "audioresample", "opusenc"], None))
        }
        Format::Png => {
            chain.push(caps("RGBA")?);
            let enc = make("pngenc")?;
            enc.set_property("compression-level", 1u32);
            chain.push(enc);
            let sink = make("multifilesink")?;
            sink.set_property("location", format!("{loc}/frame_%06d.png"));
            sink.set_property("sync", false);
            // The encoder only sees data once frames have been pulled from the appsink, which only hands
            // out samples in PLAYING: a sink taking part in preroll would deadlock the state change.
            sink.set_property("async", false);
            chain.push(sink);
            (None, vec![])
        }
        Format::PngImage | Format::JpegImage | Format::WebpImage => {
            chain.extend(image_encoder(format)?);
            let sink = make("filesink")?;
            sink.set_property("location", &loc);
            sink.set_property("sync", false);
            sink.set_property("async", false); // see multifilesink above
            chain.push(sink);
            (None, vec![])
        }
    };
    pipeline.add_many(&chain)?;
    gst::Element::link_many(&chain)?;
    let mut audio_sink = None;
    if let Some(mux) = mux {
        let filesink = make("filesink")?;
        filesink.set_property("location", &loc);
        filesink.set_property("sync", false);
        filesink.set_property("async", false); // see multifilesink above
        pipeline.add_many([&mux, &filesink])?;
        chain.last().unwrap().link(&mux)?;
        mux.link(&filesink)?;
        if !audio_enc.is_empty() {
            // The audio branch is only linked if the input has audio; an unused request pad would make
            // the muxer wait for data that never comes, so it is requested on demand in `link_audio`.
            let queue = gst::ElementFactory::make("queue")
                .property("max-size-buffers", 0u32)
                .property("max-size-bytes", 0u32)
                .property("max-size-time", 10 * gst::ClockTime::SECOND.nseconds())
                .build()?;
            let mut achain = vec![queue];
            achain.extend(audio_enc);
            pipeline.add_many(&achain)?;
            gst::Element::link_many(&achain)?;
            audio_sink = achain[0].static_pad("sink");
            let tail = achain.last().unwrap().clone();
            let mux_weak = mux.downgrade();
            // Link to the muxer once the head gets linked (i.e. the input has audio).
            achain[0].static_pad("sink").unwrap().connect_linked(move |_, _| {
                if let Some(mux) = mux_weak.upgrade() {
                    if let Err(e) = tail.link(&mux) {
                        gst::warning!(gst::CAT_DEFAULT, "audio cannot be muxed: {e}");
                    }
                }
            });
        }
    }
    Ok((chain[0].clone(), audio_sink))
}

/// The encoder of a one-image output (its raw format forced where alpha must survive).
fn image_encoder(format: Format) -> Result<Vec<gst::Element>> {
    let rgba = || -> Result<gst::Element> {
        Ok(gst::ElementFactory::make("capsfilter")
            .property("caps", gst::Caps::builder("video/x-raw").field("format", "RGBA").build())
            .build()?)
    };
    Ok(match format {
        Format::PngImage => vec![rgba()?, make("pngenc")?],
        Format::WebpImage => vec![rgba()?, make("webpenc")?],
        _ => {
            let enc = make("jpegenc")?;
            enc.set_property("quality", 92i32);
            vec![enc]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::h264_encoder;

    #[test]
    fn nvenc_only_for_gpu_runs_where_the_gpu_has_it() {
        assert_eq!(h264_encoder(true, |e| e == "nvh264enc"), "nvh264enc");
        assert_eq!(h264_encoder(false, |e| e == "nvh264enc"), "x264enc", "CPU runs keep x264");
        assert_eq!(h264_encoder(true, |_| false), "x264enc", "no NVENC unit (H200): x264");
    }
}
