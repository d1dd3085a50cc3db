"""Renders a JNSC SEG over its CT, as a radiologist would check it: for each segment, the source
slice where it is largest, in a lung window, with the segment's outline and label.
usage: render-seg.py SEG_FILE CT_DIR OUT_PNG"""
import sys
from pathlib import Path

import highdicom as hd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

seg = hd.seg.segread(sys.argv[1])
ct = {}
for path in Path(sys.argv[2]).glob("*.dcm"):
    ds = pydicom.dcmread(path)
    ct[ds.SOPInstanceUID] = ds

numbers = list(seg.segment_numbers)[:4]
fig, axes = plt.subplots(1, len(numbers), figsize=(5 * len(numbers), 5.4), squeeze=False)
for ax, number in zip(axes[0], numbers):
    best = None
    for uid in ct:
        try:
            mask = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=[number]
            )[0, :, :, 0]
        except (ValueError, KeyError):
            continue
        if best is None or mask.sum() > best[1].sum():
            best = (uid, mask)
    uid, mask = best
    image = ct[uid].pixel_array * float(ct[uid].RescaleSlope) + float(ct[uid].RescaleIntercept)
    rows, cols = np.nonzero(mask)
    cy, cx = int(rows.mean()), int(cols.mean())
    half = 60
    y0, x0 = max(cy - half, 0), max(cx - half, 0)
    crop = image[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
    crop_mask = mask[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
    ax.imshow(crop, cmap="gray", vmin=-1350, vmax=150)
    ax.contour(crop_mask, levels=[0.5], colors=["#ffb000"], linewidths=1.5)
    description = seg.get_segment_description(number)
    ax.set_title(
        f"{description.segment_label}: {description.SegmentDescription}\n"
        f"CT slice z = {float(ct[uid].ImagePositionPatient[2]):.1f} mm (lung window)",
        fontsize=9,
    )
    ax.axis("off")
fig.suptitle("JNSC SEG read back with highdicom, over the source CT", fontsize=11)
fig.tight_layout(rect=(0, 0, 1, 0.92))
fig.savefig(sys.argv[3], dpi=110)
print(f"wrote {sys.argv[3]}")
