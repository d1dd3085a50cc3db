"""Inserted nodules next to the real nodules of the same real CT series, at the same lung
window: an insertion study written by `jnsc synth --into` a study folder with known nodules
(e.g. scripts/real-insertion-studies.sh) holds both.
usage: insertion-figure.py STUDY_DIR OUT_PNG"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

study = Path(sys.argv[1])
truth = json.loads((study / "truth.json").read_text())
slices = []
for path in sorted((study / "dicom").glob("*.dcm")):
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    slices.append((float(ds.ImagePositionPatient[2]), ds, hu))
slices.sort(key=lambda s: s[0])


def crop(center, half_mm=24.0):
    z, ds, hu = min(slices, key=lambda s: abs(s[0] - center[2]))
    origin = [float(v) for v in ds.ImagePositionPatient]
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    orient = [float(v) for v in ds.ImageOrientationPatient]
    # Axial images: columns along x (sign of the row direction), rows along y.
    col = (center[0] - origin[0]) / (col_mm * orient[0])
    row = (center[1] - origin[1]) / (row_mm * orient[4])
    h = int(half_mm / col_mm)
    r0, c0 = int(round(row)) - h, int(round(col)) - h
    return hu[max(r0, 0):r0 + 2 * h, max(c0, 0):c0 + 2 * h], z


panels = [(n, "inserted (synthetic)", f"{n['type']}, {n['diameter_mm']:.1f} mm") for n in truth["nodules"]]
panels += [(n, "real (LIDC readers)", f"{n['diameter_mm']:.1f} mm, ratings {n.get('ratings')}")
           for n in truth.get("known_nodules", [])]
panels = [p for p in panels if p[0]["diameter_mm"] >= 6.0][:6]
fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
for ax, (nodule, kind, text) in zip(axes[0], panels):
    image, z = crop(nodule["center_mm"])
    ax.imshow(image, cmap="gray", vmin=-1350, vmax=150)
    ax.set_title(f"{kind}\n{text}", fontsize=8)
    ax.axis("off")
fig.suptitle(f"{study.name}: same series, lung window W1500 L-600", fontsize=9)
fig.tight_layout(rect=(0, 0, 1, 0.9))
fig.savefig(sys.argv[2], dpi=110)
print(f"wrote {sys.argv[2]} ({len(panels)} nodules)")
