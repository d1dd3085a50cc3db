//! Building data sets: a thin chainable wrapper over `InMemDicomObject` that takes values in the
//! form the result builders have them (text, numbers, UIDs, tags, nested items) and writes each
//! with its VR. One home for element construction, so the SEG and SR builders read like the IOD
//! tables they follow.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_object::InMemDicomObject;

/// A data set (or sequence item) under construction.
#[derive(Debug, Clone)]
pub struct DataSet(InMemDicomObject);

impl Default for DataSet {
    fn default() -> Self {
        Self::new()
    }
}

impl DataSet {
    pub fn new() -> Self {
        Self(InMemDicomObject::new_empty())
    }

    /// A single string value (CS, LO, SH, PN, UI, DA, TM, DT, UT...).
    pub fn text(mut self, tag: Tag, vr: VR, value: &str) -> Self {
        self.0
            .put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
        self
    }

    /// Several string values (backslash-separated on the wire).
    pub fn texts(mut self, tag: Tag, vr: VR, values: &[&str]) -> Self {
        let values = values.iter().map(|v| v.to_string()).collect();
        self.0
            .put(DataElement::new(tag, vr, PrimitiveValue::Strs(values)));
        self
    }

    /// An element present with no value (Type 2 attributes with nothing to say).
    pub fn empty(mut self, tag: Tag, vr: VR) -> Self {
        self.0.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
        self
    }

    /// A UI element.
    pub fn uid(self, tag: Tag, value: &str) -> Self {
        self.text(tag, VR::UI, value)
    }

    /// Decimal strings (DS), written with at most 16 characters each.
    pub fn decimals(mut self, tag: Tag, values: &[f64]) -> Self {
        let values = values
            .iter()
            .map(|&v| crate::attributes::decimal_string(v))
            .collect();
        self.0
            .put(DataElement::new(tag, VR::DS, PrimitiveValue::Strs(values)));
        self
    }

    /// An integer string (IS).
    pub fn integer(self, tag: Tag, value: i64) -> Self {
        self.text(tag, VR::IS, &value.to_string())
    }

    /// Unsigned shorts (US).
    pub fn us(mut self, tag: Tag, values: &[u16]) -> Self {
        self.0.put(DataElement::new(
            tag,
            VR::US,
            PrimitiveValue::U16(values.iter().copied().collect()),
        ));
        self
    }

    /// Unsigned longs (UL).
    pub fn ul(mut self, tag: Tag, values: &[u32]) -> Self {
        self.0.put(DataElement::new(
            tag,
            VR::UL,
            PrimitiveValue::U32(values.iter().copied().collect()),
        ));
        self
    }

    /// Single-precision floats (FL).
    pub fn floats(mut self, tag: Tag, values: &[f32]) -> Self {
        self.0.put(DataElement::new(
            tag,
            VR::FL,
            PrimitiveValue::F32(values.iter().copied().collect()),
        ));
        self
    }

    /// An attribute tag value (AT).
    pub fn tag(mut self, tag: Tag, value: Tag) -> Self {
        self.0.put(DataElement::new(
            tag,
            VR::AT,
            PrimitiveValue::Tags(std::iter::once(value).collect()),
        ));
        self
    }

    /// Bytes (OB), e.g. bit-packed pixel data.
    pub fn bytes(mut self, tag: Tag, value: Vec<u8>) -> Self {
        self.0.put(DataElement::new(
            tag,
            VR::OB,
            PrimitiveValue::U8(value.into()),
        ));
        self
    }

    /// A sequence of items (possibly empty: a Type 2 sequence).
    pub fn sequence(mut self, tag: Tag, items: Vec<DataSet>) -> Self {
        let items: Vec<InMemDicomObject> = items.into_iter().map(|d| d.0).collect();
        self.0.put(DataElement::new(
            tag,
            VR::SQ,
            DataSetSequence::new(items, Length::UNDEFINED),
        ));
        self
    }

    /// Copies elements of `source` unchanged (same VR, same bytes); an absent element is written
    /// empty when `type2` says it must be present, and skipped otherwise.
    pub fn copy(mut self, source: &InMemDicomObject, tags: &[(Tag, VR)], type2: bool) -> Self {
        for &(tag, vr) in tags {
            match source.get(tag) {
                Some(element) => {
                    self.0.put(element.clone());
                }
                None if type2 => self = self.empty(tag, vr),
                None => {}
            }
        }
        self
    }

    pub fn into_inner(self) -> InMemDicomObject {
        self.0
    }
}
