//! When the index cannot take rows. A real full file system under the SQLite index (a small tmpfs
//! mounted by the test, as root): index commits fail for lack of space; every store answered
//! Success (its file is durable) must be in the index that another connection reads once space
//! is free again, and the index checkpoints again. (It used to be answered Success for ever after
//! one "database or disk is full", with nothing committed and the database locked.) An index
//! that keeps refusing an acknowledged instance's row makes the node refuse new instances
//! (0xA700) until the row is in. And the disk floor, on a full storage file system.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(parent: &Path, size: &str) -> Tmpfs {
        let path = parent.join("small-fs");
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test suite runs as root)"
        );
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system with one file until it is full; returns the file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

const SUCCESS: u16 = 0x0000;
const OUT_OF_RESOURCES: u16 = 0xA700;

#[tokio::test(flavor = "multi_thread")]
async fn the_index_commits_again_after_the_disk_was_full() {
    let dir = tempfile::Builder::new()
        .prefix("jnsc-test-")
        .tempdir()
        .unwrap()
        .keep();
    let small = Tmpfs::mount(&dir, "2m");
    let db = small.path.join("jnsc.db");
    let mut node = Node::process_in_with(
        &dir,
        "",
        &format!("db = \"{}\"\nmin_free_mb = 0", db.display()),
    );
    let series = synth_series(&dir.join("series"), 40, 32, 9);
    let instances: Vec<(Vec<u8>, String)> = series
        .files
        .iter()
        .map(|f| data_set_of(f).0)
        .zip(series.sop_instance_uids.iter().cloned())
        .collect();
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let mut stored = Vec::new();
    let (first, first_uid) = &instances[0];
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, first_uid, first, 8000).status,
        SUCCESS
    );
    stored.push(first_uid.clone());

    // The index's file system fills up: index commits fail. A store is answered Success once its
    // file is durable (the files are on another file system), its row retried until it is in;
    // while rows keep failing, new stores are refused with 0xA700.
    let filler = fill(&small.path);
    let mut next = instances[1..].iter();
    for (bytes, uid) in next.by_ref().take(20) {
        match scu.store(CT_IMAGE_STORAGE, uid, bytes, 8000).status {
            SUCCESS => stored.push(uid.clone()),
            OUT_OF_RESOURCES => {}
            other => panic!("status {other:#06x} on a full index"),
        }
    }
    assert!(
        node.log().contains("cannot be indexed yet"),
        "the full file system never failed an index commit\n{}",
        node.log()
    );

    // Space again: every store is answered Success and is in the index.
    std::fs::remove_file(filler).unwrap();
    for (bytes, uid) in next.take(10) {
        let response = scu.store(CT_IMAGE_STORAGE, uid, bytes, 8000);
        assert_eq!(response.status, SUCCESS, "{response:?}\n{}", node.log());
        stored.push(uid.clone());
    }
    scu.release();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .read_only(true),
        )
        .await
        .unwrap();
    let indexed: Vec<String> = sqlx::query_scalar("SELECT sop_instance_uid FROM instances")
        .fetch_all(&pool)
        .await
        .unwrap();
    for uid in &stored {
        assert!(
            indexed.contains(uid),
            "{uid} was answered Success but is not in the index ({} of {} indexed)\n{}",
            indexed.len(),
            stored.len(),
            node.log()
        );
    }
    // The association log of that period reached the index too.
    // (Logged just after the release.)
    eventually(
        Duration::from_secs(10),
        "the association's end logged",
        || {
            let pool = pool.clone();
            async move {
                let logged: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM associations \
                 WHERE calling_ae = 'RAWSCU' AND ended_at IS NOT NULL",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                (logged == 1).then_some(())
            }
        },
    )
    .await;
    pool.close().await;
    // And the periodic checkpoint (every 10 s) succeeds again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let log = node.log();
    assert!(node.is_running());
    assert!(
        !log.lines()
            .skip_while(|l| !l.contains("association ended"))
            .any(|l| l.contains("index checkpoint failed")),
        "{log}"
    );
    node.stop();
    drop(small);
}

