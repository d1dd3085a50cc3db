"""Reads the node's result objects back as a viewer would (highdicom) and checks them against
the node's own record of the findings (results.json) and the source CT.

usage: check_results.py SUMMARY_JSON CT_DIR SR_FILE [SEG_FILE]
Exits non-zero with a message on the first mismatch; prints a one-line summary otherwise.
"""
import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

COPIED = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
]


def fail(message):
    print(f"check_results: {message}", file=sys.stderr)
    sys.exit(1)


def check_copied(obj, ct, what):
    for keyword in COPIED:
        if getattr(obj, keyword, None) != getattr(ct, keyword, None):
            fail(f"{what} {keyword} {getattr(obj, keyword, None)!r} != CT {getattr(ct, keyword, None)!r}")


def check_axes(finding, group, ct_instances, spacing):
    """The axial group of one finding: tracking, values against the node's record, the polylines
    against their lengths. Returns (SEG frame number, image UID, long-axis ends)."""
    n = finding["number"]
    if group.tracking_identifier != f"Nodule {n} (axial)" or str(group.tracking_uid) == finding["tracking_uid"]:
        fail(f"finding {n}: axial group tracking {group.tracking_identifier!r} {group.tracking_uid}")
    measurements = {m.name.meaning: m for m in group.get_measurements()}
    expected = {"Long Axis": "long_axis_mm", "Short Axis": "short_axis_mm", "Diameter": "mean_diameter_mm"}
    for name, key in expected.items():
        if name not in measurements or abs(float(measurements[name].value) - finding[key]) > 1e-6 * max(1.0, finding[key]):
            fail(f"finding {n}: {name} {measurements.get(name) and measurements[name].value} != {finding[key]}")
    if not finding["short_axis_mm"] <= finding["long_axis_mm"] + 1e-9:
        fail(f"finding {n}: short axis longer than the long axis")
    if abs(finding["mean_diameter_mm"] - (finding["long_axis_mm"] + finding["short_axis_mm"]) / 2) > 1e-6:
        fail(f"finding {n}: the mean diameter is not the mean of the axes")
    lines = {}
    for name in ("Long Axis", "Short Axis"):
        (coordinates,) = measurements[name].referenced_coordinates
        if coordinates.graphic_type.value != "POLYLINE":
            fail(f"finding {n}: {name} is a {coordinates.graphic_type}")
        points = np.asarray(coordinates.value, dtype=float)
        if points.shape != (2, 2):
            fail(f"finding {n}: {name} has {points.shape} coordinates, not two points")
        image = coordinates.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        if image not in ct_instances:
            fail(f"finding {n}: {name} references {image}, not a CT image")
        (dc, dr) = points[1] - points[0]
        length = np.hypot(dc * spacing[1], dr * spacing[0])
        # float32 coordinates: a few micrometres.
        if abs(length - float(measurements[name].value)) > 1e-3:
            fail(f"finding {n}: {name} drawn {length:.4f} mm, reported {measurements[name].value}")
        lines[name] = (image, points)
    if lines["Long Axis"][0] != lines["Short Axis"][0]:
        fail(f"finding {n}: the axes are on different images")
    long_mm = (lines["Long Axis"][1][1] - lines["Long Axis"][1][0]) * [spacing[1], spacing[0]]
    short_mm = (lines["Short Axis"][1][1] - lines["Short Axis"][1][0]) * [spacing[1], spacing[0]]
    if finding["short_axis_mm"] > 0 and abs(np.dot(long_mm, short_mm)) > 1e-3 * np.linalg.norm(long_mm) * np.linalg.norm(short_mm) + 1e-4:
        fail(f"finding {n}: the axes are not perpendicular")
    (segmentation_frame,) = [item for item in group.referenced_segmentation_frame if item.ConceptNameCodeSequence[0].CodeValue == "121214"]
    frame_number = int(segmentation_frame.ReferencedSOPSequence[0].ReferencedFrameNumber)
    return frame_number, lines["Long Axis"][0], lines["Long Axis"][1]


