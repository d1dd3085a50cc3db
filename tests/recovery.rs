//! The index is rebuilt from the stored files where it lags behind (the last commits lost in a
//! power cut), and a file cut short by a crash (before its commit, or during its commit's sync:
//! its seal does not match) is quarantined, not indexed.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn files_missing_from_the_index_are_reindexed_and_partial_files_quarantined() {
    let node = Node::start("");
    let series = synth_series(&node.dir.join("sent"), 6, 64, 41);
    let files: Vec<&Path> = series.files.iter().map(|p| p.as_path()).collect();
    assert!(node.storescu(&[], &files).status.success());
    let dir = node.stop();

    // What a power cut can leave: the last index commits gone, the mark from before them, and a
    // file whose write was cut short.
    let db_path = dir.join("storage/jnsc.db");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let lost = &series.sop_instance_uids[3..];
    let mut stored_paths = Vec::new();
    for uid in lost {
        let path: String =
            sqlx::query_scalar("SELECT path FROM instances WHERE sop_instance_uid = ?")
                .bind(uid)
                .fetch_one(&db)
                .await
                .unwrap();
        stored_paths.push(path);
        for delete in [
            "DELETE FROM instances WHERE sop_instance_uid = ?",
            "DELETE FROM instance_versions WHERE sop_instance_uid = ?",
        ] {
            sqlx::query(delete).bind(uid).execute(&db).await.unwrap();
        }
    }
    sqlx::query("UPDATE store_state SET value = 0 WHERE key = 'index_durable_until'")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let storage = dir.join("storage");
    let series_dir = storage.join(Path::new(&stored_paths[0]).parent().unwrap());
    let whole = std::fs::read(storage.join(&stored_paths[0])).unwrap();
    let partial = series_dir.join("2.25.999.dcm");
    std::fs::write(&partial, &whole[..whole.len() / 3]).unwrap();
    // And what a power cut during an instance's commit (its one sync, before the answer) can
    // leave: the first block, its seal and magic, on the disk, a later block not. It parses, and
    // sits where its UIDs say, but it is not what was sent.
    let (torn_uid, torn_path) = (&lost[2], storage.join(&stored_paths[2]));
    let mut torn = std::fs::read(&torn_path).unwrap();
    let block = torn.len() / 2 / 4096 * 4096;
    torn[block..block + 4096].fill(0);
    std::fs::write(&torn_path, &torn).unwrap();
    assert!(jnsc::store::files::FileStore::read_data_set(&torn_path).is_ok());

    let node = Node::process_in(&dir, "");
    let db = node.db().await;
    let lost = &lost[..2];
    for (uid, path) in lost.iter().zip(&stored_paths) {
        let (indexed_path, association): (String, Option<i64>) =
            sqlx::query_as("SELECT path, association FROM instances WHERE sop_instance_uid = ?")
                .bind(uid)
                .fetch_one(&db)
                .await
                .expect("lost index row rebuilt from the file");
        assert_eq!(&indexed_path, path);
        assert_eq!(association, None);
    }
    let count: i64 = sqlx::query_scalar("SELECT instance_count FROM series WHERE series_uid = ?")
        .bind(&series.series_uid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 5);
    let torn_indexed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE sop_instance_uid = ?")
            .bind(torn_uid)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(torn_indexed, 0, "a file failing its seal was indexed");
    assert!(!torn_path.exists());
    let quarantined = storage
        .join("quarantine")
        .join(torn_path.file_name().unwrap());
    assert_eq!(std::fs::read(quarantined).unwrap(), torn);
    let source: String = sqlx::query_scalar("SELECT source_ae FROM series WHERE series_uid = ?")
        .bind(&series.series_uid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(source, "TESTSCU");
    assert!(!partial.exists(), "partial file left in the instance tree");
    assert!(storage.join("quarantine/2.25.999.dcm").exists());
    let log = node.log();
    assert!(
        log.contains("re-indexed") && log.contains("quarantined"),
        "{log}"
    );
    // The node serves normally afterwards.
    assert!(node.echoscu("TESTSCU", "JNSC").status.success());
}

/// An instance's file is written while its data set arrives; a crash before the data set is
/// complete leaves a file without its DICOM magic, which the restart quarantines. The instance,
/// never acknowledged, is then stored as new when it is sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_cut_short_by_a_crash_mid_transfer_is_quarantined_and_stored_again_whole() {
    use dicom_ul::pdu::PDataValueType;
    let node = Node::process("");
    let series = synth_series(&node.dir.join("sent"), 1, 512, 43);
    let (data_set, ts) = data_set_of(&series.files[0]);
    assert_eq!(ts, EXPLICIT_VR_LE);
    let sop_uid = &series.sop_instance_uids[0];
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let command = jnsc::net::dimse::StoreRequest {
        message_id: 1,
        affected_sop_class_uid: CT_IMAGE_STORAGE,
        affected_sop_instance_uid: sop_uid,
    }
    .encode();
    scu.send_pdv(PDataValueType::Command, &command, true);
    // The head, then three quarters of the data set in fragments of 64,000 bytes: more than the
    // writer is handed at a time (256 KiB), so the file holds more than its head.
    let sent = data_set.len() * 3 / 4;
    scu.send_pdv(PDataValueType::Data, &data_set[..4096], false);
    for fragment in data_set[4096..sent].chunks(64_000) {
        scu.send_pdv(PDataValueType::Data, fragment, false);
    }
    let file = node
        .storage()
        .join("instances")
        .join(&series.study_uid)
        .join(&series.series_uid)
        .join(format!("{sop_uid}.dcm"));
    eventually(Duration::from_secs(10), "the file begun", || {
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        async move { (size > 256 * 1024).then_some(()) }
    })
    .await;
    let dir = node.crash();
    drop(scu);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() < data_set.len(), "{}", bytes.len());
    assert_eq!(
        &bytes[128..132],
        &[0; 4],
        "a partial file must not carry the DICOM magic"
    );

    let node = Node::process_in(&dir, "");
    let db = node.db().await;
    let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(indexed, 0);
    assert!(!file.exists(), "the partial file left in the instance tree");
    let quarantined = dir
        .join("storage/quarantine")
        .join(format!("{sop_uid}.dcm"));
    assert_eq!(std::fs::read(&quarantined).unwrap(), bytes);

    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, sop_uid, &data_set, 16_000)
            .status,
        jnsc::net::dimse::status::SUCCESS
    );
    scu.release();
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM instances WHERE sop_instance_uid = ?")
            .bind(sop_uid)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(version, 1);
    let stored = jnsc::store::files::FileStore::read_data_set(&file).unwrap();
    assert!(
        stored == data_set,
        "the instance stored again is not what was sent"
    );
}
