//! Results end to end: DCMTK `storescu` sends a synthetic chest CT to the node, the worker
//! analyses it with the shipped model, and the SEG and SR arrive at a real PACS (DCMTK
//! `storescp`, or a pynetdicom SCP that refuses them). The objects are checked by dciodvfy,
//! highdicom (as a viewer reads them) and PixelMed's SR validator; the index must record every
//! job, attempt and failure. Fault cases: the destination down (back-off, then delivery), a
//! restart with results in the outbox, a destination that refuses the SOP classes, and a series
//! that cannot be analysed.

mod common;

use common::pacs::Pacs;
use common::{Node, eventually, free_port, small_study, synth_series};
use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long one analysis of the small study may take on a loaded 2-core machine.
const ANALYSIS: Duration = Duration::from_secs(300);

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = jnsc::volume::series::files_in(dir).unwrap();
    files.sort();
    files
}

/// Configuration sending results of the test's storescu (calling AE TESTSCU) to `port`.
fn peer_config(port: u16, extra: &str) -> String {
    format!(
        "[[dicom.peers]]\nae_title = \"TESTSCU\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         dest_ae_title = \"PACS\"\n[pipeline]\nstable_age_secs = 1\n\
         [sender]\nretry_base_secs = 1\nretry_max_secs = 2\n{extra}"
    )
}

fn send_study(node: &Node, dir: &Path) {
    let files = dicom_files(dir);
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = node.storescu(&[], &refs);
    assert!(
        out.status.success(),
        "storescu failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// dciodvfy: the IOD validator must print no error.
fn assert_dciodvfy_clean(file: &Path) {
    let out = Command::new("/usr/bin/dciodvfy")
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy on {}:\n{text}", file.display());
}

/// PixelMed's DicomSRValidator. Its 2022 build checks every measurement group of a report
/// against each of the group templates it found in it, so a TID 1411 group is also checked
/// against the TID 1410 rules and the reverse, and it reports the other template's conditional
/// items as missing (or as present). It also does not take a SCOORD3D Image Region (each
/// nodule's centre point) as a TID 1410 region, which PS3.16 and highdicom do. Only those
/// messages are accepted: a TID 1410 axial group (the long and short axis) must pass TID 1410.
fn assert_pixelmed_clean(sr: &Path) {
    let out = Command::new("java")
        .args([
            "-Djdk.xml.xpathExprOpLimit=0",
            "-Djdk.xml.xpathExprGrpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0",
            "-Xss8m",
            "-cp",
            "/usr/share/java/pixelmed.jar",
            "com.pixelmed.validate.DicomSRValidator",
        ])
        .arg(sr)
        .output()
        .expect("java runs PixelMed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Found Root Template TID_1500"),
        "PixelMed did not recognise TID 1500:\n{text}"
    );
    let groups = measurement_groups(sr);
    let at = |kind: GroupKind| -> Vec<String> {
        groups
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, location)| format!("within {location}:"))
            .collect()
    };
    let (volumetric, centres) = (at(GroupKind::Volumetric), at(GroupKind::Centre));
    let planar: Vec<String> = [centres.clone(), at(GroupKind::Axial)].concat();
    let conditional = |line: &str| {
        line.ends_with("Missing conditional content item")
            || line.ends_with("Conditional content item present when condition not satisfied")
    };
    for line in text.lines().filter(|l| l.starts_with("Error")) {
        let in_any = |locations: &[String]| locations.iter().any(|l| line.contains(l.as_str()));
        let quirk = conditional(line)
            && ((line.starts_with("Error: Template 1411 ") && in_any(&planar))
                || (line.starts_with("Error: Template 1410 ")
                    && (in_any(&volumetric) || in_any(&centres))));
        assert!(quirk, "PixelMed error on {}: {line}\n{text}", sr.display());
    }
    assert!(!at(GroupKind::Axial).is_empty() || groups.is_empty());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    /// TID 1411, tied to the SEG segment.
    Volumetric,
    /// TID 1410 with the centre as a SCOORD3D point.
    Centre,
    /// TID 1410 with the long and short axis on one slice.
    Axial,
}

