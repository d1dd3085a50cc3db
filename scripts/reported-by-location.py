#!/usr/bin/env python3
"""Of a phantom or insertion set's nodules (truth.json: isolated, juxta-vascular, juxta-pleural),
how many are reported at a p(nodule) threshold, and how many have any finding within their radius
(the LUNA16 hit rule), by location. The real background's own nodules (not in truth.json) are
not counted.

    python3 scripts/reported-by-location.py EVAL_DIR STUDIES_DIR THRESHOLD

Reads EVAL_DIR/reports/STUDY.json (written by `jnsc eval studies`) and STUDIES_DIR/STUDY/truth.json.
"""
import collections
import glob
import json
import os
import sys


def main():
    evaluated, studies, threshold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    total, reported, found = collections.Counter(), collections.Counter(), collections.Counter()
    for path in sorted(glob.glob(os.path.join(evaluated, "reports", "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        findings = json.load(open(path))["findings"]
        for nodule in json.load(open(os.path.join(studies, name, "truth.json")))["nodules"]:
            c, d = nodule["center_mm"], nodule["diameter_mm"]
            near = [f for f in findings
                    if sum((f["center_mm"][k] - c[k]) ** 2 for k in range(3)) < (d / 2) ** 2]
            location = nodule["location"]
            total[location] += 1
            found[location] += bool(near)
            reported[location] += any(f["p_nodule"] >= threshold for f in near)
    for location in sorted(total):
        print(f"{location}: {reported[location]} of {total[location]} reported at {threshold}; "
              f"{found[location]} with any finding")


if __name__ == "__main__":
    main()
