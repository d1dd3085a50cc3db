//! Reading attribute values out of data sets: trimmed text, integers, numbers and sequence
//! items, each `None` when the element is absent, empty or of the wrong kind. One home for the
//! store's index attributes and the volume loader's geometry. Also the rule for AE titles
//! (PS3.5 6.2), shared by the configuration and the association policy, and the one writer of
//! DS values (`decimal_string`, the 16-character rule), shared by the results and the phantoms.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

/// The trimmed string value of an element, `None` when absent or empty.
pub fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = object.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(['\0', ' ']);
    (!value.is_empty()).then(|| value.to_owned())
}

/// The integer value of an element (IS, US, UL...), `None` when absent or not a number.
pub fn integer(object: &InMemDicomObject, tag: Tag) -> Option<i64> {
    object.get(tag)?.to_int::<i64>().ok()
}

/// All numeric values of an element (DS, FD...).
pub fn numbers(object: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    object.get(tag)?.to_multi_float64().ok()
}

/// The items of a sequence element.
pub fn items(object: &InMemDicomObject, tag: Tag) -> Option<&[InMemDicomObject]> {
    object.get(tag)?.items()
}

/// The first item of a sequence element.
pub fn first_item(object: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    items(object, tag)?.first()
}

/// Checks an AE title (PS3.5 6.2, VR AE): 1-16 characters of the default repertoire, not only
/// spaces, no control character and no backslash. The error says what is wrong, with the title
/// escaped (it may hold control characters).
pub fn check_ae_title(title: &str) -> Result<(), String> {
    let trimmed = title.trim();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    if title.len() > 16 {
        return Err(format!("{title:?} is longer than 16 characters"));
    }
    if title
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\')
    {
        return Err(format!(
            "{title:?} may only hold printable ASCII characters other than backslash"
        ));
    }
    Ok(())
}

/// A DS value: the shortest decimal that fits in 16 characters.
pub fn decimal_string(value: f64) -> String {
    for precision in (0..=10).rev() {
        let s = format!("{value:.precision$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{value:.3e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(decimal_string(0.5), "0.5");
        assert_eq!(decimal_string(-0.00000000001), "0");
        assert_eq!(decimal_string(-0.0000000001), "-0.0000000001");
        assert_eq!(decimal_string(12.0), "12");
        assert_eq!(decimal_string(-123456.123456789), "-123456.12345679");
        assert!(decimal_string(1.0e300).len() <= 16);
    }
}
