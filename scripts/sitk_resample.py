#!/usr/bin/env python3
"""Independent reference for the volume code: SimpleITK reads a DICOM series and resamples it to
1 mm isotropic with its cubic B-spline interpolator (or linear), onto the grid jnsc uses: same
origin and directions, size floor((n - 1) * spacing) + 1 along each axis.

  sitk_resample.py SERIES_DIR --out PREFIX [--interpolation bspline|linear]
      writes PREFIX.raw (float32, x fastest) and PREFIX.json (input and output geometry)
  sitk_resample.py SERIES_DIR --time [--rounds N]
      prints the seconds for read + resample, one line per round
"""
import argparse
import json
import math
import time

import SimpleITK as sitk


def read(series_dir):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(series_dir)
    reader.SetFileNames(names)
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def resample(image, interpolation):
    size = [int(math.floor((n - 1) * s + 1e-6)) + 1 for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkBSpline if interpolation == "bspline" else sitk.sitkLinear,
        image.GetOrigin(),
        (1.0, 1.0, 1.0),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def geometry(image):
    return {
        "origin": list(image.GetOrigin()),
        "spacing": list(image.GetSpacing()),
        "direction": list(image.GetDirection()),
        "size": list(image.GetSize()),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("series_dir")
    parser.add_argument("--out")
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--interpolation", default="bspline", choices=["bspline", "linear"])
    args = parser.parse_args()
    if args.time:
        for _ in range(args.rounds):
            start = time.perf_counter()
            resample(read(args.series_dir), args.interpolation)
            print(f"{time.perf_counter() - start:.4f}", flush=True)
        return
    image = read(args.series_dir)
    out = resample(image, args.interpolation)
    with open(args.out + ".raw", "wb") as f:
        f.write(sitk.GetArrayFromImage(out).astype("<f4").tobytes())
    with open(args.out + ".json", "w") as f:
        json.dump({"input": geometry(image), "output": geometry(out)}, f)


if __name__ == "__main__":
    main()
