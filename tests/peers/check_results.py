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
    points = report.get_planar_roi_measurement_groups()
    if len(groups) != len(findings) or len(points) != len(findings):
        fail(f"{len(groups)} volumetric and {len(points)} planar groups for {len(findings)} findings")
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    if not ct_instances <= evidence:
        fail("the SR evidence does not list every CT image")

    for finding, group, point in zip(findings, groups, points):
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
