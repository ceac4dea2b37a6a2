#!/usr/bin/env python3
"""Draws the GPU benchmark plot of docs/BENCHMARKS.md as a plain SVG (no plotting library needed):
left, milliseconds per frame per pipeline stage for each end-to-end run (stacked bars); right, model
throughput (frames/s) against batch size for each runtime (lines, log2 x axis).

    python3 scripts/gpu_bench_plot.py docs/gpu-bench-2026-11-29.json docs/gpu-bench-2026-11-29.svg

Input JSON: {"title": str,
             "stages" (optional: without it, the right panel alone): [{"label": str, "fps": float, "ms": {"decode": .., "preprocess": .., "infer": .., ...}}],
             "batch": [{"label": str, "points": [[batch, frames_per_s], ...]}]}
"""
import json
import math
import sys
from html import escape

COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]


def text(x, y, s, size=11, anchor="start", weight="normal", rotate=None):
    tr = f' transform="rotate({rotate} {x} {y})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}"'
            f' font-family="sans-serif"{tr}>{escape(str(s))}</text>')


def nice_max(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def stage_panel(stages, x0, y0, w, h):
    out = [text(x0 + w / 2, y0 - 28, "End to end, 1080p file: ms per frame by stage (each on its own thread)", 13, "middle", "bold")]
    names = []
    for s in stages:
        for k in s["ms"]:
            if k not in names:
                names.append(k)
    top = nice_max(max(sum(s["ms"].values()) for s in stages) * 1.1)
    n = len(stages)
    bw = w / max(n, 1) * 0.6
    for i in range(6):
        v = top * i / 5
        y = y0 + h - h * v / top
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(text(x0 - 6, y + 4, f"{v:g}", 10, "end"))
    out.append(text(x0 - 40, y0 + h / 2, "ms per frame", 11, "middle", rotate=-90))
    for i, s in enumerate(stages):
        cx = x0 + (i + 0.5) * w / n
        y = y0 + h
        for j, k in enumerate(names):
            v = s["ms"].get(k, 0)
            bh = h * v / top
            out.append(f'<rect x="{cx - bw / 2:.1f}" y="{y - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" fill="{COLOURS[j % len(COLOURS)]}"/>')
            y -= bh
        out.append(text(cx, y - 4, f"{s['fps']:.1f} fps", 10, "middle", "bold"))
        for li, line in enumerate(s["label"].split("\n")):
            out.append(text(cx, y0 + h + 14 + 12 * li, line, 9, "middle"))
    for j, k in enumerate(names):
        lx = x0 + 10 + j * 95
        out.append(f'<rect x="{lx}" y="{y0 - 18}" width="10" height="10" fill="{COLOURS[j % len(COLOURS)]}"/>')
        out.append(text(lx + 14, y0 - 9, k, 10))
    return out


def batch_panel(series, x0, y0, w, h):
    out = [text(x0 + w / 2, y0 - 28, "Model throughput vs batch size (1024², H200)", 13, "middle", "bold")]
    xs = sorted({p[0] for s in series for p in s["points"]})
    top = nice_max(max(p[1] for s in series for p in s["points"]) * 1.1)
    lx = lambda b: x0 + w * (math.log2(b) - math.log2(xs[0])) / max(math.log2(xs[-1]) - math.log2(xs[0]), 1)
    ly = lambda v: y0 + h - h * v / top
    for i in range(6):
        v = top * i / 5
        out.append(f'<line x1="{x0}" y1="{ly(v):.1f}" x2="{x0 + w}" y2="{ly(v):.1f}" stroke="#ddd"/>')
        out.append(text(x0 - 6, ly(v) + 4, f"{v:g}", 10, "end"))
    for b in xs:
        out.append(text(lx(b), y0 + h + 14, b, 10, "middle"))
    out.append(text(x0 + w / 2, y0 + h + 30, "frames per call (batch)", 11, "middle"))
    out.append(text(x0 - 40, y0 + h / 2, "frames per second", 11, "middle", rotate=-90))
    for j, s in enumerate(series):
        c = COLOURS[j % len(COLOURS)]
        pts = sorted(s["points"])
        dash = ' stroke-dasharray="5,3"' if s.get("dashed") else ""
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="' +
                   " ".join(f"{lx(b):.1f},{ly(v):.1f}" for b, v in pts) + '"/>')
        for b, v in pts:
            out.append(f'<circle cx="{lx(b):.1f}" cy="{ly(v):.1f}" r="3" fill="{c}"/>')
        out.append(f'<rect x="{x0 + 8}" y="{y0 + 6 + 15 * j}" width="10" height="10" fill="{c}"/>')
        out.append(text(x0 + 22, y0 + 15 + 15 * j, s["label"], 10))
    return out


def main():
    data = json.load(open(sys.argv[1]))
    stages = data.get("stages") or []  # none: the throughput panel alone
    W, H = (1180, 470) if stages else (620, 470)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             text(W / 2, 20, data.get("title", ""), 14, "middle", "bold")]
    if stages:
        parts += stage_panel(stages, 70, 80, 480, 300)
    parts += batch_panel(data["batch"], 680 if stages else 110, 80, 460, 300)
    parts.append("</svg>")
    open(sys.argv[2], "w").write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
