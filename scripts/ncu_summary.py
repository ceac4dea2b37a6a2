#!/usr/bin/env python3
"""Kernels of one steady-state model run by GPU time, from Nsight Compute's CSV
(`ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw --print-units base
matteflow gpu-bench … --profile-run`, see scripts/gpu-bench.sh ncu-*): the top kernels and the time per class.

    python3 scripts/ncu_summary.py ncu.csv [--label NAME] [--json out.json] [--top 25]
"""
import argparse
import collections
import csv
import json
import re
import sys

# First match wins: a kernel's class from its (demangled) name.
CLASSES = [
    ("pad", r"PadKernel|_Pad"),
    ("bias broadcast", r"BroadcastBias"),
    ("attention", r"[Ff]lash|fmha|[Aa]ttention|MultiHead"),
    ("softmax", r"[Ss]oftmax"),
    ("layer norm", r"LayerNorm|layer_norm|SkipLayerNorm"),
    ("gemm", r"gemm|Gemm|cutlass|xmma|sm90_|cublas|ampere_|hopper"),
    ("conv", r"conv|Conv|cudnn|implicit_convolve|winograd|fft"),
    ("deformable", r"[Dd]eform"),
    ("resize", r"Resize|[Uu]psample|[Ii]nterp"),
    ("transpose / layout", r"Transpose|nchwToNhwc|nhwcToNchw|transpose"),
    ("concat / split / slice", r"Concat|Split|Slice|Gather|Scatter|Copy|copy|memcpy"),
    ("cast", r"Cast"),
    ("gelu / activation", r"Gelu|gelu|Relu|Sigmoid|Erf"),
    ("elementwise", r"Elementwise|ElementWise|_Binary|_Unary|Impl_|Add|Mul|Sub|Div|Where|Expand"),
    ("reduce", r"[Rr]educe"),
]


def klass(name):
    for c, pat in CLASSES:
        if re.search(pat, name):
            return c
    return "other"


def short(name, n=90):
    name = re.sub(r"\(.*", "", name) if name.count("(") else name
    return name if len(name) <= n else name[: n - 1] + "…"


def read(path):
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    reader = csv.DictReader(lines)
    for r in reader:
        t = r.get("gpu__time_duration.sum", "")
        try:
            ns = float(t.replace(",", ""))
        except ValueError:
            continue  # the units row
        rows.append((r.get("Kernel Name") or r.get("Function Name") or "?", ns))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    rows = read(a.csv)
    if not rows:
        sys.exit(f"{a.csv}: no kernel rows (did the profiled range run? see the ncu log)")
    total = sum(ns for _, ns in rows)
    by_kernel = collections.defaultdict(lambda: [0.0, 0])
    by_class = collections.defaultdict(lambda: [0.0, 0])
    for name, ns in rows:
        by_kernel[name][0] += ns
        by_kernel[name][1] += 1
        c = by_class[klass(name)]
        c[0] += ns
        c[1] += 1
    print(f"## {a.label}: {total / 1e6:.2f} ms of kernels in {len(rows)} launches (one run)\n")
    print("| class | ms | % | launches |\n|---|---|---|---|")
    for c, (ns, k) in sorted(by_class.items(), key=lambda x: -x[1][0]):
        print(f"| {c} | {ns / 1e6:.2f} | {100 * ns / total:.1f} | {k} |")
    print(f"\n| kernel (top {a.top}) | class | ms | % | launches | µs each |\n|---|---|---|---|---|---|")
    top = sorted(by_kernel.items(), key=lambda x: -x[1][0])[: a.top]
    for name, (ns, k) in top:
        print(f"| `{short(name)}` | {klass(name)} | {ns / 1e6:.2f} | {100 * ns / total:.1f} | {k} | {ns / k / 1e3:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": a.label, "total_ms": total / 1e6, "launches": len(rows),
                       "classes": {c: {"ms": ns / 1e6, "launches": k} for c, (ns, k) in by_class.items()},
                       "kernels": [{"name": n, "ms": ns / 1e6, "launches": k} for n, (ns, k) in top]}, f, indent=1)


if __name__ == "__main__":
    main()
