#!/usr/bin/env python3
"""docs/juxta-vascular-misses.png: every juxta-vascular nodule of a phantom set as an axial (left)
and a coronal (right) view through its centre, 40 mm across, lung window (-1350 to 150 HU), each
titled with its size, type, whether any finding lies within its radius and the location map's
maximum over it, as `scripts/map-misses.py` printed them.

    python3 scripts/map-misses.py target/validation/study-* --maps M > misses.txt
    python3 scripts/juxta-vascular-misses.py misses.txt target/validation docs/juxta-vascular-misses.png

Reads the studies' truth.json and dicom/ (uncompressed, as `jnsc synth` writes them).
"""
import glob
import json
import re
import sys

import numpy as np
import pydicom
from PIL import Image, ImageDraw

HALF_MM = 20.0
LINE = re.compile(r"(study-\d+)\s+([\d.]+) mm\s+(\S+) (\S+)\s+(found|MISSED)\s+map max ([\d.]+)")


def window(hu):
    return Image.fromarray((np.clip((hu + 1350) / 1500, 0, 1) * 255).astype(np.uint8))


def views(slices, centre):
    """The axial and coronal views through `centre` (patient mm; slices sorted by z)."""
    zs = [float(s.ImagePositionPatient[2]) for s in slices]
    k = int(np.argmin([abs(z - centre[2]) for z in zs]))
    f = slices[k]
    ps = float(f.PixelSpacing[0])
    ipp = [float(x) for x in f.ImagePositionPatient]
    col = int(round((centre[0] - ipp[0]) / ps))
    row = int(round((centre[1] - ipp[1]) / ps))
    h = int(HALF_MM / ps)
    hu = lambda s: s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept)
    axial = hu(f)[row - h:row + h, col - h:col + h]
    hk = int(HALF_MM / abs(zs[1] - zs[0]))
    coronal = np.stack([hu(s)[row, col - h:col + h] for s in slices[max(0, k - hk):k + hk]])[::-1]
    return window(axial).resize((200, 200)), window(coronal).resize((200, 200))


def main():
    misses, root, out = sys.argv[1:4]
    rows = [m.groups() for m in map(LINE.match, open(misses)) if m and m.group(3) == "juxta-vascular"]
    tiles, loaded = [], {}
    for study, d, location, kind, result, peak in rows:
        truth = json.load(open(f"{root}/{study}/truth.json"))
        nodule = next(n for n in truth["nodules"]
                      if abs(n["diameter_mm"] - float(d)) < 0.06 and n["location"] == location)
        if study not in loaded:
            slices = [pydicom.dcmread(f) for f in glob.glob(f"{root}/{study}/dicom/*.dcm")]
            loaded = {study: sorted(slices, key=lambda s: float(s.ImagePositionPatient[2]))}
        axial, coronal = views(loaded[study], nodule["center_mm"])
        tile = Image.new("L", (400, 220), 0)
        tile.paste(axial, (0, 20))
        tile.paste(coronal, (200, 20))
        ImageDraw.Draw(tile).text((4, 4), f"{study} {d} mm {kind} {result} map {peak}", fill=255)
        tiles.append(tile)
    columns = 3
    sheet = Image.new("L", (400 * columns, 220 * ((len(tiles) + columns - 1) // columns)), 0)
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * 400, (i // columns) * 220))
    sheet.save(out)


if __name__ == "__main__":
    main()
