//! CUDA without a GPU: the kernels compile (NVRTC from PyPI, set up by scripts/setup.sh), and asking for a
//! GPU on a machine without one falls back to the CPU with no panic.

mod common;
use common::*;

fn nvrtc_lib_dir() -> std::path::PathBuf {
    root().join(".deps/nvrtc/nvidia/cu13/lib")
}

#[test]
fn kernels_compile_to_ptx_without_a_gpu() {
    assert!(nvrtc_lib_dir().join("libnvrtc.so.13").exists(), "run scripts/setup.sh (installs nvidia-cuda-nvrtc)");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["gpu-check", "--compile-only"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr_of(&out));
    for arch in ["compute_80", "compute_90"] {
        let line = stdout.lines().find(|l| l.contains(arch)).unwrap_or_else(|| panic!("no {arch}: {stdout}"));
        for k in ["preprocess", "upsample_mask", "composite", "motion_diff", "motion_blend"] {
            assert!(line.contains(k), "{k} missing for {arch}: {line}");
        }
    }
}

/// NVRTC only generates PTX; ptxas assembles it for a real GPU, which is where inline PTX (the f16 conversions)
/// and register constraints are checked. Both target GPUs of the kernels: Ampere (sm_80) and Hopper (sm_90).
#[test]
fn kernels_assemble_for_sm80_and_sm90_with_ptxas() {
    let ptxas = root().join(".deps/nvcc/nvidia/cu13/bin/ptxas");
    assert!(ptxas.exists(), "run scripts/setup.sh (installs ptxas from nvidia-cuda-nvcc)");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["gpu-check", "--compile-only", "--ptx-dir", dir.path().to_str().unwrap()])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    for sm in ["80", "90"] {
        let ptx = dir.path().join(format!("kernels-compute_{sm}.ptx"));
        let text = std::fs::read_to_string(&ptx).unwrap();
        assert!(text.contains("cvt.rn.f16.f32") && text.contains("cvt.f32.f16"), "the f16 conversions are missing from {}", ptx.display());
        let cubin = dir.path().join(format!("kernels-sm_{sm}.cubin"));
        let r = std::process::Command::new(&ptxas).args([&format!("-arch=sm_{sm}"), ptx.to_str().unwrap(), "-o", cubin.to_str().unwrap()]).output().unwrap();
        assert!(r.status.success(), "ptxas -arch=sm_{sm}: {}", String::from_utf8_lossy(&r.stderr));
        assert!(std::fs::metadata(&cubin).unwrap().len() > 1000);
        // The window attention kernel keeps a window's 16 × 160 scores per warp in registers: a spill to local
        // memory would cost most of what fusing gains, so ptxas must report none.
        let ptx = dir.path().join(format!("attention-compute_{sm}.ptx"));
        let text = std::fs::read_to_string(&ptx).unwrap();
        assert!(text.contains("mma.sync.aligned.m16n8k16"), "no tensor-core mma in {}", ptx.display());
        let cubin = dir.path().join(format!("attention-sm_{sm}.cubin"));
        let r = std::process::Command::new(&ptxas).args([&format!("-arch=sm_{sm}"), "-v", ptx.to_str().unwrap(), "-o", cubin.to_str().unwrap()]).output().unwrap();
        let log = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "ptxas -arch=sm_{sm}: {log}");
        assert!(log.contains("0 bytes spill stores") && log.contains("0 bytes spill loads"), "sm_{sm}: the attention kernel spills: {log}");
        let ptx = dir.path().join(format!("deform-compute_{sm}.ptx"));
        let cubin = dir.path().join(format!("deform-sm_{sm}.cubin"));
        let r = std::process::Command::new(&ptxas).args([&format!("-arch=sm_{sm}"), "-v", ptx.to_str().unwrap(), "-o", cubin.to_str().unwrap()]).output().unwrap();
        let log = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success() && log.contains("deform_im2col"), "ptxas -arch=sm_{sm} of the deformable im2col kernel: {log}");
        assert!(log.contains("0 bytes spill stores"), "sm_{sm}: the deformable im2col kernel spills: {log}");
    }
}

