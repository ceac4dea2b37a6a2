//! Batch conversion of folders: mirroring, completion records, failure isolation, crash safety, shards,
//! reports, identical outputs alone and in a batch.

mod common;
use std::path::{Path, PathBuf};
use common::*;

fn tree(root: &Path) -> PathBuf {
    let i = root.join("in");
    std::fs::create_dir_all(i.join("a/b")).unwrap();
    std::fs::create_dir_all(i.join("c")).unwrap();
    std::fs::copy(sample("carphone_pristine.mp4"), i.join("a/carphone.mp4")).unwrap();
    std::fs::copy(sample("bikes.mp4"), i.join("a/b/bikes.mp4")).unwrap();
    gst_make(&format!(
        "videotestsrc num-buffers=45 pattern=ball ! video/x-raw,width=160,height=120,framerate=15/1 ! x264enc ! matroskamux ! filesink location={}",
        i.join("c/ball.mkv").display()
    ));
    let whole = std::fs::read(sample("bikes.mp4")).unwrap();
    std::fs::write(i.join("c/corrupt.mp4"), &whole[..whole.len() / 3]).unwrap();
    std::fs::write(i.join("notes.txt"), "not video").unwrap();
    std::fs::write(i.join("fake.mov"), "not a video either, despite the name\n".repeat(20)).unwrap();
    i
}

fn report(out: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(out.join("matteflow-report.json")).unwrap()).unwrap()
}

fn status_of<'a>(r: &'a [serde_json::Value], input_end: &str) -> &'a serde_json::Value {
    r.iter().find(|x| x["input"].as_str().unwrap().ends_with(input_end)).unwrap_or_else(|| panic!("{input_end} not in report"))
}

#[test]
fn folder_is_mirrored_failures_isolated_and_second_run_skips() {
    let dir = tempfile::tempdir().unwrap();
    let input = tree(dir.path());
    let out = dir.path().join("out");
    let args = ["batch", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-f", "h264", "--jobs", "2"];
    let r1 = matteflow(&args);
    assert_eq!(r1.status.code(), Some(3), "some failed → exit 3: {}", stderr_of(&r1));
    for (rel, frames) in [("a/carphone.mp4", 120), ("a/b/bikes.mp4", 250), ("c/ball.mp4", 45)] {
        assert_eq!(decode(&out.join(rel)).len(), frames, "{rel}");
    }
    assert!(!out.join("c/corrupt.mp4").exists() && !out.join("fake.mp4").exists() && !out.join("notes.mp4").exists());
    assert_no_partials(&out.join("c"));
    let rep = report(&out);
    assert_eq!(rep.len(), 5, "notes.txt is not a video name and is not in the report");
    assert_eq!(status_of(&rep, "a/carphone.mp4")["status"], "done");
    assert_eq!(status_of(&rep, "a/carphone.mp4")["frames"], 120);
    assert_eq!(status_of(&rep, "c/corrupt.mp4")["status"], "failed");
    assert!(status_of(&rep, "c/corrupt.mp4")["error"].as_str().unwrap().contains("truncated"));
    assert!(status_of(&rep, "fake.mov")["error"].as_str().unwrap().contains("not a video file"));
    let csv = std::fs::read_to_string(out.join("matteflow-report.csv")).unwrap();
    assert!(csv.starts_with("input,output,status,frames,duration_s,wall_s,fps,model,device,error"));
    assert_eq!(csv.lines().count(), 6);
    let err = stderr_of(&r1);
    assert!(err.contains("done             3") && err.contains("failed           2"), "{err}");

    // Second run: every complete output skipped (the failed ones are tried again and fail again).
    let before = std::fs::metadata(out.join("a/b/bikes.mp4")).unwrap().modified().unwrap();
    let r2 = matteflow(&args);
    assert_eq!(r2.status.code(), Some(3));
    let rep = report(&out);
    assert_eq!(rep.iter().filter(|r| r["status"] == "skipped").count(), 3, "{rep:?}");
    assert_eq!(std::fs::metadata(out.join("a/b/bikes.mp4")).unwrap().modified().unwrap(), before);

    // A changed input (new mtime/size) or a damaged output is redone; the record, not existence, decides.
    std::fs::write(out.join("a/carphone.mp4"), b"damaged").unwrap();
    matteflow(&args);
    let rep = report(&out);
    assert_eq!(status_of(&rep, "a/carphone.mp4")["status"], "done");
    assert_eq!(decode(&out.join("a/carphone.mp4")).len(), 120);

    // --dry-run lists, converts nothing.
    let dry = matteflow_ok(&["batch", input.to_str().unwrap(), "-o", dir.path().join("dry").to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("convert") && dry.contains("ignore") && dry.contains("notes.txt"), "{dry}");
    assert!(!dir.path().join("dry").exists());
}

#[test]
fn kill_9_then_rerun_finishes_without_redoing_or_leaving_half_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for k in 0..4 {
        gst_make(&format!(
            "videotestsrc num-buffers=400 pattern={} ! video/x-raw,width=320,height=240,framerate=25/1 ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}",
            ["ball", "smpte", "snow", "pinwheel"][k],
            input.join(format!("clip{k}.mp4")).display()
        ));
    }
    let out = dir.path().join("out");
    let args = ["batch", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-f", "ffv1", "--jobs", "1"];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the first file is recorded complete and the second is being written.
    let done_dir = out.join(".matteflow/done");
    let t = std::time::Instant::now();
    loop {
        let recorded = std::fs::read_dir(&done_dir).map(|d| d.count()).unwrap_or(0);
        let partial = std::fs::read_dir(&out).map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains(".partial"))).unwrap_or(false);
        if recorded >= 1 && partial {
            break;
        }
        assert!(t.elapsed().as_secs() < 120, "batch never got going");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
    let killed_partials = std::fs::read_dir(&out).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".partial")).count();
    assert!(killed_partials >= 1, "the kill should have left a half-written temporary file");

    let r = matteflow(&args);
    assert!(r.status.success(), "{}", stderr_of(&r));
    let rep = report(&out);
    assert!(rep.iter().filter(|r| r["status"] == "skipped").count() >= 1, "the finished file must not be redone: {rep:?}");
    for k in 0..4 {
        assert_eq!(decode(&out.join(format!("clip{k}.mkv"))).len(), 400, "clip{k}");
    }
    assert_no_partials(&out);
}

