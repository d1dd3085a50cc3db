//! `jnsc eval froc` reproduces the LUNA16 evaluation script's outputs on the test vectors in
//! ../shared/testvectors/luna16-froc byte for byte (CAD analysis, raw FROC curve, missed
//! nodules) and its CPM; bad CSVs are clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    common::shared_path("testvectors/luna16-froc")
}

fn eval(case: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(["eval", "froc", "--annotations"])
        .arg(case.join("annotations.csv"))
        .arg("--excluded")
        .arg(case.join("annotations_excluded.csv"))
        .arg("--series")
        .arg(case.join("seriesuids.csv"))
        .arg("--submission")
        .arg(case.join("submission.csv"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_official_outputs_are_reproduced_exactly() {
    let _data = shared_or_skip!("testvectors/luna16-froc");
    for (case, cpm, sensitivities) in [
        (
            "toy",
            "CPM: 0.535714",
            "0.2500 0.2500 0.2500 0.7500 0.7500 0.7500 0.7500",
        ),
        (
            "toy2",
            "CPM: 0.646617",
            "0.5263 0.5526 0.5526 0.6184 0.7105 0.7763 0.7895",
        ),
    ] {
        let dir = vectors().join(case);
        let out = tempfile::tempdir().unwrap();
        let name = format!("{case}_submission");
        let run = eval(&dir, out.path(), &["--name", &name]);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        for file in [
            "CADAnalysis.txt",
            "froc_points.txt",
            "nodules_without_candidate.txt",
        ] {
            let expected = std::fs::read_to_string(dir.join("expected").join(file)).unwrap();
            let got = std::fs::read_to_string(out.path().join(file)).unwrap();
            assert_eq!(got.trim_end(), expected.trim_end(), "{case}/{file} differs");
        }
        assert!(stdout.contains(cpm), "{case}: {stdout}");
        assert!(stdout.contains(sensitivities), "{case}: {stdout}");
    }
}

#[test]
fn the_bootstrap_interval_brackets_the_cpm() {
    let _data = shared_or_skip!("testvectors/luna16-froc");
    let out = tempfile::tempdir().unwrap();
    let run = eval(&vectors().join("toy2"), out.path(), &["--bootstrap", "200"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("CPM 95% bootstrap interval"))
        .unwrap_or_else(|| panic!("no interval in {stdout}"));
    let numbers: Vec<f64> = line
        .rsplit(": ")
        .next()
        .unwrap()
        .split(" .. ")
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(numbers[0] < 0.646617 && 0.646617 < numbers[1], "{line}");
    assert!(numbers[1] - numbers[0] < 0.5, "{line}");
}

#[test]
fn a_malformed_submission_names_file_and_line() {
    let _data = shared_or_skip!("testvectors/luna16-froc");
    let dir = tempfile::tempdir().unwrap();
    let case = vectors().join("toy");
    for file in [
        "annotations.csv",
        "annotations_excluded.csv",
        "seriesuids.csv",
    ] {
        std::fs::copy(case.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("submission.csv"),
        "seriesuid,coordX,coordY,coordZ,probability\ns1,1,1,1,0.5\ns1,2,x,2,0.4\n",
    )
    .unwrap();
    let run = eval(dir.path(), &dir.path().join("out"), &[]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("submission.csv, line 3") && stderr.contains("`x` is not a number"),
        "{stderr}"
    );
}