/// An index that refuses an acknowledged instance's row (here a trigger the test adds to the
/// node's SQLite index from another connection): that instance is answered Success (its file is
/// durable) and its row retried; the next instance is refused with 0xA700, its file never
/// written; once the index takes rows again, new instances are answered Success, and at the
/// release every acknowledged instance is in the index.
#[tokio::test(flavor = "multi_thread")]
async fn new_instances_are_refused_while_an_acknowledged_one_cannot_be_indexed() {
    let dir = tempfile::Builder::new()
        .prefix("jnsc-test-")
        .tempdir()
        .unwrap()
        .keep();
    let db = dir.join("jnsc.db");
    let mut node = Node::process_in_with(&dir, "", &format!("db = \"{}\"", db.display()));
    let series = synth_series(&dir.join("series"), 4, 32, 12);
    let uids = &series.sop_instance_uids;
    let data_sets: Vec<Vec<u8>> = series.files.iter().map(|f| data_set_of(f).0).collect();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&db))
        .await
        .unwrap();
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let status =
        |scu: &mut RawScu, i: usize| scu.store(CT_IMAGE_STORAGE, &uids[i], &data_sets[i], 8000);
    assert_eq!(status(&mut scu, 0).status, SUCCESS);
    // Its row follows the answer: wait for it before the index starts refusing rows.
    eventually(Duration::from_secs(10), "the first row indexed", || {
        let pool = pool.clone();
        async move {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
                .fetch_one(&pool)
                .await
                .unwrap();
            (rows == 1).then_some(())
        }
    })
    .await;

    sqlx::query(
        "CREATE TRIGGER test_refuses BEFORE INSERT ON instance_versions \
         BEGIN SELECT RAISE(ABORT, 'the test refuses this row'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(status(&mut scu, 1).status, SUCCESS, "{}", node.log());
    let refused = status(&mut scu, 2);
    assert_eq!(refused.status, OUT_OF_RESOURCES, "{}", node.log());
    assert!(
        refused
            .error_comment
            .as_deref()
            .is_some_and(|c| c.contains("not yet indexed")),
        "{refused:?}"
    );
    // IT staff see it: not ready, and the count on /status.
    let (code, ready) = node.get("/ready", None);
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("wait for their index rows"), "{ready}");
    let (_, report) = node.get("/status", None);
    assert!(
        report.contains("\"instances_awaiting_index\":1"),
        "{report}"
    );

    sqlx::query("DROP TRIGGER test_refuses")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(status(&mut scu, 3).status, SUCCESS, "{}", node.log());
    let (_, report) = node.get("/status", None);
    assert!(
        report.contains("\"instances_awaiting_index\":0"),
        "{report}"
    );
    scu.release();
    let mut indexed: Vec<String> = sqlx::query_scalar("SELECT sop_instance_uid FROM instances")
        .fetch_all(&pool)
        .await
        .unwrap();
    indexed.sort();
    let mut acknowledged = [uids[0].clone(), uids[1].clone(), uids[3].clone()];
    acknowledged.sort();
    assert_eq!(indexed, acknowledged, "{}", node.log());
    let files = std::fs::read_dir(dir.join("storage/instances"))
        .unwrap()
        .flat_map(|study| std::fs::read_dir(study.unwrap().path()).unwrap())
        .flat_map(|series| std::fs::read_dir(series.unwrap().path()).unwrap())
        .count();
    assert_eq!(files, 3, "the refused instance's file was written");
    pool.close().await;
    assert!(node.is_running());
    node.stop();
}

/// The disk floor holds during an association, not only when one starts: instances that would
/// leave less than `storage.min_free_mb` free are refused with 0xA700, and the file system keeps
/// that much free (for the index, the results and the other associations).
#[tokio::test(flavor = "multi_thread")]
async fn the_disk_floor_holds_within_an_association() {
    let dir = tempfile::Builder::new()
        .prefix("jnsc-test-")
        .tempdir()
        .unwrap()
        .keep();
    let small = Tmpfs::mount(&dir, "8m");
    let storage = small.path.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let config = dir.join("jnsc.toml");
    std::fs::write(
        &config,
        format!(
            "[dicom]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = \"{}\"\nmin_free_mb = 4\n\
             [status]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nanalyze = false\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut node = Node::process_with_config(&dir, &config);
    // 256 x 256 x 16 bits: 128 KiB per instance.
    let series = synth_series(&dir.join("series"), 40, 256, 11);
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let (mut stored, mut refused) = (0, 0);
    for (file, uid) in series.files.iter().zip(&series.sop_instance_uids) {
        let response = scu.store(CT_IMAGE_STORAGE, uid, &data_set_of(file).0, 16000);
        match response.status {
            SUCCESS => stored += 1,
            OUT_OF_RESOURCES => {
                refused += 1;
                assert!(
                    response
                        .error_comment
                        .as_deref()
                        .unwrap_or("")
                        .contains("floor"),
                    "{response:?}"
                );
            }
            other => panic!("status {other:#06x}"),
        }
    }
    scu.release();
    assert!(
        stored > 0 && refused > 0,
        "stored {stored}, refused {refused}"
    );
    // The floor is checked before each instance file; the index rows that follow (a few KiB)
    // are what it keeps room for.
    let free = jnsc::store::files::disk_space(&storage).unwrap().free_bytes;
    assert!(
        free >= 4 * 1024 * 1024 - 512 * 1024,
        "{} KiB left free with a 4 MiB floor",
        free / 1024
    );
    assert!(node.is_running());
    node.stop();
    drop(small);
}
