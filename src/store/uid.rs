//! DICOM UID validation. Only validated UIDs ever become file or directory names, which rules out
//! path traversal (`..`, `/`) and odd characters by construction.

use std::fmt;

/// A syntactically valid DICOM UID (PS3.5 9.1): 1-64 characters, digit components separated by
/// single dots, no component with a leading zero (`0` alone is a component; `03` is not).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

/// Why a value is not a UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long (at most 64 allowed)")]
    TooLong(usize),
    #[error("contains `{0}` (only digits and dots are allowed)")]
    BadCharacter(char),
    #[error("has an empty component")]
    EmptyComponent,
    #[error("has a component with a leading zero (`{0}`; PS3.5 9.1)")]
    LeadingZero(String),
}

impl Uid {
    /// Validates a UID as found in a data set (trailing NUL and space padding removed).
    pub fn parse(raw: &str) -> Result<Self, UidError> {
        let value = raw.trim_end_matches(['\0', ' ']);
        if value.is_empty() {
            return Err(UidError::Empty);
        }
        if value.len() > 64 {
            return Err(UidError::TooLong(value.len()));
        }
        if let Some(c) = value.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
            return Err(UidError::BadCharacter(c));
        }
        if value.split('.').any(str::is_empty) {
            return Err(UidError::EmptyComponent);
        }
        if let Some(component) = value.split('.').find(|c| c.len() > 1 && c.starts_with('0')) {
            return Err(UidError::LeadingZero(component.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_uids_and_strips_padding() {
        assert_eq!(
            Uid::parse("1.2.840.10008.5.1.4.1.1.2\0").unwrap().as_str(),
            "1.2.840.10008.5.1.4.1.1.2"
        );
        assert!(Uid::parse("2.25.0").is_ok());
        assert!(Uid::parse("1.0.2").is_ok());
        assert!(Uid::parse(&format!("1.{}", "2".repeat(62))).is_ok());
    }

    #[test]
    fn rejects_anything_that_could_escape_a_directory() {
        assert_eq!(
            Uid::parse("../../etc/passwd"),
            Err(UidError::BadCharacter('/'))
        );
        assert_eq!(Uid::parse(".."), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse("1.2."), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
        assert_eq!(
            Uid::parse("1.2.03"),
            Err(UidError::LeadingZero("03".into()))
        );
        assert_eq!(
            Uid::parse("2.25.0012"),
            Err(UidError::LeadingZero("0012".into()))
        );
        assert_eq!(Uid::parse("1.2 3"), Err(UidError::BadCharacter(' ')));
        assert_eq!(Uid::parse("1.2\\3"), Err(UidError::BadCharacter('\\')));
        assert_eq!(
            Uid::parse(&format!("1.{}", "2".repeat(63))),
            Err(UidError::TooLong(65))
        );
    }
}
