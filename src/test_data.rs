//! Where tests find the data they do not generate (real CT series, the development set, the
//! LUNA16 test vectors): `$JNSC_SHARED_DATA`, by default `../shared` beside the checkout. One rule
//! for the unit tests and the integration tests (`tests/common`): a missing data set skips the
//! test with a printed reason, except under `CI=true`, where it is a failure.

use std::path::{Path, PathBuf};

/// `rel` under the shared data folder.
pub fn shared_path(rel: &str) -> PathBuf {
    std::env::var_os("JNSC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join(rel)
}

/// `shared_path(rel)` if it exists; if not, a printed reason and `None`, or under `CI=true` a
/// panic (the test fails).
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = shared_path(rel);
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "test data {} not found (set JNSC_SHARED_DATA to the folder holding data/ and testvectors/)",
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
    eprintln!("skipped: {reason}");
    None
}