#[test]
fn missing_nvrtc_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["gpu-check", "--compile-only"])
        .env("LD_LIBRARY_PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("NVRTC") && err.contains("nvidia-cuda-nvrtc"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn asking_for_cuda_without_a_gpu_runs_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = matteflow(&[
        "-v",
        "convert",
        sample("carphone_pristine.mp4").to_str().unwrap(),
        "-o",
        dir.path().join("o.mp4").to_str().unwrap(),
        "--device",
        "cuda",
        "--report",
        report.to_str().unwrap(),
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"));
    assert!(err.contains("CUDA: not in this ONNX Runtime build"), "says why CUDA is not used: {err}");
    // Without -v too: asking for CUDA and not getting it is a warning.
    let quiet = matteflow(&[
        "convert",
        sample("carphone_pristine.mp4").to_str().unwrap(),
        "-o",
        dir.path().join("o2.mp4").to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert!(quiet.status.success());
    assert!(stderr_of(&quiet).contains("--device cuda was asked for, but the model runs on the CPU"), "{}", stderr_of(&quiet));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["provider"], "CPU");
    // And the kernel self-test says there is nothing to run on, without failing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["gpu-check"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no CUDA driver on this machine"));
}

#[test]
fn gpu_paths_without_a_gpu_are_clear_errors() {
    // gpu-bench: no driver, no panic, says what is missing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["gpu-bench", "--batch", "1,4", "--cuda-graph"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no CUDA driver"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // --cuda-stages is no longer behind an environment variable: without a GPU it says why it cannot run.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o"])
        .arg(dir.path().join("o.mp4"))
        .args(["-b", "green", "--cuda-stages"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .env_remove("MATTEFLOW_EXPERIMENTAL_CUDA_STAGES")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the GPU stages need an NVIDIA GPU: use the CPU stages (--stages cpu)"), "{err}");
    assert_flags_work_in("convert", &err);
    assert!(!err.contains("unfinished") && !err.contains("panicked"), "{err}");
    assert!(!dir.path().join("o.mp4").exists(), "no output left behind");
    // The hint works: --stages cpu after --cuda-stages (the later of the two wins).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o"])
        .arg(dir.path().join("o.mp4"))
        .args(["-b", "green", "--cuda-stages", "--stages", "cpu"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(decode(&dir.path().join("o.mp4")).len(), 120);
    // What the GPU stages do not do yet is said before any GPU work (image, video and blurred backgrounds they do).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o"])
        .arg(dir.path().join("b.mp4"))
        .args(["-b", "blur", "-k", "side-by-side", "--cuda-stages"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains("do not handle side-by-side output yet: use the CPU stages (--stages cpu)"), "{err}");
    assert_flags_work_in("convert", &err);
    assert!(!dir.path().join("b.mp4").exists(), "no output left behind");
    // batch --cuda-stages: said once, before any file starts (not once per file), nothing created.
    let out_dir = dir.path().join("batch-out");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["batch", sample("carphone_pristine.mp4").to_str().unwrap(), sample("bikes.mp4").to_str().unwrap(), "-o"])
        .arg(&out_dir)
        .args(["-f", "h264", "--cuda-stages", "--host-decode"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.matches("the GPU stages need an NVIDIA GPU: use the CPU stages (--stages cpu)").count(), 1, "{err}");
    assert_flags_work_in("batch", &err);
    assert!(!err.contains("panicked") && !err.contains("FAILED"), "{err}");
    assert!(!out_dir.exists(), "nothing created");
    // Matte-quality options the GPU stages do not apply are named up front, not silently left out (--smooth and
    // --threshold they apply, so they are not named): for one file and, once, for a batch.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o"])
        .arg(dir.path().join("s.mp4"))
        .args(["-b", "green", "--smooth", "0.6", "--feather", "2", "--fg-estimate", "--cuda-stages"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "the GPU stages do not apply --feather, --fg-estimate yet: use the CPU stages (--stages cpu), which do, or leave out --feather, --fg-estimate"
        ),
        "{err}"
    );
    assert_flags_work_in("convert", &err);
    assert!(!dir.path().join("s.mp4").exists(), "no output left behind");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["batch", sample("carphone_pristine.mp4").to_str().unwrap(), sample("bikes.mp4").to_str().unwrap(), "-o"])
        .arg(&out_dir)
        .args(["-f", "h264", "--refine", "--fg-estimate", "--cuda-stages"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.matches("the GPU stages do not apply --refine, --fg-estimate yet").count(), 1, "{err}");
    assert_flags_work_in("batch", &err);
    assert!(!out_dir.exists(), "nothing created");
}
