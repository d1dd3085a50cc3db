//! Whole-scan analysis: finding centres land on the nodules of an oblique synthetic study (the
//! volume stage's geometry and the post-processing's patient coordinates together), and the
//! `jnsc analyze` command's JSON interface and errors; `jnsc eval studies` and `jnsc eval
//! nodules` (the classifier alone on every reference nodule).

use jnsc::inference::findings::{PostProcessing, detect};
use jnsc::synth::calibration::Calibration;
use jnsc::synth::render::Physics;
use jnsc::synth::series::SeriesSpec;
use jnsc::synth::study::{StudyOptions, write_study};
use jnsc::volume::Volume;
use jnsc::volume::metaimage;
use jnsc::volume::prepare::prepare;
use jnsc::volume::resample::Interpolation;
use jnsc::volume::series::files_in;
use std::path::Path;
use std::process::Command;

fn jnsc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs jnsc and requires success, showing its stderr otherwise.
fn jnsc_ok(args: &[&str]) {
    let run = jnsc(args);
    assert!(
        run.status.success(),
        "jnsc {args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// A chest study at reduced resolution whose slices are rotated 20 degrees in plane and tilted
/// 15 degrees about the patient's left-right axis.
fn oblique_study(dir: &Path, nodules: usize, seed: u64) -> jnsc::synth::study::Truth {
    let (a, t) = (20f64.to_radians(), 15f64.to_radians());
    let row = [a.cos(), a.sin(), 0.0];
    let column = [-a.sin() * t.cos(), a.cos() * t.cos(), t.sin()];
    let options = StudyOptions {
        series: SeriesSpec {
            slices: 90,
            rows: 240,
            columns: 240,
            pixel_spacing_mm: 1.5,
            slice_spacing_mm: 3.0,
            row_direction: row,
            column_direction: column,
            seed,
            ..SeriesSpec::default()
        },
        nodules: Some(nodules),
        physics: Physics::default(),
    };
    write_study(&options, &Calibration::lidc(), dir).unwrap()
}

#[test]
fn finding_centres_land_on_the_nodules_of_an_oblique_study() {
    let dir = tempfile::tempdir().unwrap();
    let truth = oblique_study(dir.path(), 3, 21);
    assert_eq!(truth.nodules.len(), 3);
    let files = files_in(&dir.path().join("dicom")).unwrap();
    let prepared = prepare(&files, Interpolation::BSpline).unwrap();
    // The acquired pixels are freed once resampled; the slices stay for mapping back.
    assert!(prepared.series.hu.is_empty());
    assert_eq!(prepared.series.slices.len(), 90);
    // A probability map that is exactly the truth mask, sampled on the 1 mm grid the network
    // sees: what a perfect network would output.
    let mask = metaimage::read(&dir.path().join("truth_mask.mhd")).unwrap();
    let g = prepared.hu.geometry;
    let mut map = Volume::filled(g, 0f32);
    for k in 0..g.size[2] {
        for j in 0..g.size[1] {
            for i in 0..g.size[0] {
                let point = g.index_to_patient([i as f64, j as f64, k as f64]);
                if mask.nearest(point).unwrap_or(0.0) > 0.0 {
                    map.data[g.offset(i, j, k)] = 0.9;
                }
            }
        }
    }
    let found = detect(
        &map,
        &PostProcessing {
            min_diameter_mm: 0.0,
            ..PostProcessing::default()
        },
    );
    for nodule in &truth.nodules {
        let nearest = found
            .iter()
            .map(|f| {
                (0..3)
                    .map(|a| (f.region.center_mm[a] - nodule.center_mm[a]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .fold(f64::INFINITY, f64::min);
        assert!(
            nearest < 1.0,
            "nodule at {:?} ({:.1} mm): nearest finding {nearest:.2} mm away",
            nodule.center_mm,
            nodule.diameter_mm
        );
    }
    assert_eq!(found.len(), truth.nodules.len(), "{found:?}");
}

/// `jnsc analyze --precision f16` runs the segmentation in half precision (as a GPU would
/// on its tensor cores; on the CPU through the f32 kernels, rounded to f16) and finds what f32
/// finds: every f32 finding the network is sure is a region (location probability 0.6 or more)
/// has a half-precision finding within 0.5 mm whose location probability is within 5e-3. Where
/// the paired findings are the same region (the same region volume), the classification path saw the
/// same box, so p(nodule) agrees to 1e-3 and the finding is reported by both or neither. Where
/// a voxel more or less at the region's edge changed the box, p(nodule) can move by more
/// (models/README.md "Half precision"); at most one reported finding may differ so. The maps
/// must differ somewhere, or half precision did not run. bfloat16 is refused.
#[test]
fn half_precision_finds_what_f32_finds() {
    struct Found {
        centre: [f64; 3],
        p_nodule: f64,
        p_location: f64,
        region_volume_mm3: f64,
    }
    let dir = tempfile::tempdir().unwrap();
    oblique_study(dir.path(), 3, 21);
    let dicom = dir.path().join("dicom");
    let run = |precision: &str| -> Vec<Found> {
        let json = dir.path().join(format!("{precision}.json"));
        jnsc_ok(&[
            "analyze",
            dicom.to_str().unwrap(),
            "--precision",
            precision,
            "--json",
            json.to_str().unwrap(),
        ]);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["precision"], precision);
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let number = |v: &serde_json::Value| v.as_f64().unwrap();
                Found {
                    centre: [0, 1, 2].map(|a| number(&f["center_mm"][a])),
                    p_nodule: number(&f["p_nodule"]),
                    p_location: number(&f["p_location"]),
                    region_volume_mm3: number(&f["region_volume_mm3"]),
                }
            })
            .collect()
    };
    fn nearest<'a>(to: &Found, among: &'a [Found]) -> (f64, &'a Found) {
        let distance =
            |a: &[f64; 3], b: &[f64; 3]| (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt();
        among
            .iter()
            .map(|h| (distance(&h.centre, &to.centre), h))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
    }
    let reference = run("f32");
    let sure: Vec<_> = reference.iter().filter(|f| f.p_location >= 0.6).collect();
    assert!(sure.len() >= 3, "{} sure findings", sure.len());
    let half = run("f16");
    let (mut largest_distance, mut largest_dp) = (0f64, 0f64);
    for f in &sure {
        let (d, h) = nearest(f, &half);
        largest_distance = largest_distance.max(d);
        largest_dp = largest_dp.max((h.p_location - f.p_location).abs());
    }
    eprintln!(
        "f16: {} sure findings, centres within {largest_distance:.3} mm, \
         p(location) within {largest_dp:.2e}",
        sure.len()
    );
    assert!(largest_distance <= 0.5, "{largest_distance} mm");
    assert!(largest_dp <= 5e-3, "p(location) {largest_dp}");
    assert!(largest_dp > 0.0, "f16 gave f32's map: did it run in f32?");
    // Reported at the operating point by one run or the other: the same region in both must give
    // the same call; another box may change it, for at most one finding. Each run's reported
    // findings are checked against the other run, so a pair reported by both counts twice.
    let threshold = jnsc::jnsc::model_file::read_info(
        std::path::Path::new("(embedded)"),
        jnsc::jnsc::model_file::EMBEDDED,
    )
    .unwrap()
    .operating_points[0]
        .min_p_nodule;
    let (mut same_region_calls, mut other_box) = (0, Vec::new());
    for (f, others) in [(&reference, &half), (&half, &reference)] {
        for finding in f.iter().filter(|x| x.p_nodule >= threshold) {
            let (d, other) = nearest(finding, others);
            assert!(d <= 0.5, "a reported finding has no counterpart: {d} mm");
            if (other.region_volume_mm3 - finding.region_volume_mm3).abs() < 1e-6 {
                same_region_calls += 1;
                assert!(
                    (other.p_nodule - finding.p_nodule).abs() <= 1e-3,
                    "the same region at {:?}: p(nodule) {} against {}",
                    finding.centre,
                    finding.p_nodule,
                    other.p_nodule
                );
            } else if other.p_nodule < threshold {
                other_box.push((finding.centre, finding.p_nodule, other.p_nodule));
            }
        }
    }
    eprintln!(
        "reported findings (both runs) whose counterpart is the same region: \
         {same_region_calls}; called differently: {other_box:?}"
    );
    assert!(same_region_calls >= 6, "{same_region_calls}");
    assert!(other_box.len() <= 1, "{other_box:?}");
    let refused = jnsc(&["analyze", dicom.to_str().unwrap(), "--precision", "bf16"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("f16"));
}

#[test]
fn analyze_writes_the_findings_json_and_explains_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    let truth = oblique_study(&study, 1, 5);
    let model = dir.path().join("model.safetensors");
    let init = jnsc(&["model", "init", "--out", model.to_str().unwrap()]);
    assert!(init.status.success());
    let json = dir.path().join("findings.json");
    jnsc_ok(&[
        "analyze",
        study.join("dicom").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--classify-all",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["series_uid"], truth.series_uid.as_str());
    assert_eq!(report["model"]["name"], "jnsc-cpu");
    assert!(report["findings"].is_array());
    for f in report["findings"].as_array().unwrap() {
        for key in [
            "center_mm",
            "diameter_mm",
            "volume_mm3",
            "region_volume_mm3",
            "p_nodule",
            "p_location",
            "p_malignant",
            "p_non_nodule",
            "p_cancer",
            "p_cancer_finding",
            "malignant",
        ] {
            assert!(!f[key].is_null(), "finding without {key}: {f}");
        }
        // The probability that the finding is a cancer is p(nodule) x p(cancer | nodule), and
        // the call is made on it (this model has no calibration: over 0.5), so that a finding
        // that may not be a nodule is not called malignant for what it would be if it were one.
        let number = |key: &str| f[key].as_f64().unwrap();
        let p_cancer_finding = number("p_cancer_finding");
        assert!(
            (p_cancer_finding - number("p_nodule") * number("p_cancer")).abs() < 1e-12,
            "{f}"
        );
        assert_eq!(f["malignant"], p_cancer_finding > 0.5, "{f}");
        // The region is at least 3 mm across; the measured extent (its core) is inside it.
        let region = f["region_volume_mm3"].as_f64().unwrap();
        assert!((6.0 * region / std::f64::consts::PI).cbrt() >= 3.0);
        assert!(f["volume_mm3"].as_f64().unwrap() <= region);
        assert!(f["diameter_mm"].as_f64().unwrap() > 0.0);
        // p(nodule): the location map times the classification path's nodule classes.
        let expected =
            f["p_location"].as_f64().unwrap() * (1.0 - f["p_non_nodule"].as_f64().unwrap());
        assert!(
            (f["p_nodule"].as_f64().unwrap() - expected).abs() < 1e-6,
            "{f}"
        );
    }
    let p_nodule = |r: &serde_json::Value| -> Vec<f64> {
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["p_nodule"].as_f64().unwrap())
            .collect()
    };
    let all = p_nodule(&report);
    assert!(
        all.windows(2).all(|w| w[0] >= w[1]),
        "most probable first: {all:?}"
    );

    // By default only findings whose location probability reaches the reporting threshold are
    // classified; what reaches the threshold is the same as when all are classified.
    let threshold = all.get(all.len() / 2).copied().unwrap_or(0.5);
    let prefiltered = dir.path().join("prefiltered.json");
    jnsc_ok(&[
        "analyze",
        study.join("dicom").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--json",
        prefiltered.to_str().unwrap(),
        "--min-p-nodule",
        &threshold.to_string(),
    ]);
    let fast: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&prefiltered).unwrap()).unwrap();
    for f in fast["findings"].as_array().unwrap() {
        let classified = !f["p_malignant"].is_null();
        assert_eq!(
            classified,
            f["p_location"].as_f64().unwrap() >= threshold,
            "{f}"
        );
        if !classified {
            assert_eq!(f["p_nodule"], f["p_location"]);
        }
    }
    let reported = |v: Vec<f64>| -> Vec<String> {
        v.into_iter()
            .filter(|&p| p >= threshold)
            .map(|p| format!("{p:.9}"))
            .collect()
    };
    let fast_reported: Vec<f64> = fast["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["p_malignant"].is_null())
        .map(|f| f["p_nodule"].as_f64().unwrap())
        .collect();
    assert_eq!(reported(fast_reported), reported(all));
    for stage in [
        "load",
        "resample",
        "lung_mask",
        "segmentation",
        "classification",
        "total",
    ] {
        assert!(
            report["timings_ms"][stage].as_f64().unwrap() >= 0.0,
            "no timing for {stage}"
        );
    }

    // Without --classify-all, what is classified depends on the threshold, which a model
    // without an operating point does not give.
    let no_threshold = jnsc(&[
        "analyze",
        study.join("dicom").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(!no_threshold.status.success());
    let e = String::from_utf8_lossy(&no_threshold.stderr);
    assert!(e.contains("carries no operating point"), "{e}");

    // A missing model file, an empty folder and a CUDA device without CUDA: clear errors.
    let missing = jnsc(&[
        "analyze",
        study.join("dicom").to_str().unwrap(),
        "--model",
        "/nonexistent/model.safetensors",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model.safetensors"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let none = jnsc(&[
        "analyze",
        empty.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--classify-all",
    ]);
    assert!(!none.status.success());
    let e = String::from_utf8_lossy(&none.stderr);
    assert!(!e.is_empty() && !e.contains("operating point"), "{e}");
    #[cfg(not(feature = "cuda"))]
    {
        let cuda = jnsc(&[
            "analyze",
            study.join("dicom").to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cuda",
        ]);
        assert!(String::from_utf8_lossy(&cuda.stderr).contains("--features cuda"));
    }
}

#[test]
fn eval_studies_scores_the_analyzer_against_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let studies = dir.path().join("studies");
    for seed in [31, 32] {
        oblique_study(&studies.join(format!("study{seed}")), 2, seed);
    }
    let model = dir.path().join("model.safetensors");
    assert!(
        jnsc(&["model", "init", "--out", model.to_str().unwrap()])
            .status
            .success()
    );
    let out = dir.path().join("eval");
    // `eval studies` of `model` into `out`, with `extra` options.
    let eval = |model: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "studies",
            studies.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        jnsc(&args)
    };
    // An untrained model has no operating point: the threshold must be given.
    let refused = eval(&model, &out, &[]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("carries no operating point"), "{e}");
    assert!(
        eval(&model, &out, &["--min-p-nodule", "0.5"])
            .status
            .success()
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["operating_point"]["min_p_nodule"], 0.5);
    assert_eq!(metrics["studies"], 2);
    assert_eq!(metrics["nodules"], 4);
    let cpm = metrics["cpm"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&cpm));
    // The operating point: every reference nodule, each reported only if a finding at or above
    // the threshold hits it; no more false positives than reported findings.
    let op = &metrics["operating_point"];
    let threshold = op["min_p_nodule"].as_f64().unwrap();
    let outcomes = op["nodules"].as_array().unwrap();
    assert_eq!(outcomes.len(), 4);
    for n in outcomes {
        let reported = n["reported"].as_bool().unwrap();
        assert_eq!(
            reported,
            n["best_p_nodule"].as_f64().is_some_and(|p| p >= threshold),
            "{n}"
        );
        assert_eq!(n["rank"].is_null(), n["best_p_nodule"].is_null(), "{n}");
    }
    let reported = op["reported_per_scan"].as_f64().unwrap();
    assert!(op["false_positives_per_scan"].as_f64().unwrap() <= reported);
    // The calls the report carries there: every reported finding is a false positive or on a
    // reference nodule (the two studies' 2 x reported_per_scan).
    let calls = &metrics["reported_calls"];
    let count = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(
        count(&calls["false_positives"]) as f64,
        2.0 * op["false_positives_per_scan"].as_f64().unwrap()
    );
    assert!(count(&calls["false_positives_called_malignant"]) <= count(&calls["false_positives"]));
    let on_nodules = &calls["on_nodules"];
    assert_eq!(
        (count(&on_nodules["benign"])
            + count(&on_nodules["malignant"])
            + count(&on_nodules["uncertain_excluded"])
            + count(&calls["false_positives"])) as f64,
        2.0 * reported
    );
    // The LUNA16-format inputs are there for the official script, and the script's outputs.
    let annotations = std::fs::read_to_string(out.join("annotations.csv")).unwrap();
    assert_eq!(annotations.lines().count(), 5);
    assert_eq!(
        std::fs::read_to_string(out.join("seriesuids.csv"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    let cad = std::fs::read_to_string(out.join("CADAnalysis.txt")).unwrap();
    assert!(cad.contains("Total number of nodules: 4"), "{cad}");
    let svg = std::fs::read_to_string(out.join("froc.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("False positives per scan"));

    // The operating point chosen on these studies (no false positive at all), written into a
    // copy of the model, is then its default threshold, and reports no false positive there.
    let chosen = dir.path().join("chosen.safetensors");
    let choose = |model: &Path, write: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "operating-point",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--write-model",
            write.to_str().unwrap(),
            "--chosen-on",
            "two oblique studies",
            "--max-fp-per-scan",
            "0",
        ];
        args.extend_from_slice(extra);
        jnsc(&args)
    };
    let run = choose(&model, &chosen, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let info =
        jnsc::jnsc::model_file::read_info(&chosen, &std::fs::read(&chosen).unwrap()).unwrap();
    let [op] = <[_; 1]>::try_from(info.operating_points).unwrap();
    assert_eq!(op.chosen_on, "two oblique studies");
    assert_eq!(op.false_positives_per_scan, 0.0);
    assert_eq!(op.p_nodule_calibration, None);
    // A calibration of p(nodule) needs reported findings on nodules and not: at a threshold
    // that reports no false positive there are none of the latter, and the command says so.
    let never = dir.path().join("never.safetensors");
    let uncalibratable = choose(
        &model,
        &never,
        &[
            "--calibrate-on",
            out.to_str().unwrap(),
            "--calibration-fitted-on",
            "the same studies",
        ],
    );
    assert!(!uncalibratable.status.success());
    let e = String::from_utf8_lossy(&uncalibratable.stderr);
    assert!(e.contains("both on nodules and not"), "{e}");
    assert!(!never.exists());
    // With a calibration in its operating point, the analysis reports p(nodule) calibrated and
    // the probability of cancer on it.
    let calibration = jnsc::jnsc::model_file::NoduleCalibration {
        a: 2.0,
        b: -1.0,
        fitted_on: "test".into(),
    };
    jnsc::jnsc::model_file::write_operating_point(
        &chosen,
        &chosen,
        &jnsc::jnsc::model_file::OperatingPoint {
            p_nodule_calibration: Some(calibration.clone()),
            ..op.clone()
        },
    )
    .unwrap();
    let again = dir.path().join("again");
    assert!(eval(&chosen, &again, &[]).status.success());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["operating_point"]["min_p_nodule"], op.min_p_nodule);
    assert_eq!(metrics["operating_point"]["false_positives_per_scan"], 0.0);
    let mut classified = 0;
    for entry in std::fs::read_dir(again.join("reports")).unwrap() {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        for f in report["findings"].as_array().unwrap() {
            let p_nodule = f["p_nodule"].as_f64().unwrap();
            let calibrated = f["p_nodule_calibrated"].as_f64().unwrap();
            assert!(
                (calibrated - calibration.apply(p_nodule)).abs() < 1e-12,
                "{f}"
            );
            if let Some(p_cancer) = f["p_cancer"].as_f64() {
                classified += 1;
                let p = f["p_cancer_finding"].as_f64().unwrap();
                assert!((p - calibrated * p_cancer).abs() < 1e-12, "{f}");
            }
        }
    }
    assert!(classified > 0);
    // It holds for the setting it was chosen with: mirrored windows change p(nodule).
    let mirrored = eval(&chosen, &dir.path().join("mirrored"), &["--mirrors", "2"]);
    assert!(!mirrored.status.success());
    let e = String::from_utf8_lossy(&mirrored.stderr);
    assert!(
        e.contains("other analysis settings only") && e.contains("2 segmentation"),
        "{e}"
    );
    // Studies analysed by another model cannot choose this one's operating point.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/jnsc.safetensors");
    std::fs::remove_file(&chosen).unwrap();
    let other = choose(&shipped, &chosen, &[]);
    assert!(!other.status.success());
    let e = String::from_utf8_lossy(&other.stderr);
    assert!(e.contains("was analysed by the model"), "{e}");
    assert!(!chosen.exists());
}

#[test]
fn eval_nodules_classifies_every_reference_nodule_the_scans_show() {
    use jnsc::datasets::{Source, SyntheticSource, nodule_boxes};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nodules");
    jnsc_ok(&[
        "eval",
        "nodules",
        "--scans",
        "3",
        "--seed",
        "500",
        "--out",
        out.to_str().unwrap(),
    ]);
    // The nodules the same scans show, found here independently of the command.
    let source = SyntheticSource::new(500, 3, [192, 192, 160]);
    let mut expected = Vec::new();
    for i in 0..3 {
        let scan = source.scan(i).unwrap();
        let boxes = nodule_boxes(&scan);
        for n in &scan.nodules {
            if boxes.contains_key(&u32::from(n.label)) {
                expected.push((
                    scan.id.clone(),
                    n.label,
                    jnsc::malignancy::score(&n.ratings),
                ));
            }
        }
    }
    assert!(expected.len() >= 3, "{expected:?}");
    let csv = std::fs::read_to_string(out.join("nodules.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), expected.len(), "{csv}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let calibration =
        jnsc::jnsc::model_file::load(&root.join(jnsc::DEFAULT_MODEL), &candle_core::Device::Cpu)
            .unwrap()
            .1
            .malignancy_calibration;
    let (mut tp, mut tn, mut malignant, mut benign) = (0, 0, 0, 0);
    for (row, (id, label, median)) in rows.iter().zip(&expected) {
        assert_eq!((row[0], row[1]), (id.as_str(), label.to_string().as_str()));
        assert_eq!(row[3].parse::<f64>().unwrap(), *median);
        let p: Vec<f64> = row[5..8].iter().map(|v| v.parse().unwrap()).collect();
        // Probabilities; benign and malignant come from one softmax (the shipped model's
        // malignancy network; non-nodule from its detector's).
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)), "{p:?}");
        assert!(p[1] + p[2] <= 1.0 + 1e-4, "{p:?}");
        let called = row[8] == "true";
        // The call is the model's: at its calibrated threshold where it carries a calibration.
        let raw = p[2] / (p[1] + p[2]);
        let expected_call = match &calibration {
            Some(c) => c.apply(raw) >= c.threshold,
            None => p[2] > p[1],
        };
        assert_eq!(called, expected_call, "{row:?}");
        if *median > 3.0 {
            malignant += 1;
            tp += usize::from(called);
        } else if *median < 3.0 {
            benign += 1;
            tn += usize::from(!called);
        }
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["nodules"], expected.len());
    let c = &metrics["classification"];
    assert_eq!(
        (c["malignant"].clone(), c["benign"].clone()),
        (malignant.into(), benign.into())
    );
    if malignant > 0 && benign > 0 {
        let balanced = (tp as f64 / malignant as f64 + tn as f64 / benign as f64) / 2.0;
        assert!((c["balanced_accuracy"].as_f64().unwrap() - balanced).abs() < 1e-12);
    }
}
