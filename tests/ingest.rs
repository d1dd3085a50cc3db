//! The node receives CT series from real DCMTK peers, stores them bit for bit, indexes them,
//! and queues complete series.

mod common;

use common::*;
use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{PixelDecoder, PixelRepresentation};
use sqlx::Row;
use std::path::Path;
use std::time::Duration;

/// The stored file holds the data set that was sent, compared element by element (tag, VR and
/// value; DCMTK's storescu re-encodes sequence lengths and drops Data Set Trailing Padding when it
/// sends, so neither is compared), in the same transfer syntax.
fn assert_same_data_set(sent: &Path, stored: &Path) {
    let a = dicom_object::open_file(sent).unwrap();
    let b = dicom_object::open_file(stored).unwrap();
    assert_eq!(
        a.meta().transfer_syntax(),
        b.meta().transfer_syntax(),
        "transfer syntax changed"
    );
    assert_same_elements(&a, &b, "");
}

fn assert_same_elements(a: &InMemDicomObject, b: &InMemDicomObject, path: &str) {
    let padding = dicom_core::Tag(0xFFFC, 0xFFFC);
    let sent: Vec<_> = a.iter().filter(|e| e.tag() != padding).collect();
    let stored: Vec<_> = b.iter().collect();
    assert_eq!(
        sent.len(),
        stored.len(),
        "element count differs in {path:?}"
    );
    for (x, y) in sent.iter().zip(&stored) {
        let here = format!("{path}{}", x.tag());
        assert_eq!(x.tag(), y.tag(), "{here}");
        assert_eq!(x.vr(), y.vr(), "VR of {here} differs");
        match (x.value(), y.value()) {
            (Value::Sequence(p), Value::Sequence(q)) => {
                assert_eq!(p.items().len(), q.items().len(), "items of {here}");
                for (i, (u, v)) in p.items().iter().zip(q.items()).enumerate() {
                    assert_same_elements(u, v, &format!("{here}[{i}]."));
                }
            }
            (Value::PixelSequence(p), Value::PixelSequence(q)) => {
                assert!(p.fragments() == q.fragments(), "fragments of {here} differ");
            }
            (p, q) => assert!(p == q, "value of {here} differs"),
        }
    }
}

