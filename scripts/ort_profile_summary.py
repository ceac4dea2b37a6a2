#!/usr/bin/env python3
"""Summarises an ONNX Runtime session profile (matteflow --ort-profile PREFIX writes PREFIX_<date>.json):
kernel time per operator type and execution provider, per model run, largest first. Shows which nodes the
CUDA provider left on the CPU and where the GPU time goes.

    python3 scripts/ort_profile_summary.py PROFILE.json [--top 15] [--json OUT.json]
"""
import argparse
import collections
import json

ap = argparse.ArgumentParser()
ap.add_argument("profile")
ap.add_argument("--top", type=int, default=15)
ap.add_argument("--json")
a = ap.parse_args()
events = json.load(open(a.profile))
run_events = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
# The first run carries cuDNN's algorithm search and memory planning: leave it out when there are others.
skip_until = run_events[0]["ts"] + run_events[0]["dur"] if len(run_events) > 1 else -1
runs = max(len(run_events) - (1 if len(run_events) > 1 else 0), 1)
per = collections.defaultdict(lambda: [0.0, 0])
providers = collections.defaultdict(float)
for e in events:
    if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) <= skip_until:
        continue
    args = e.get("args", {})
    key = (args.get("op_name", "?"), args.get("provider", "?"))
    per[key][0] += e.get("dur", 0) / 1000.0
    per[key][1] += 1
    providers[key[1]] += e.get("dur", 0) / 1000.0
total = sum(providers.values()) / runs
rows = sorted(((k, v[0] / runs, v[1] // runs) for k, v in per.items()), key=lambda r: -r[1])
print(f"{runs} model runs (the first left out); node kernel time {total:.2f} ms per run (host-side time of each node, launches included)")
print("| provider | ms per run | share |\n|---|---|---|")
for p, ms in sorted(providers.items(), key=lambda kv: -kv[1]):
    print(f"| {p} | {ms / runs:.2f} | {100 * ms / runs / total:.1f}% |")
print("| op | provider | nodes | ms per run | share |\n|---|---|---|---|---|")
for (op, prov), ms, n in rows[: a.top]:
    print(f"| {op} | {prov} | {n} | {ms:.2f} | {100 * ms / total:.1f}% |")
if a.json:
    json.dump({"runs": runs, "ms_per_run": total, "providers": {p: ms / runs for p, ms in providers.items()},
               "ops": [{"op": op, "provider": prov, "nodes": n, "ms": ms} for (op, prov), ms, n in rows]},
              open(a.json, "w"), indent=1)