/// Kind and position ("1.i.j") of each measurement group in the SR content tree.
fn measurement_groups(sr: &Path) -> Vec<(GroupKind, String)> {
    let object = dicom_object::open_file(sr).unwrap();
    let root = jnsc::attributes::items(&object, tags::CONTENT_SEQUENCE).unwrap_or(&[]);
    let mut groups = Vec::new();
    for (i, item) in root.iter().enumerate() {
        for (j, group) in jnsc::attributes::items(item, tags::CONTENT_SEQUENCE)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let template = jnsc::attributes::first_item(group, tags::CONTENT_TEMPLATE_SEQUENCE)
                .and_then(|t| jnsc::attributes::text(t, tags::TEMPLATE_IDENTIFIER));
            let children = jnsc::attributes::items(group, tags::CONTENT_SEQUENCE).unwrap_or(&[]);
            let has = |value_type: &str| {
                children.iter().any(|c| {
                    jnsc::attributes::text(c, tags::VALUE_TYPE).as_deref() == Some(value_type)
                })
            };
            let kind = match template.as_deref() {
                Some("1411") => GroupKind::Volumetric,
                Some("1410") if has("SCOORD3D") => GroupKind::Centre,
                Some("1410") => GroupKind::Axial,
                _ => continue,
            };
            groups.push((kind, format!("1.{}.{}", i + 1, j + 1)));
        }
    }
    groups
}