def main():
    summary = json.loads(Path(sys.argv[1]).read_text())
    ct_files = sorted(Path(sys.argv[2]).glob("*.dcm"))
    ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    ct_instances = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_files}
    findings = summary["findings"]

    sr = hd.sr.srread(sys.argv[3])
    check_copied(sr, ct, "SR")
    if sr.SOPInstanceUID != summary["sr"]["sop_instance_uid"]:
        fail("SR SOP Instance UID differs from the node's record")
    if sr.SeriesInstanceUID == ct.SeriesInstanceUID:
        fail("SR is in the CT's series")
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        fail(f"SR content is {type(report).__name__}, not a TID 1500 MeasurementReport")
    groups = report.get_volumetric_roi_measurement_groups()
    planar = report.get_planar_roi_measurement_groups()
    # Per finding: its centre (a SCOORD3D point, the finding's tracking UID) and its axes on
    # the largest axial slice (a group of its own).
    points = [g for g in planar if g.reference_type.value == "111030"]
    axial = [g for g in planar if g.reference_type.value == "121214"]
    if not (len(groups) == len(points) == len(axial) == len(findings)) or len(planar) != 2 * len(findings):
        fail(f"{len(groups)} volumetric, {len(points)} centre and {len(axial)} axial groups "
             f"({len(planar)} planar) for {len(findings)} findings")
    spacing = [float(v) for v in ct.PixelSpacing]  # row spacing, column spacing
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    if not ct_instances <= evidence:
        fail("the SR evidence does not list every CT image")

    axes_of = {}
    for finding, group, point, axes in zip(findings, groups, points, axial):
        axes_of[finding["number"]] = check_axes(finding, axes, ct_instances, spacing)
        if str(group.tracking_uid) != finding["tracking_uid"] or str(point.tracking_uid) != finding["tracking_uid"]:
            fail(f"finding {finding['number']}: tracking UID mismatch")
        if group.finding_type.value != "27925004":
            fail(f"finding {finding['number']}: finding type {group.finding_type}")
        values = {m.name.meaning: float(m.value) for m in group.get_measurements()}
        expected = {
            "Diameter": finding["max_diameter_mm"],
            "Volume": finding["volume_mm3"],
            "Probability of cancer": finding["p_malignant"],
        }
        for name, value in expected.items():
            if name not in values or abs(values[name] - value) > 1e-6 * max(1.0, abs(value)):
                fail(f"finding {finding['number']}: {name} {values.get(name)} != {value}")
        segment = group.referenced_segment
        if segment is None:
            fail(f"finding {finding['number']}: no referenced segment")
        centre = point.roi.value
        if np.abs(np.asarray(centre) - np.asarray(finding["center_mm"])).max() > 1e-3:
            fail(f"finding {finding['number']}: SCOORD3D {centre} != {finding['center_mm']}")

    if findings:
        seg = hd.seg.segread(sys.argv[4])
        check_copied(seg, ct, "SEG")
        if seg.FrameOfReferenceUID != ct.FrameOfReferenceUID:
            fail("SEG frame of reference differs from the CT's")
        if seg.number_of_segments != len(findings):
            fail(f"SEG has {seg.number_of_segments} segments for {len(findings)} findings")
        volume = seg.get_volume(combine_segments=False)
        arr = volume.array  # (slices, rows, columns, segments)
        for finding in findings:
            n = finding["number"]
            description = seg.get_segment_description(n)
            if str(description.tracking_uid) != finding["tracking_uid"]:
                fail(f"segment {n}: tracking UID mismatch")
            pixels = int(arr[..., n - 1].sum())
            if pixels != finding["source_pixels"]:
                fail(f"segment {n}: {pixels} pixels read back, {finding['source_pixels']} written")
            # The SCOORD3D centre lies inside (or within 2 mm of) the segment.
            index = np.argwhere(arr[..., n - 1])
            world = volume.map_indices_to_reference(index)
            nearest = np.linalg.norm(world - np.asarray(finding["center_mm"]), axis=1).min()
            if nearest > 2.0:
                fail(f"segment {n}: its voxels are {nearest:.1f} mm from the reported centre")
        # Each axial group's region is its segment's frame on the measured image, and the long
        # axis lies on the segment there.
        for finding in findings:
            n = finding["number"]
            frame_number, image_uid, long_axis = axes_of[n]
            frame = seg.PerFrameFunctionalGroupsSequence[frame_number - 1]
            segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            if segment != n or source != image_uid:
                fail(f"finding {n}: SEG frame {frame_number} is segment {segment} on {source}, "
                     f"not segment {n} on the measured image {image_uid}")
            mask = seg.get_stored_frame(frame_number) if hasattr(seg, "get_stored_frame") else seg.pixel_array[frame_number - 1]
            rows, columns = np.nonzero(mask)
            for column, row in long_axis:
                # Ends sit on pixel corners of the segment: within one pixel of a pixel centre.
                gap = np.hypot(columns + 0.5 - column, rows + 0.5 - row).min()
                if gap > 1.0:
                    fail(f"finding {n}: a long-axis end ({column}, {row}) is {gap:.2f} px off the segment")
        referenced = {
            ref.ReferencedSOPInstanceUID
            for series in seg.ReferencedSeriesSequence
            for ref in series.ReferencedInstanceSequence
        }
        if referenced != ct_instances:
            fail("SEG ReferencedSeriesSequence does not list exactly the CT images")
    print(f"check_results: {len(findings)} findings consistent across SR, SEG and the node's record")


if __name__ == "__main__":
    main()
