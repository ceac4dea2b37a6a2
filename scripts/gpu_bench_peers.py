#!/usr/bin/env python3
"""Peer measurements for the GPU benchmark (docs/BENCHMARKS.md): BiRefNet built from the official repository
with random weights, timed in PyTorch (eager fp32 / fp16, batch 1 and N, optionally torch.compile), and
exported to ONNX for matteflow and ONNX Runtime (fp32, plus an fp16 variant with fp32 inputs and outputs).

This file holds none of BiRefNet's code: it imports the repository from the path given with --repo (a
checkout of github.com/ZhengPeng7/BiRefNet, kept out of this repository), and the exported files go to
--models (also outside the repository). Run on the GPU machine, e.g. through scripts/gpu-bench.sh:

    python3 scripts/gpu_bench_peers.py --repo .gpu/birefnet --variant swin_v1_l --models /tmp/models \
        --out $OUT --export --fp16
"""
import argparse
import json
import os
import statistics
import sys
import time
import types

import torch

# Channels of the backbone's four stages (from the BiRefNet paper's configuration): the repository's Config
# picks its backbone by list index, so the variant is set after its constructor.
LATERAL = {"swin_v1_l": [1536, 768, 384, 192], "swin_v1_t": [768, 384, 192, 96]}
GFLOP = {"swin_v1_l": 2362.0, "swin_v1_t": 469.0}  # per 1024² frame (counted for docs/BENCHMARKS.md)
NAMES = {"swin_v1_l": "birefnet-general", "swin_v1_t": "birefnet-lite"}


def load_birefnet(repo, variant):
    sys.path.insert(0, os.path.abspath(repo))
    # kornia is imported by the model file but only used in training; it is not installed on the GPU machine.
    if "kornia" not in sys.modules:
        k = types.ModuleType("kornia")
        k.filters = types.ModuleType("kornia.filters")
        k.filters.laplacian = lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("training only"))
        sys.modules["kornia"], sys.modules["kornia.filters"] = k, k.filters
    import config as cfg_mod

    orig = cfg_mod.Config.__init__

    def patched(self):
        orig(self)
        self.bb = variant
        lat = list(LATERAL[variant])
        if self.mul_scl_ipt == "cat":
            lat = [c * 2 for c in lat]
        self.lateral_channels_in_collection = lat
        self.cxt = lat[1:][::-1][-self.cxt_num:] if self.cxt_num else []

    cfg_mod.Config.__init__ = patched
    from models.birefnet import BiRefNet

    torch.manual_seed(0)
    return BiRefNet(bb_pretrained=False).eval()