/// The decoded stored pixel values (no rescale applied).
fn raw_samples(path: &Path) -> Vec<i32> {
    let object = dicom_object::open_file(path).unwrap();
    let decoded = object
        .decode_pixel_data()
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    assert_eq!(decoded.bits_allocated(), 16);
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    decoded
        .data()
        .chunks_exact(2)
        .map(|b| {
            if signed {
                i32::from(i16::from_le_bytes([b[0], b[1]]))
            } else {
                i32::from(u16::from_le_bytes([b[0], b[1]]))
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn series_arrives_is_stored_identically_indexed_and_queued() {
    let node = Node::start("[pipeline]\nstable_age_secs = 1\nanalyze = false");
    let echo = node.echoscu("TESTSCU", "JNSC");
    assert!(echo.status.success(), "C-ECHO failed: {echo:?}");

    let series = synth_series(&node.dir.join("sent"), 12, 128, 7);
    let files: Vec<&Path> = series.files.iter().map(|p| p.as_path()).collect();
    let out = node.storescu(&[], &files);
    assert!(out.status.success(), "storescu failed: {out:?}");

    let db = node.db().await;
    for (file, sop_uid) in series.files.iter().zip(&series.sop_instance_uids) {
        let row = sqlx::query(
            "SELECT path, series_uid, sop_class_uid, transfer_syntax, instance_number, rows,
                    columns, version FROM instances WHERE sop_instance_uid = ?",
        )
        .bind(sop_uid)
        .fetch_one(&db)
        .await
        .expect("instance indexed");
        assert_eq!(row.get::<String, _>("series_uid"), series.series_uid);
        assert_eq!(row.get::<String, _>("sop_class_uid"), CT_IMAGE_STORAGE);
        assert_eq!(row.get::<String, _>("transfer_syntax"), EXPLICIT_VR_LE);
        assert_eq!(row.get::<i64, _>("rows"), 128);
        assert_eq!(row.get::<i64, _>("columns"), 128);
        assert_eq!(row.get::<i64, _>("version"), 1);
        let stored = node.storage().join(row.get::<String, _>("path"));
        assert_same_data_set(file, &stored);
        let meta = dicom_object::open_file(&stored).unwrap();
        assert_eq!(
            meta.meta().source_application_entity_title(),
            Some("TESTSCU")
        );
    }
    let study = sqlx::query(
        "SELECT s.accession_number, p.patient_id FROM studies s JOIN patients p
         ON p.id = s.patient WHERE s.study_uid = ?",
    )
    .bind(&series.study_uid)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(study.get::<String, _>("accession_number"), "SYN0001");
    assert_eq!(study.get::<String, _>("patient_id"), "SYNTH0001");

    let association = sqlx::query(
        "SELECT calling_ae, called_ae, end_state, instances_ok, failures, ended_at
         FROM associations WHERE calling_ae = 'TESTSCU' AND instances_ok > 0",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(association.get::<i64, _>("instances_ok"), 12);
    assert_eq!(association.get::<i64, _>("failures"), 0);
    assert_eq!(association.get::<String, _>("end_state"), "released");
    assert!(association.get::<Option<i64>, _>("ended_at").is_some());

    let (state, count): (String, i64) = eventually(Duration::from_secs(15), "a queued job", || {
        let db = db.clone();
        let series_uid = series.series_uid.clone();
        async move {
            sqlx::query_as("SELECT state, instance_count FROM jobs WHERE series_uid = ?")
                .bind(series_uid)
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!((state.as_str(), count), ("queued", 12));
    let series_state: String = sqlx::query_scalar("SELECT state FROM series WHERE series_uid = ?")
        .bind(&series.series_uid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(series_state, "complete");
}

#[tokio::test(flavor = "multi_thread")]
async fn late_instance_requeues_a_completed_series() {
    let node = Node::start("[pipeline]\nstable_age_secs = 1\nanalyze = false");
    let series = synth_series(&node.dir.join("sent"), 4, 32, 11);
    let first: Vec<&Path> = series.files[..3].iter().map(|p| p.as_path()).collect();
    assert!(node.storescu(&[], &first).status.success());
    let db = node.db().await;
    let job_of = |db: sqlx::SqlitePool, uid: String| async move {
        sqlx::query_as::<_, (i64, String, i64)>(
            "SELECT id, state, instance_count FROM jobs WHERE series_uid = ? ORDER BY id DESC",
        )
        .bind(uid)
        .fetch_optional(&db)
        .await
        .unwrap()
    };
    let (first_job, _, count) = eventually(Duration::from_secs(15), "first job", || {
        job_of(db.clone(), series.series_uid.clone())
    })
    .await;
    assert_eq!(count, 3);
    // The job runner does not exist yet: finish the job by hand, as the worker will.
    let writer = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        node.storage().join("jnsc.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET state = 'done' WHERE id = ?")
        .bind(first_job)
        .execute(&writer)
        .await
        .unwrap();
    writer.close().await;

    assert!(
        node.storescu(&[], &[series.files[3].as_path()])
            .status
            .success()
    );
    let (second_job, state, count) = eventually(Duration::from_secs(15), "second job", || {
        let db = db.clone();
        let uid = series.series_uid.clone();
        async move { job_of(db, uid).await.filter(|(id, _, _)| *id != first_job) }
    })
    .await;
    assert!(second_job > first_job);
    assert_eq!((state.as_str(), count), ("queued", 4));
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_transfer_syntaxes_are_accepted_and_decode() {
    let wg04 = shared_or_skip!("data/ct/wg04");
    let node = Node::start("");
    // (file suffix, storescu option proposing its transfer syntax, lossless?)
    let encodings = [
        ("RLE", "-xr", true),
        ("JPLL", "-xs", true),
        ("J2KR", "-xv", true),
        ("J2KI", "-xw", false),
        ("JLSL", "-xt", true),
        ("JLSN", "-xu", false),
    ];
    let db = node.db().await;
    for slice in ["CT1", "CT2"] {
        let reference_pixels = raw_samples(&wg04.join(format!("{slice}_UNC")));
        for (suffix, option, lossless) in encodings {
            let sent = wg04.join(format!("{slice}_{suffix}"));
            let out = node.storescu(&[option], &[sent.as_path()]);
            assert!(out.status.success(), "{slice}_{suffix}: {out:?}");
            let sop_uid = dicom_object::open_file(&sent)
                .unwrap()
                .element(tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_owned();
            let path: String =
                sqlx::query_scalar("SELECT path FROM instances WHERE sop_instance_uid = ?")
                    .bind(&sop_uid)
                    .fetch_one(&db)
                    .await
                    .unwrap_or_else(|_| panic!("{slice}_{suffix} not indexed"));
            let stored = node.storage().join(path);
            assert_same_data_set(&sent, &stored);
            let pixels = raw_samples(&stored);
            assert_eq!(pixels.len(), reference_pixels.len());
            if lossless {
                assert!(
                    pixels == reference_pixels,
                    "{slice}_{suffix} is not lossless"
                );
            } else {
                // Lossy: close to the original on average, and not a copy of it.
                let total: i64 = pixels
                    .iter()
                    .zip(&reference_pixels)
                    .map(|(a, b)| i64::from((a - b).abs()))
                    .sum();
                let mean_error = total as f64 / pixels.len() as f64;
                let n = reference_pixels.len() as f64;
                let mean = reference_pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let spread = (reference_pixels
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt();
                assert!(
                    mean_error > 0.0 && mean_error < 0.05 * spread,
                    "{slice}_{suffix} mean error {mean_error}, spread {spread}"
                );
            }
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn dcmtk_compressed_series_is_accepted() {
    let node = Node::start("");
    let series = synth_series(&node.dir.join("sent"), 3, 64, 21);
    let compressed = node.dir.join("rle");
    std::fs::create_dir_all(&compressed).unwrap();
    let mut files = Vec::new();
    for (i, file) in series.files.iter().enumerate() {
        let (tool, out) = if i % 2 == 0 {
            ("/usr/bin/dcmcrle", compressed.join(format!("{i}.rle.dcm")))
        } else {
            (
                "/usr/bin/dcmcjpeg",
                compressed.join(format!("{i}.jpll.dcm")),
            )
        };
        let status = std::process::Command::new(tool)
            .arg(file)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{tool} failed");
        files.push(out);
    }
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = node.storescu(&["-xr"], &paths[..1]);
    assert!(out.status.success(), "{out:?}");
    let out = node.storescu(&["-xs"], &paths[1..2]);
    assert!(out.status.success(), "{out:?}");
    let out = node.storescu(&["-xr"], &paths[2..]);
    assert!(out.status.success(), "{out:?}");
    let db = node.db().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT transfer_syntax, path FROM instances ORDER BY instance_number")
            .fetch_all(&db)
            .await
            .unwrap();
    let syntaxes: Vec<&str> = rows.iter().map(|(ts, _)| ts.as_str()).collect();
    assert_eq!(
        syntaxes,
        [
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.5"
        ]
    );
    for ((_, path), original) in rows.iter().zip(&series.files) {
        let decoded = raw_samples(&node.storage().join(path));
        let expected = raw_samples(original);
        assert!(
            decoded == expected,
            "lossless round trip through {path} failed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_associations_at_once_all_succeed() {
    let node = Node::start("");
    let mut senders = Vec::new();
    for k in 0..5u64 {
        let dir = node.dir.join(format!("sent-{k}"));
        let series = synth_series(&dir, 8, 128, 100 + k);
        let port = node.port;
        senders.push(std::thread::spawn(move || {
            let out = std::process::Command::new(STORESCU)
                .args(["-aec", "JNSC", "-aet", &format!("SCU{k}"), "+sd"])
                .args(["127.0.0.1", &port.to_string()])
                .arg(&dir)
                .output()
                .unwrap();
            (out, series)
        }));
    }
    let db = node.db().await;
    for sender in senders {
        let (out, series) = sender.join().unwrap();
        assert!(out.status.success(), "{out:?}");
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE series_uid = ?")
            .bind(&series.series_uid)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(count, 8);
    }
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM associations a JOIN associations b ON a.id < b.id
         AND a.started_at < b.ended_at AND b.started_at < a.ended_at
         WHERE a.calling_ae LIKE 'SCU%' AND b.calling_ae LIKE 'SCU%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(overlapping > 0, "the associations did not overlap in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_after_a_crash_keeps_every_acknowledged_instance() {
    let node = Node::process("[pipeline]\nstable_age_secs = 3\nanalyze = false");
    let series = synth_series(&node.dir.join("sent"), 10, 64, 31);
    let out = node.storescu(&["+sd"], &[node.dir.join("sent").as_path()]);
    assert!(out.status.success());
    // SIGKILL before the series is complete: no chance to flush anything.
    let dir = node.crash();

    let node = Node::start_in(&dir, "[pipeline]\nstable_age_secs = 3\nanalyze = false");
    let db = node.db().await;
    for (file, uid) in series.files.iter().zip(&series.sop_instance_uids) {
        let path: String =
            sqlx::query_scalar("SELECT path FROM instances WHERE sop_instance_uid = ?")
                .bind(uid)
                .fetch_one(&db)
                .await
                .expect("acknowledged instance lost");
        assert_same_data_set(file, &node.storage().join(path));
    }
    let dangling: String =
        sqlx::query_scalar("SELECT end_state FROM associations WHERE calling_ae = 'TESTSCU'")
            .fetch_one(&db)
            .await
            .unwrap();
    // Either the release was logged before the crash, or the restart closed the dangling row.
    assert!(
        ["released", "connection_lost"].contains(&dangling.as_str()),
        "{dangling}"
    );
    // The incomplete series kept waiting and completes after the restart.
    let jobs: i64 = eventually(Duration::from_secs(20), "job after restart", || {
        let db = db.clone();
        let uid = series.series_uid.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE series_uid = ?")
                .bind(uid)
                .fetch_one(&db)
                .await
                .unwrap();
            (n > 0).then_some(n)
        }
    })
    .await;
    assert_eq!(jobs, 1);
    drop(db);

    // A clean stop and start keeps the queued job as it is.
    let dir = node.stop();
    let node = Node::start_in(&dir, "[pipeline]\nstable_age_secs = 3\nanalyze = false");
    let db = node.db().await;
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE series_uid = ?")
        .bind(&series.series_uid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(state, "queued");
}
