//! A series received by the node that cannot be analysed gets a refusal recorded against it,
//! with the reason an operator reads.

mod common;

use common::*;
use jnsc::store::db::Index;
use jnsc::synth::series::{SeriesSpec, write_ct_series};
use jnsc::volume::series::load_series;
use std::path::Path;

#[tokio::test(flavor = "multi_thread")]
async fn a_series_with_missing_slices_is_refused_and_the_reason_recorded() {
    let node = Node::start("");
    let mut offsets: Vec<f64> = (0..20).map(|k| k as f64 * 1.25).collect();
    offsets.drain(8..12); // a 6.25 mm gap in a 1.25 mm series
    let spec = SeriesSpec {
        slice_offsets_mm: Some(offsets),
        seed: 77,
        ..SeriesSpec::default()
    };
    let written = write_ct_series(&spec, &node.dir.join("sent")).unwrap();
    let files: Vec<&Path> = written.files.iter().map(|p| p.as_path()).collect();
    assert!(node.storescu(&[], &files).status.success());
    let dir = node.stop();

    let index = Index::open(&dir.join("storage/jnsc.db")).await.unwrap();
    let jnsc::store::db::Pool::Sqlite(sqlite) = index.pool() else {
        unreachable!("an SQLite file")
    };
    let paths: Vec<_> = index
        .series_files(&written.series_uid)
        .await
        .unwrap()
        .into_iter()
        .map(|p| dir.join("storage").join(p))
        .collect();
    assert_eq!(paths.len(), 16);
    let refusal = load_series(&paths).unwrap_err();
    assert_eq!(refusal.code(), "missing_slices");
    index
        .record_series_refusal(&written.series_uid, refusal.code(), &refusal.to_string())
        .await
        .unwrap();
    let (code, message): (String, String) =
        sqlx::query_as("SELECT refusal_code, refusal FROM series WHERE series_uid = $1")
            .bind(&written.series_uid)
            .fetch_one(sqlite)
            .await
            .unwrap();
    assert_eq!(code, "missing_slices");
    assert!(
        message.contains("slices are missing") && message.contains("6.2"),
        "{message}"
    );
}