class FinalLogits(torch.nn.Module):
    """The last (full-resolution) prediction, as the official ONNX exports output it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        y = self.m(x)
        return y[-1] if isinstance(y, (list, tuple)) else y


def contiguous_attention_mask():
    """The strongest PyTorch peer (issue 15): BiRefNet's Swin hands scaled_dot_product_attention a permuted,
    non-contiguous relative-position mask, so PyTorch refuses its fused kernels and runs every window attention
    on the fp32 math path. A runtime patch (no BiRefNet code here) makes the mask contiguous."""
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, *args, **kw):
        return orig(q, k, v, attn_mask.contiguous() if attn_mask is not None else None, *args, **kw)

    F.scaled_dot_product_attention = sdpa
    return orig


def graphed(fn, example):
    """fn captured once as a CUDA graph; the returned callable copies its input in and replays."""
    static_x = example.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = fn(static_x)

    def run(x):
        static_x.copy_(x)
        g.replay()
        return static_y

    return run


def time_cuda(fn, inputs, runs, warmup):
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    ts = []
    for i in range(runs):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn(inputs[i % len(inputs)])
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts), min(ts)


def row(rows, variant, runtime, batch, med, mn, note=""):
    per = med / batch
    r = {
        "model": NAMES[variant],
        "runtime": runtime,
        "batch": batch,
        "median_ms": round(med, 3),
        "min_ms": round(mn, 3),
        "per_frame_ms": round(per, 3),
        "fps": round(1000 / per, 2),
        "tflops": round(GFLOP[variant] / per, 1),
        "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20),
        "note": note,
    }
    rows.append(r)
    print(f"| {r['model']} | {runtime} | {batch} | {med:.2f} | {mn:.2f} | {per:.2f} | {r['fps']:.1f} | {r['tflops']} | {r['peak_mem_mib']} | {note} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--variant", choices=sorted(LATERAL), required=True)
    ap.add_argument("--models", default="/tmp/models")
    ap.add_argument("--out", default=".")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--fp16", action="store_true", help="also write an fp16 ONNX (fp32 I/O), needs onnxconverter-common")
    ap.add_argument("--fp16-io", action="store_true",
                    help="with --fp16, also write NAME-fp16io.onnx whose input and output are float16 too")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    ap.add_argument("--skip-eager", action="store_true")
    ap.add_argument("--fixed", action="store_true",
                    help="also the model with a contiguous attention mask: eager, as a CUDA graph, torch.compile")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode for --fixed (default, max-autotune)")
    ap.add_argument("--export-batch", type=int, default=0,
                    help="export with this fixed batch size instead of a dynamic one (file NAME-bN.onnx)")
    a = ap.parse_args()
    os.makedirs(a.models, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    t0 = time.time()
    model = load_birefnet(a.repo, a.variant).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{a.variant}: {n_params / 1e6:.1f} M parameters, built in {time.time() - t0:.1f} s; torch {torch.__version__}", flush=True)
    rows, info = [], {"variant": a.variant, "params_m": n_params / 1e6, "torch": torch.__version__}
    head = FinalLogits(model).eval()
    gen = torch.Generator(device=dev).manual_seed(1)
    print("| model | runtime | batch | median ms | min ms | ms/frame | frames/s | TFLOP/s | peak MiB | note |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)

    with torch.inference_mode():
        if not a.skip_eager:
            xs = [torch.randn(1, 3, 1024, 1024, device=dev, generator=gen) for _ in range(3)]
            torch.cuda.reset_peak_memory_stats()
            row(rows, a.variant, "PyTorch eager fp32", 1, *time_cuda(head, xs, a.runs, 5))
            h16 = FinalLogits(model.half()).eval()
            xs16 = [x.half() for x in xs]
            torch.cuda.reset_peak_memory_stats()
            row(rows, a.variant, "PyTorch eager fp16 (.half())", 1, *time_cuda(h16, xs16, a.runs, 5))
            xb = [torch.randn(a.batch, 3, 1024, 1024, device=dev, generator=gen).half() for _ in range(2)]
            torch.cuda.reset_peak_memory_stats()
            row(rows, a.variant, "PyTorch eager fp16 (.half())", a.batch, *time_cuda(h16, xb, max(a.runs // 2, 5), 3))
            if a.compile:
                t = time.time()
                c = torch.compile(h16)
                c(xs16[0])
                torch.cuda.synchronize()
                ct = time.time() - t
                torch.cuda.reset_peak_memory_stats()
                row(rows, a.variant, "torch.compile fp16", 1, *time_cuda(c, xs16, a.runs, 5), note=f"compiled in {ct:.0f} s")
            if a.fixed:
                orig = contiguous_attention_mask()
                torch.cuda.reset_peak_memory_stats()
                row(rows, a.variant, "PyTorch eager fp16, contiguous mask", 1, *time_cuda(h16, xs16, a.runs, 5))
                row(rows, a.variant, "PyTorch eager fp16, contiguous mask", a.batch, *time_cuda(h16, xb, max(a.runs // 2, 5), 3))
                g1 = graphed(h16, xs16[0])
                row(rows, a.variant, "PyTorch fp16, contiguous mask, CUDA graph", 1, *time_cuda(g1, xs16, a.runs, 5))
                gb = graphed(h16, xb[0])
                row(rows, a.variant, "PyTorch fp16, contiguous mask, CUDA graph", a.batch, *time_cuda(gb, xb, max(a.runs // 2, 5), 3))
                del g1, gb
                t = time.time()
                try:
                    c = torch.compile(h16, mode=a.compile_mode)
                    c(xs16[0])
                    torch.cuda.synchronize()
                    ct = time.time() - t
                    row(rows, a.variant, f"torch.compile ({a.compile_mode}) fp16, contiguous mask", 1, *time_cuda(c, xs16, a.runs, 5),
                        note=f"compiled in {ct:.0f} s")
                    row(rows, a.variant, f"torch.compile ({a.compile_mode}) fp16, contiguous mask", a.batch,
                        *time_cuda(c, xb, max(a.runs // 2, 5), 3), note="recompiles for the batch")
                except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
                    print(f"torch.compile failed after {time.time() - t:.0f} s: {type(e).__name__}: {str(e)[:300]}", flush=True)
                import torch.nn.functional as F
                F.scaled_dot_product_attention = orig
            model.float()
            del xs, xs16, xb
            torch.cuda.empty_cache()

    if a.export:
        name = NAMES[a.variant]
        if a.export_batch:
            name = f"{name}-b{a.export_batch}"
        path = os.path.join(a.models, f"{name}.onnx")
        x = torch.randn(max(a.export_batch, 1), 3, 1024, 1024, device=dev)
        t = time.time()
        dynamic = not a.export_batch
        try:
            if not dynamic:
                raise ValueError("fixed batch asked for")
            batch = torch.export.Dim("batch", min=1, max=32)
            torch.onnx.export(head, (x,), path, dynamo=True, opset_version=20, input_names=["input_image"],
                              output_names=["output_image"], dynamic_shapes={"x": {0: batch}})
        except Exception as e:  # noqa: BLE001 - fall back to a fixed batch of 1
            if dynamic:
                print(f"dynamic-batch export failed ({type(e).__name__}: {str(e)[:300]}); exporting batch 1", flush=True)
            dynamic = False
            torch.onnx.export(head, (x,), path, dynamo=True, opset_version=20, input_names=["input_image"],
                              output_names=["output_image"])
        info["export_s"] = round(time.time() - t, 1)
        info["dynamic_batch"] = dynamic
        print(f"exported {path} in {info['export_s']} s (dynamic batch: {dynamic})", flush=True)
        if a.fp16:
            import onnx
            from onnxconverter_common import float16

            t = time.time()
            m = onnx.load(path)
            ops = sorted({n.op_type for n in m.graph.node})
            info["ops"] = ops
            # DeformConv stays fp32 (its fp16 CUDA kernel is not assumed); inputs and outputs stay fp32.
            m16 = float16.convert_float_to_float16(m, keep_io_types=True,
                                                   op_block_list=float16.DEFAULT_OP_BLOCK_LIST + ["DeformConv"])
            p16 = os.path.join(a.models, f"{name}-fp16.onnx")
            onnx.save(m16, p16)
            info["fp16_s"] = round(time.time() - t, 1)
            print(f"fp16 variant {p16} in {info['fp16_s']} s ({os.path.getsize(p16) / 2**20:.0f} MiB)", flush=True)
            if a.fp16_io:
                mio = float16.convert_float_to_float16(onnx.load(path), keep_io_types=False,
                                                       op_block_list=float16.DEFAULT_OP_BLOCK_LIST + ["DeformConv"])
                pio = os.path.join(a.models, f"{name}-fp16io.onnx")
                onnx.save(mio, pio)
                print(f"fp16 variant with float16 input and output: {pio}", flush=True)

    with open(os.path.join(a.out, f"peers-{a.variant}{'-b%d' % a.export_batch if a.export_batch else ''}.json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
