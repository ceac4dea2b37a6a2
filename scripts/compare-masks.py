"""Compares two PNG mask folders written by `matteflow convert -k mask` (e.g. CPU stages vs --cuda-stages):
frame counts, max and mean absolute difference in 8-bit levels, share of pixels off by more than one level.

    python3 scripts/compare-masks.py DIR_A DIR_B
"""
import glob
import sys

import numpy as np

try:
    import cv2

    def read(p):
        return cv2.imread(p, cv2.IMREAD_UNCHANGED)[..., 0].astype(np.int32)
except ImportError:
    from PIL import Image

    def read(p):
        return np.asarray(Image.open(p))[..., 0].astype(np.int32)

a, b = sorted(glob.glob(sys.argv[1] + "/*.png")), sorted(glob.glob(sys.argv[2] + "/*.png"))
d = [np.abs(read(x) - read(y)) for x, y in zip(a, b)]
allv = np.concatenate([x.ravel() for x in d]) / 255.0
print(f"frames {len(a)} vs {len(b)}; max |diff| {max(x.max() for x in d)} levels; mean {np.mean([x.mean() for x in d]):.4f}; "
      f"pixels off by >1 level {100 * np.mean([(x > 1).mean() for x in d]):.4f} %; as alpha in [0,1]: mean {allv.mean():.5f}, "
      f"99.9th percentile {np.quantile(allv, 0.999):.4f}")