#[test]
fn shards_cover_every_input_exactly_once_and_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for k in 0..12 {
        std::fs::copy(sample("carphone_pristine.mp4"), input.join(format!("take{k:02}.mp4"))).unwrap();
    }
    let list = |extra: &[&str], env: &[(&str, &str)]| -> Vec<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
            .args(["batch", input.to_str().unwrap(), "-o", dir.path().join("o").to_str().unwrap(), "--dry-run"])
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("convert")).map(String::from).collect()
    };
    let all = list(&[], &[]);
    assert_eq!(all.len(), 12);
    let mut seen: Vec<String> = Vec::new();
    for i in 0..3 {
        let part = list(&["--shard", &format!("{i}/3")], &[]);
        // The same shard from a Slurm array (ids 1..3) and a Kubernetes Indexed Job.
        assert_eq!(part, list(&[], &[("SLURM_ARRAY_TASK_ID", &(i + 1).to_string()), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")]));
        assert_eq!(part, list(&[], &[("JOB_COMPLETION_INDEX", &i.to_string()), ("MATTEFLOW_SHARD_COUNT", "3")]));
        seen.extend(part);
    }
    seen.sort();
    let mut all_sorted = all.clone();
    all_sorted.sort();
    assert_eq!(seen, all_sorted, "shards must partition the inputs");
    let bad = matteflow(&["batch", input.to_str().unwrap(), "-o", "x", "--shard", "3/3"]);
    assert!(!bad.status.success() && stderr_of(&bad).contains("INDEX < COUNT"));
}

#[test]
fn output_is_identical_alone_and_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(sample("carphone_pristine.mp4"), input.join("car.mp4")).unwrap();
    std::fs::copy(sample("bikes.mp4"), input.join("bikes.mp4")).unwrap();
    let alone = dir.path().join("alone.mkv");
    matteflow_ok(&["convert", input.join("car.mp4").to_str().unwrap(), "-o", alone.to_str().unwrap(), "--smooth", "0.5"]);
    let out = dir.path().join("out");
    let r = matteflow(&["batch", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-f", "ffv1", "--jobs", "2", "--smooth", "0.5"]);
    assert!(r.status.success(), "{}", stderr_of(&r));
    let (a, b) = (decode(&alone), decode(&out.join("car.mkv")));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.rgba == y.rgba, "frame differs between alone and batch");
    }
}
