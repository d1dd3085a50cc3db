#!/usr/bin/env python3
"""docs/juxta-vascular-insertion.png: the first four juxta-vascular nodules of the validation
set V4 (target/jv-insertions, `jnsc synth --into ../shared/data/real-ct/lidc-idri-0063
--juxta-vascular`), each as the same slice of the real series before and after insertion, lung
window (-1350 to 150 HU), 40 mm across. The background's JPEG-lossless files are decompressed
with DCMTK's dcmdjpeg first (pydicom alone cannot read them).
    python3 scripts/juxta-vascular-picture.py [STUDIES] [OUT]"""
import glob, json, os, subprocess, sys, tempfile
import numpy as np
import pydicom
from PIL import Image, ImageDraw

studies = sys.argv[1] if len(sys.argv) > 1 else "target/jv-insertions"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/juxta-vascular-insertion.png"
background = "../shared/data/real-ct/lidc-idri-0063/dicom"


def load(d):
    files = [pydicom.dcmread(f) for f in glob.glob(os.path.join(d, "*.dcm"))]
    files.sort(key=lambda f: float(f.ImagePositionPatient[2]))
    return files


def hu(f):
    return f.pixel_array * float(f.RescaleSlope) + float(f.RescaleIntercept)


def crop(f, centre, half_mm=20.0):
    ps = [float(x) for x in f.PixelSpacing]
    ipp = [float(x) for x in f.ImagePositionPatient]
    col = int(round((centre[0] - ipp[0]) / ps[1]))
    row = int(round((centre[1] - ipp[1]) / ps[0]))
    h = int(half_mm / ps[0])
    window = np.clip((hu(f)[row - h:row + h, col - h:col + h] + 1350) / 1500, 0, 1) * 255
    return Image.fromarray(window.astype(np.uint8)).resize((220, 220), Image.BICUBIC)


with tempfile.TemporaryDirectory() as plain:
    for f in glob.glob(os.path.join(background, "*.dcm")):
        subprocess.run(["dcmdjpeg", f, os.path.join(plain, os.path.basename(f))], check=True)
    before = load(plain)
    tiles = []
    for study in sorted(glob.glob(os.path.join(studies, "insertion-*"))):
        truth = json.load(open(os.path.join(study, "truth.json")))
        nodules = [n for n in truth["nodules"] if n["location"] == "juxta-vascular"]
        if not nodules or len(tiles) == 4:
            continue
        after = load(os.path.join(study, "dicom"))
        for n in nodules[: 4 - len(tiles)]:
            z = n["center_mm"][2]
            k = int(np.argmin([abs(float(f.ImagePositionPatient[2]) - z) for f in after]))
            tiles.append((crop(before[k], n["center_mm"]), crop(after[k], n["center_mm"]), n, study))
picture = Image.new("L", (450 * len(tiles) - 10, 240), 255)
draw = ImageDraw.Draw(picture)
for i, (a, b, n, study) in enumerate(tiles):
    x = i * 450
    picture.paste(a, (x, 0))
    picture.paste(b, (x + 220, 0))
    draw.text((x + 4, 224), f"before | after: {n['diameter_mm']:.1f} mm {n['type']}", fill=0)
    print(f"{os.path.basename(study)}: {n['diameter_mm']:.1f} mm {n['type']}")
picture.save(out)
