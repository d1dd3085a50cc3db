//! UIDs of the result objects, derived deterministically (UUID version 5 under the 2.25 root,
//! PS3.5 B.2) from the source series and the model, so that analysing the same series with the
//! same model again gives the same SEG and SR UIDs: the new objects replace the old ones at the
//! destination instead of piling up beside them.

use uuid::Uuid;

/// Namespace of every UID this node derives (itself a v5 UUID of the product's name).
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, b"jnsc-node results")
}

/// A UID under 2.25 from a name: at most 44 characters, stable across runs and machines.
pub fn derived_uid(name: &str) -> String {
    format!(
        "2.25.{}",
        Uuid::new_v5(&namespace(), name.as_bytes()).as_u128()
    )
}

/// The UIDs of one analysis' results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultUids {
    pub seg_series: String,
    pub seg_instance: String,
    pub sr_series: String,
    pub sr_instance: String,
    pub dimension_organization: String,
    seed: String,
}

impl ResultUids {
    /// The UIDs for results of `source_series_uid` produced by model `model_name` `model_version`.
    pub fn new(source_series_uid: &str, model_name: &str, model_version: &str) -> Self {
        let seed = format!("{source_series_uid}|{model_name}|{model_version}");
        let uid = |what: &str| derived_uid(&format!("{seed}|{what}"));
        Self {
            seg_series: uid("seg-series"),
            seg_instance: uid("seg-instance"),
            sr_series: uid("sr-series"),
            sr_instance: uid("sr-instance"),
            dimension_organization: uid("dimension-organization"),
            seed,
        }
    }

    /// Tracking UID of finding `number` (from 1), shared by its SR groups and its SEG segment.
    pub fn tracking(&self, number: usize) -> String {
        derived_uid(&format!("{}|tracking|{number}", self.seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_X: &str = "2.25.179134649654490323820335054754841724125";

    #[test]
    fn uids_are_stable_valid_and_distinct() {
        let a = ResultUids::new("1.2.3", "jnsc", "0.1.0");
        assert_eq!(a, ResultUids::new("1.2.3", "jnsc", "0.1.0"));
        let b = ResultUids::new("1.2.3", "jnsc", "0.2.0");
        assert_ne!(a.seg_instance, b.seg_instance);
        let all = [
            &a.seg_series,
            &a.seg_instance,
            &a.sr_series,
            &a.sr_instance,
            &a.dimension_organization,
            &a.tracking(1),
            &a.tracking(2),
        ];
        for (i, uid) in all.iter().enumerate() {
            assert!(uid.len() <= 64, "{uid}");
            assert!(uid.starts_with("2.25.") && !uid[5..].starts_with('0') || uid == &"2.25.0");
            assert!(uid.chars().all(|c| c.is_ascii_digit() || c == '.'));
            for other in &all[i + 1..] {
                assert_ne!(uid, other);
            }
        }
        // Pinned: a change of derivation would silently duplicate results at every PACS.
        assert_eq!(derived_uid("x"), PINNED_X);
    }
}
