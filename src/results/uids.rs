//! UIDs of the result objects, derived deterministically (UUID version 5 under the 2.25 root,
//! PS3.5 B.2):
//! - the series UIDs from the source series and the model, so every revision of a series'
//!   results lands in the same SEG and SR series;
//! - the instance UIDs also from the content (a digest of the reported findings and their
//!   masks) and, for the SR, from the report it replaces. The same analysis gives the same
//!   objects, which an archive rightly keeps once; changed content gives new objects, which an
//!   archive that keeps the first object under a UID (most do) would otherwise drop.

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

/// A digest of some content, as 32 hex digits (a version 5 UUID of it: stable everywhere).
pub fn digest(content: &[u8]) -> String {
    Uuid::new_v5(&namespace(), content).simple().to_string()
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
    /// The UIDs for results of `source_series_uid` produced by model `model_name` `model_version`,
    /// with content `digest`; `predecessor` is the SOP Instance UID of the SR this one replaces.
    pub fn new(
        source_series_uid: &str,
        model_name: &str,
        model_version: &str,
        digest: &str,
        predecessor: Option<&str>,
    ) -> Self {
        let seed = format!("{source_series_uid}|{model_name}|{model_version}");
        let uid = |what: &str| derived_uid(&format!("{seed}|{what}"));
        Self {
            seg_series: uid("seg-series"),
            seg_instance: uid(&format!("seg-instance|{digest}")),
            sr_series: uid("sr-series"),
            sr_instance: uid(&format!(
                "sr-instance|{digest}|{}",
                predecessor.unwrap_or_default()
            )),
            dimension_organization: uid("dimension-organization"),
            seed,
        }
    }

    /// Tracking UID of finding `number` (from 1), shared by its volumetric and centre SR groups
    /// and its SEG segment.
    pub fn tracking(&self, number: usize) -> String {
        derived_uid(&format!("{}|tracking|{number}", self.seed))
    }

    /// Tracking UID of finding `number`'s axial measurement group (long and short axis). It is
    /// its own: viewers merge groups of one tracking UID and draw one graphic for them (OHIF
    /// would draw only the centre point).
    pub fn axial_tracking(&self, number: usize) -> String {
        derived_uid(&format!("{}|tracking|{number}|axial", self.seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_X: &str = "2.25.179134649654490323820335054754841724125";

    #[test]
    fn uids_are_stable_valid_and_distinct() {
        let a = ResultUids::new("1.2.3", "jnsc", "0.1.0", "d1", None);
        assert_eq!(a, ResultUids::new("1.2.3", "jnsc", "0.1.0", "d1", None));
        let b = ResultUids::new("1.2.3", "jnsc", "0.2.0", "d1", None);
        assert_ne!(a.seg_instance, b.seg_instance);
        // New content: new instances in the same series.
        let c = ResultUids::new("1.2.3", "jnsc", "0.1.0", "d2", Some(&a.sr_instance));
        assert_ne!(
            (&a.seg_instance, &a.sr_instance),
            (&c.seg_instance, &c.sr_instance)
        );
        assert_eq!((&a.seg_series, &a.sr_series), (&c.seg_series, &c.sr_series));
        assert_eq!(a.tracking(1), c.tracking(1));
        // The same content after another report is a new report (it replaces that one)...
        let d = ResultUids::new("1.2.3", "jnsc", "0.1.0", "d1", Some(&c.sr_instance));
        assert_ne!(a.sr_instance, d.sr_instance);
        // ...with the same segmentation.
        assert_eq!(a.seg_instance, d.seg_instance);
        assert_eq!(digest(b"x"), digest(b"x"));
        assert_ne!(digest(b"x"), digest(b"y"));
        let all = [
            &a.seg_series,
            &a.seg_instance,
            &a.sr_series,
            &a.sr_instance,
            &a.dimension_organization,
            &a.tracking(1),
            &a.tracking(2),
            &a.axial_tracking(1),
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
