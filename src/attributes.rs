//! Reading attribute values out of data sets: trimmed text, integers, numbers and sequence
//! items, each `None` when the element is absent, empty or of the wrong kind. One home for the
//! store's index attributes and the volume loader's geometry.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

/// The trimmed string value of an element, `None` when absent or empty.
pub fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = object.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let value = value.trim_matches(['\0', ' ']);
    (!value.is_empty()).then(|| value.to_owned())
}

/// The integer value of an element (IS, US, UL...), `None` when absent or not a number.
pub fn integer(object: &InMemDicomObject, tag: Tag) -> Option<i64> {
    object.element_opt(tag).ok().flatten()?.to_int::<i64>().ok()
}

/// All numeric values of an element (DS, FD...).
pub fn numbers(object: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    object
        .element_opt(tag)
        .ok()
        .flatten()?
        .to_multi_float64()
        .ok()
}

/// The items of a sequence element.
pub fn items(object: &InMemDicomObject, tag: Tag) -> Option<&[InMemDicomObject]> {
    object.element_opt(tag).ok().flatten()?.items()
}

/// The first item of a sequence element.
pub fn first_item(object: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    items(object, tag)?.first()
}