/// highdicom reads the objects back and they match the node's record and the CT.
fn assert_highdicom_consistent(summary: &Path, ct: &Path, sr: &Path, seg: Option<&Path>) {
    let mut command = Command::new("python3");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/check_results.py"))
        .args([summary, ct, sr]);
    if let Some(seg) = seg {
        command.arg(seg);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `jnsc analyze --results DIR` on a series at p(nodule) >= 0.3 with at most `max_findings`
/// reported; returns the `results.json` it wrote.
fn analyze_into(series: &Path, dir: &Path, max_findings: usize) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .arg("analyze")
        .arg(series)
        .args([
            "--json",
            "/dev/null",
            "--min-p-nodule",
            "0.3",
            "--max-findings",
        ])
        .arg(max_findings.to_string())
        .arg("--results")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

/// The SOP Class UID of a received file.
fn sop_class(path: &Path) -> String {
    let object = dicom_object::open_file(path).unwrap();
    jnsc::attributes::text(&object, tags::SOP_CLASS_UID).unwrap()
}

const SEG: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_reach_the_pacs_as_a_valid_seg_and_tid1500_sr() {
    let (_study_dir, study) = small_study(7, 3);
    let pacs_port = free_port();
    let pacs = Pacs::dcmtk(pacs_port);
    // A low reporting threshold, so that the SEG has several segments.
    let node = Node::start(&peer_config(
        pacs_port,
        "[results]\nmin_p_nodule = 0.3\nmax_findings = 4",
    ));
    send_study(&node, &study);

    let received = eventually(ANALYSIS, "SEG and SR at the PACS", || {
        let files = pacs.received();
        async move { (files.len() == 2).then_some(files) }
    })
    .await;
    let seg = received
        .iter()
        .find(|p| sop_class(p) == SEG)
        .expect("a SEG arrived");
    let sr = received
        .iter()
        .find(|p| sop_class(p) == SR)
        .expect("an SR arrived");

    // The index: a done job with its stage timings, two results, two sent outbox rows.
    let db = node.db().await;
    let (state, timings, findings): (String, String, i64) =
        sqlx::query_as("SELECT state, timings, findings FROM jobs")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(state, "done");
    let timings: serde_json::Value = serde_json::from_str(&timings).unwrap();
    for stage in jnsc::metrics::Stage::ALL.iter().map(|s| s.name()) {
        assert!(
            timings[stage].as_f64().is_some_and(|ms| ms >= 0.0),
            "stage {stage}: {timings}"
        );
    }
    assert!(
        findings >= 1,
        "the study's nodules give at least one finding"
    );
    let sent: i64 = eventually(Duration::from_secs(10), "both rows sent", || {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'sent'")
                .fetch_one(&db)
                .await
                .unwrap();
            (n == 2).then_some(n)
        }
    })
    .await;
    assert_eq!(sent, 2);
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM send_attempts WHERE outcome = 'sent'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    let sr_path: String = sqlx::query_scalar("SELECT path FROM results WHERE kind = 'sr'")
        .fetch_one(&db)
        .await
        .unwrap();
    let summary_path = node
        .storage()
        .join(Path::new(&sr_path).parent().unwrap())
        .join("results.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(
        summary["findings"].as_array().unwrap().len() as i64,
        findings
    );

    // Validators.
    assert_dciodvfy_clean(seg);
    assert_dciodvfy_clean(sr);
    assert_pixelmed_clean(sr);
    assert_highdicom_consistent(&summary_path, &study, sr, Some(seg));

    // Deterministic: `jnsc analyze --results` on the same series gives the same UIDs and findings,
    // so a re-analysis replaces the objects at the PACS instead of adding new ones.
    let again = tempfile::tempdir().unwrap();
    let cli = analyze_into(&study, again.path(), 4);
    assert_eq!(cli["sr"], summary["sr"]);
    assert_eq!(cli["seg"], summary["seg"]);
    assert_eq!(cli["findings"], summary["findings"]);

    // Changed content (one finding reported instead of several): a new revision, with new
    // instance UIDs in the same series, which an archive keeping the first object under a UID
    // would otherwise drop; the SR names the one it replaces.
    let changed = analyze_into(&study, again.path(), 1);
    assert_eq!(changed["findings"].as_array().unwrap().len(), 1);
    assert_eq!(changed["revision"], 2);
    assert_eq!(changed["predecessor"], summary["sr"]);
    for kind in ["sr", "seg"] {
        assert_ne!(
            changed[kind]["sop_instance_uid"], summary[kind]["sop_instance_uid"],
            "{kind}"
        );
        assert_eq!(
            changed[kind]["series_uid"], summary[kind]["series_uid"],
            "{kind}"
        );
    }
    let new_sr = again.path().join("sr.dcm");
    let object = dicom_object::open_file(&new_sr).unwrap();
    assert_eq!(
        jnsc::attributes::text(&object, tags::INSTANCE_NUMBER).as_deref(),
        Some("2")
    );
    let predecessor = jnsc::attributes::first_item(&object, tags::PREDECESSOR_DOCUMENTS_SEQUENCE)
        .and_then(|study| jnsc::attributes::first_item(study, tags::REFERENCED_SERIES_SEQUENCE))
        .and_then(|series| jnsc::attributes::first_item(series, tags::REFERENCED_SOP_SEQUENCE))
        .and_then(|sop| jnsc::attributes::text(sop, tags::REFERENCED_SOP_INSTANCE_UID));
    assert_eq!(
        predecessor.as_deref(),
        summary["sr"]["sop_instance_uid"].as_str()
    );
    assert_dciodvfy_clean(&new_sr);
    assert_pixelmed_clean(&new_sr);
    assert_highdicom_consistent(
        &again.path().join("results.json"),
        &study,
        &new_sr,
        Some(&again.path().join("seg.dcm")),
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_for_a_destination_that_is_down_and_survive_a_restart() {
    let (_study_dir, study) = small_study(11, 2);
    let pacs_port = free_port();
    // Nothing is reported (threshold above any probability): the SR alone says "no nodule".
    let extra = peer_config(pacs_port, "[results]\nmin_p_nodule = 1.0");
    let node = Node::start(&extra);
    send_study(&node, &study);
    let db = node.db().await;

    // The destination is down: attempts are recorded and retried with back-off.
    let retries = eventually(ANALYSIS, "two failed attempts", || {
        let db = db.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM send_attempts WHERE outcome = 'retry'")
                    .fetch_one(&db)
                    .await
                    .unwrap();
            (n >= 2).then_some(n)
        }
    })
    .await;
    assert!(retries >= 2);
    let (state, error): (String, String) = sqlx::query_as("SELECT state, last_error FROM outbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(state, "pending");
    assert!(error.contains("127.0.0.1"), "{error}");

    // It comes back: the SR is delivered at the next attempt.
    let pacs = Pacs::dcmtk(pacs_port);
    let received = eventually(Duration::from_secs(30), "the SR at the PACS", || {
        let files = pacs.received();
        async move { (files.len() == 1).then_some(files) }
    })
    .await;
    assert_eq!(sop_class(&received[0]), SR);
    assert_dciodvfy_clean(&received[0]);
    assert_pixelmed_clean(&received[0]);
    let sr_path: String = sqlx::query_scalar("SELECT path FROM results WHERE kind = 'sr'")
        .fetch_one(&db)
        .await
        .unwrap();
    let summary = node
        .storage()
        .join(Path::new(&sr_path).parent().unwrap())
        .join("results.json");
    assert_highdicom_consistent(&summary, &study, &received[0], None);
    let seg_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM results WHERE kind = 'seg'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seg_rows, 0, "no SEG without a finding");

    // The destination goes down again; an operator asks for the study to be sent again, and the
    // node restarts before it could deliver: the outbox row survives and is sent after the start.
    drop(pacs);
    let study_uid: String = sqlx::query_scalar("SELECT study_uid FROM studies")
        .fetch_one(&db)
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(["resend", &study_uid, "--config"])
        .arg(node.dir.join("jnsc.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(30),
        "a failed attempt of the re-sent row",
        || {
            let db = db.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts >= 1",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                (n == 1).then_some(())
            }
        },
    )
    .await;
    db.close().await;
    let dir = node.stop();
    let pacs = Pacs::dcmtk(pacs_port);
    let node = Node::start_in(&dir, &extra);
    eventually(
        Duration::from_secs(30),
        "the SR delivered after the restart",
        || {
            let files = pacs.received();
            async move { (files.len() == 1).then_some(()) }
        },
    )
    .await;
    let db = node.db().await;
    // The file is at the PACS before the response is recorded: wait for the record.
    eventually(
        Duration::from_secs(10),
        "both rows recorded as sent",
        || {
            let db = db.clone();
            async move {
                let states: Vec<String> =
                    sqlx::query_scalar("SELECT state FROM outbox ORDER BY id")
                        .fetch_all(&db)
                        .await
                        .unwrap();
                (states == ["sent", "sent"]).then_some(())
            }
        },
    )
    .await;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "a restart does not analyse the study again");
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_refusing_the_sop_classes_is_a_permanent_failure() {
    let (_study_dir, study) = small_study(13, 1);
    let pacs_port = free_port();
    let _pacs = Pacs::ct_only(pacs_port);
    let node = Node::start(&peer_config(pacs_port, "[results]\nmin_p_nodule = 1.0"));
    send_study(&node, &study);
    let db = node.db().await;
    let (error, attempts): (String, i64) = eventually(ANALYSIS, "a failed outbox row", || {
        let db = db.clone();
        async move {
            sqlx::query_as("SELECT last_error, attempts FROM outbox WHERE state = 'failed'")
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(attempts, 1, "not retried");
    assert!(error.contains("accepted none"), "{error}");
    // Several back-off periods later it has still not been retried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (state, attempts): (String, i64) = sqlx::query_as("SELECT state, attempts FROM outbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!((state.as_str(), attempts), ("failed", 1));
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM send_attempts WHERE outcome = 'failed'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_that_cannot_be_analysed_fails_its_job_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Six slices: too few for a chest CT volume.
    let series = synth_series(dir.path(), 6, 64, 5);
    let pacs_port = free_port();
    let node = Node::start(&peer_config(pacs_port, ""));
    let files = dicom_files(dir.path());
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    assert!(node.storescu(&[], &refs).status.success());
    let db = node.db().await;
    let (state, code, error): (String, String, String) =
        eventually(Duration::from_secs(60), "the failed job", || {
            let db = db.clone();
            async move {
                sqlx::query_as("SELECT state, error_code, error FROM jobs WHERE state = 'failed'")
                    .fetch_optional(&db)
                    .await
                    .unwrap()
            }
        })
        .await;
    assert_eq!(
        (state.as_str(), code.as_str()),
        ("failed", "too_few_slices")
    );
    assert!(error.contains('6'), "{error}");
    let refusal: Option<String> =
        sqlx::query_scalar("SELECT refusal_code FROM series WHERE series_uid = ?")
            .bind(&series.series_uid)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(refusal.as_deref(), Some("too_few_slices"));
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    node.stop();
}
