//! The structure of an encoded data set, checked before anything parses it: a non-recursive walk
//! over the element headers of data sets and command sets received from the network.
//!
//! The parser behind `InMemDicomObject` recurses once per nested sequence and reserves memory for
//! the length an element declares. From the network, both are attacks: 2,000 nested sequences in
//! 42 KB overflow a thread's stack (which aborts the process), and one 14-byte data set declaring
//! a 4 GB element makes it reserve 4 GB. This walk, with its own explicit stack, rejects before
//! any of that:
//! - a declared length larger than what is left of the enclosing item, sequence or data set;
//! - sequences nested deeper than [`MAX_SEQUENCE_DEPTH`];
//! - an undefined-length sequence, item or pixel data without its delimiter (truncated);
//! - encapsulated pixel data that is not a Basic Offset Table item followed by at least one
//!   fragment item and a sequence delimiter (PS3.5 A.4).
//!
//! It reads headers only (tag, VR, length): it never looks at values, so its cost is a small
//! fraction of the parse.

use dicom_core::{Tag, VR};

/// Deepest nesting of sequences accepted. Real objects nest a few levels (a TID 1500 SR about
/// ten); the stack of the parser after this walk stays far from its limit.
pub const MAX_SEQUENCE_DEPTH: usize = 64;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// How the element headers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

/// Why an encoded data set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructureError {
    #[error("element {tag} at byte {at} declares {declared} bytes, but only {available} remain")]
    LengthBeyondEnd {
        tag: Tag,
        at: usize,
        declared: u64,
        available: usize,
    },
    #[error("the data set ends inside an element header at byte {at}")]
    TruncatedHeader { at: usize },
    #[error("sequences nested deeper than {MAX_SEQUENCE_DEPTH} at byte {at}")]
    TooDeep { at: usize },
    #[error("the data set ends inside {what} that has no delimiter")]
    Unterminated { what: &'static str },
    #[error("unexpected {tag} at byte {at}: {why}")]
    Misplaced {
        tag: Tag,
        at: usize,
        why: &'static str,
    },
    #[error("encapsulated pixel data has no fragment")]
    NoFragments,
}

/// What the walker is inside of.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// A sequence's items; `end` for a defined length; the encoding of its items' data sets
    /// (implicit VR little endian inside a UN of undefined length, PS3.5 6.2.2).
    Sequence {
        end: Option<usize>,
        encoding: Encoding,
    },
    /// An item's data set.
    Item {
        end: Option<usize>,
        encoding: Encoding,
    },
    /// Encapsulated pixel data: its items so far.
    Fragments { items: usize },
}

impl Frame {
    fn end(&self) -> Option<usize> {
        match *self {
            Frame::Sequence { end, .. } | Frame::Item { end, .. } => end,
            Frame::Fragments { .. } => None,
        }
    }

    fn encoding(&self) -> Option<Encoding> {
        match *self {
            Frame::Sequence { encoding, .. } | Frame::Item { encoding, .. } => Some(encoding),
            Frame::Fragments { .. } => None,
        }
    }
}

/// Where the data set of a Part 10 file's `bytes` starts (after the preamble, `DICM` and the
/// file meta group) and its transfer syntax UID; `None` when the bytes are not a Part 10 file.
pub fn part10_data_set(bytes: &[u8]) -> Option<(usize, String)> {
    if bytes.get(128..132) != Some(b"DICM") {
        return None;
    }
    let meta = dicom_object::meta::FileMetaTable::from_reader(bytes.get(128..)?).ok()?;
    let start = 132 + 12 + meta.information_group_length as usize;
    (start <= bytes.len()).then(|| (start, meta.transfer_syntax().to_owned()))
}

/// Where a data set's top-level Pixel Data element is, from `layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelDataAt {
    /// Byte offset of its header: the elements before it end here.
    pub offset: usize,
    /// Its declared length; `None` for undefined (encapsulated pixel data).
    pub length: Option<u32>,
}

/// What the walk found besides the structure being sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layout {
    /// The top-level Pixel Data (7FE0,0010), if the data set has one.
    pub pixel_data: Option<PixelDataAt>,
}

/// Walks `bytes`, a whole data set (or command set) in `encoding`.
pub fn check(bytes: &[u8], encoding: Encoding) -> Result<(), StructureError> {
    layout(bytes, encoding).map(|_| ())
}

/// `check`, and where the top-level Pixel Data is: a parser that needs only the attributes
/// before it can stop there (C-STORE reads the index attributes, never the pixels).
pub fn layout(bytes: &[u8], encoding: Encoding) -> Result<Layout, StructureError> {
    match walk(bytes, encoding, None)? {
        Walked::Whole(found) => Ok(found),
        Walked::Stopped(_) => unreachable!("a walk without a stop tag reaches the end"),
    }
}

/// Where the top-level elements before `stop` end in `prefix`, the first bytes of a data set
/// still arriving: the offset of the first top-level element whose tag is `stop` or later, once
/// everything before it is in `prefix` and sound. `None` while the prefix ends before such an
/// element, and for a prefix that is malformed.
pub fn head_before(prefix: &[u8], encoding: Encoding, stop: Tag) -> Option<usize> {
    match walk(prefix, encoding, Some(stop)) {
        Ok(Walked::Stopped(at)) => Some(at),
        _ => None,
    }
}

/// How a walk ended.
enum Walked {
    /// At the end of the bytes, everything sound.
    Whole(Layout),
    /// At the first top-level element with the stop tag or a later one, at this offset.
    Stopped(usize),
}

fn walk(bytes: &[u8], encoding: Encoding, stop: Option<Tag>) -> Result<Walked, StructureError> {
    let mut found = Layout::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut at = 0;
    loop {
        // Close every defined-length container that ends here.
        while let Some(end) = stack.last().and_then(Frame::end) {
            if at < end {
                break;
            }
            stack.pop();
        }
        let limit = stack
            .iter()
            .rev()
            .find_map(Frame::end)
            .unwrap_or(bytes.len());
        if at == bytes.len() {
            return match stack.last() {
                None => Ok(Walked::Whole(found)),
                Some(Frame::Sequence { .. }) => {
                    Err(StructureError::Unterminated { what: "a sequence" })
                }
                Some(Frame::Item { .. }) => Err(StructureError::Unterminated { what: "an item" }),
                Some(Frame::Fragments { .. }) => Err(StructureError::Unterminated {
                    what: "encapsulated pixel data",
                }),
            };
        }
        let here = stack
            .iter()
            .rev()
            .find_map(Frame::encoding)
            .unwrap_or(encoding);
        let header = read_header(bytes, at, limit, here)?;
        let after = at + header.size;
        let remaining = limit - after;
        let declared_fits = |length: u32| {
            if length as usize <= remaining {
                Ok(())
            } else {
                Err(StructureError::LengthBeyondEnd {
                    tag: header.tag,
                    at,
                    declared: u64::from(length),
                    available: remaining,
                })
            }
        };
        match (header.tag, stack.last_mut()) {
            (ITEM, Some(Frame::Fragments { items })) => {
                if header.length == UNDEFINED {
                    return Err(misplaced(ITEM, at, "a fragment has an undefined length"));
                }
                declared_fits(header.length)?;
                *items += 1;
                at = after + header.length as usize;
            }
            (SEQUENCE_END, Some(Frame::Fragments { items })) => {
                // The Basic Offset Table item, then at least one fragment.
                if *items < 2 {
                    return Err(StructureError::NoFragments);
                }
                stack.pop();
                at = after;
            }
            (ITEM, Some(Frame::Sequence { encoding, .. })) => {
                let encoding = *encoding;
                let end = if header.length == UNDEFINED {
                    None
                } else {
                    declared_fits(header.length)?;
                    Some(after + header.length as usize)
                };
                stack.push(Frame::Item { end, encoding });
                at = after;
            }
            (ITEM_END, Some(Frame::Item { end: None, .. })) => {
                stack.pop();
                at = after;
            }
            (SEQUENCE_END, Some(Frame::Sequence { end: None, .. })) => {
                stack.pop();
                at = after;
            }
            (ITEM | ITEM_END | SEQUENCE_END, _) => {
                return Err(misplaced(
                    header.tag,
                    at,
                    "not where the encoding allows it",
                ));
            }
            (_, Some(Frame::Sequence { .. } | Frame::Fragments { .. })) => {
                return Err(misplaced(header.tag, at, "a sequence holds only items"));
            }
            (tag, _) => {
                if stack.is_empty() && stop.is_some_and(|stop| tag >= stop) {
                    return Ok(Walked::Stopped(at));
                }
                if tag == PIXEL_DATA && stack.is_empty() {
                    found.pixel_data = Some(PixelDataAt {
                        offset: at,
                        length: (header.length != UNDEFINED).then_some(header.length),
                    });
                }
                let sequence = header.vr == Some(VR::SQ)
                    || (header.length == UNDEFINED && tag != PIXEL_DATA)
                    || (header.vr.is_none() && is_sequence(tag));
                if sequence {
                    let depth = stack
                        .iter()
                        .filter(|f| matches!(f, Frame::Sequence { .. }))
                        .count();
                    if depth >= MAX_SEQUENCE_DEPTH {
                        return Err(StructureError::TooDeep { at });
                    }
                    let end = if header.length == UNDEFINED {
                        None
                    } else {
                        declared_fits(header.length)?;
                        Some(after + header.length as usize)
                    };
                    // A UN of undefined length is a sequence in implicit VR little endian.
                    let encoding = if header.vr == Some(VR::UN) {
                        Encoding::ImplicitLittle
                    } else {
                        here
                    };
                    stack.push(Frame::Sequence { end, encoding });
                    at = after;
                } else if header.length == UNDEFINED {
                    // Encapsulated pixel data (the only other undefined length allowed).
                    stack.push(Frame::Fragments { items: 0 });
                    at = after;
                } else {
                    declared_fits(header.length)?;
                    at = after + header.length as usize;
                }
            }
        }
    }
}

fn misplaced(tag: Tag, at: usize, why: &'static str) -> StructureError {
    StructureError::Misplaced { tag, at, why }
}

struct Header {
    tag: Tag,
    /// `None` in implicit VR, and for item and delimiter tags.
    vr: Option<VR>,
    length: u32,
    /// Bytes of the header itself.
    size: usize,
}

fn read_header(
    bytes: &[u8],
    at: usize,
    limit: usize,
    encoding: Encoding,
) -> Result<Header, StructureError> {
    let available = &bytes[at..limit];
    let truncated = || StructureError::TruncatedHeader { at };
    let u16_at = |i: usize| -> Result<u16, StructureError> {
        let b: [u8; 2] = available
            .get(i..i + 2)
            .ok_or_else(truncated)?
            .try_into()
            .unwrap();
        Ok(match encoding {
            Encoding::ExplicitBig => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        })
    };
    let u32_at = |i: usize| -> Result<u32, StructureError> {
        let b: [u8; 4] = available
            .get(i..i + 4)
            .ok_or_else(truncated)?
            .try_into()
            .unwrap();
        Ok(match encoding {
            Encoding::ExplicitBig => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        })
    };
    let tag = Tag(u16_at(0)?, u16_at(2)?);
    // Items and delimiters have no VR in any encoding, nor has anything in implicit VR.
    if tag.group() == 0xFFFE || encoding == Encoding::ImplicitLittle {
        return Ok(Header {
            tag,
            vr: None,
            length: u32_at(4)?,
            size: 8,
        });
    }
    let vr_bytes: [u8; 2] = available
        .get(4..6)
        .ok_or_else(truncated)?
        .try_into()
        .unwrap();
    let vr = VR::from_binary(vr_bytes);
    let long = matches!(
        vr,
        Some(
            VR::OB
                | VR::OD
                | VR::OF
                | VR::OL
                | VR::OV
                | VR::OW
                | VR::SQ
                | VR::SV
                | VR::UC
                | VR::UN
                | VR::UR
                | VR::UT
                | VR::UV
        )
    );
    // An unknown VR code: read it as a 4-byte length after 2 reserved bytes is a guess; the
    // parser refuses it anyway, so refuse it here.
    let vr = vr.ok_or(StructureError::Misplaced {
        tag,
        at,
        why: "unknown value representation",
    })?;
    if long {
        Ok(Header {
            tag,
            vr: Some(vr),
            length: u32_at(8)?,
            size: 12,
        })
    } else {
        Ok(Header {
            tag,
            vr: Some(vr),
            length: u32::from(u16_at(6)?),
            size: 8,
        })
    }
}

/// In implicit VR: whether the dictionary knows `tag` as a sequence.
fn is_sequence(tag: Tag) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|entry| entry.vr().relaxed() == VR::SQ)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit VR little endian element header.
    fn element(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(group.to_le_bytes());
        out.extend(element.to_le_bytes());
        out.extend(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            out.extend([0, 0]);
            out.extend(length.to_le_bytes());
        } else {
            out.extend((length as u16).to_le_bytes());
        }
        out
    }

    fn item(length: u32) -> Vec<u8> {
        let mut out = vec![0xFE, 0xFF, 0x00, 0xE0];
        out.extend(length.to_le_bytes());
        out
    }

    const ITEM_END_BYTES: [u8; 8] = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];
    const SEQUENCE_END_BYTES: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];

    /// `depth` nested undefined-length sequences, each in an undefined-length item.
    fn nested(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            out.extend(element(0x0040, 0xA730, b"SQ", UNDEFINED));
            out.extend(item(UNDEFINED));
        }
        for _ in 0..depth {
            out.extend(ITEM_END_BYTES);
            out.extend(SEQUENCE_END_BYTES);
        }
        out
    }

    #[test]
    fn well_formed_nesting_passes_and_too_deep_is_refused() {
        assert_eq!(
            check(&nested(MAX_SEQUENCE_DEPTH), Encoding::ExplicitLittle),
            Ok(())
        );
        assert!(matches!(
            check(&nested(2000), Encoding::ExplicitLittle),
            Err(StructureError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_declared_length_beyond_the_data_is_refused() {
        let mut data = element(0x0008, 0x0016, b"UI", 4);
        data.extend(b"1.2\0");
        assert_eq!(check(&data, Encoding::ExplicitLittle), Ok(()));
        let mut huge = element(0x0008, 0x0016, b"UN", 0xFFFF_FFF0);
        huge.extend(b"12");
        assert!(matches!(
            check(&huge, Encoding::ExplicitLittle),
            Err(StructureError::LengthBeyondEnd {
                declared: 0xFFFF_FFF0,
                ..
            })
        ));
        // Implicit VR (command sets): the same.
        let mut implicit = vec![0x00, 0x00, 0x02, 0x00];
        implicit.extend(0xFFFF_FFF0u32.to_le_bytes());
        assert!(matches!(
            check(&implicit, Encoding::ImplicitLittle),
            Err(StructureError::LengthBeyondEnd { .. })
        ));
        // An item longer than its defined-length sequence.
        let mut sequence = element(0x0008, 0x1115, b"SQ", 8);
        sequence.extend(item(100));
        assert!(matches!(
            check(&sequence, Encoding::ExplicitLittle),
            Err(StructureError::LengthBeyondEnd { .. })
        ));
    }

    #[test]
    fn encapsulated_pixel_data_needs_its_items_and_delimiter() {
        let pixel = |items: &[Vec<u8>], delimited: bool| {
            let mut out = element(0x7FE0, 0x0010, b"OB", UNDEFINED);
            for i in items {
                out.extend(item(i.len() as u32));
                out.extend(i);
            }
            if delimited {
                out.extend(SEQUENCE_END_BYTES);
            }
            out
        };
        let good = pixel(&[vec![], vec![1, 2, 3, 4]], true);
        assert_eq!(check(&good, Encoding::ExplicitLittle), Ok(()));
        assert_eq!(
            check(&pixel(&[vec![]], true), Encoding::ExplicitLittle),
            Err(StructureError::NoFragments)
        );
        assert_eq!(
            check(&pixel(&[], true), Encoding::ExplicitLittle),
            Err(StructureError::NoFragments)
        );
        assert!(matches!(
            check(
                &pixel(&[vec![], vec![1, 2]], false),
                Encoding::ExplicitLittle
            ),
            Err(StructureError::Unterminated { .. })
        ));
        // Cut in the middle of a fragment.
        assert!(matches!(
            check(&good[..good.len() - 10], Encoding::ExplicitLittle),
            Err(StructureError::LengthBeyondEnd { .. })
        ));
        let mut huge = element(0x7FE0, 0x0010, b"OB", UNDEFINED);
        huge.extend(item(0));
        huge.extend(item(0x7FFF_FFF0));
        assert!(matches!(
            check(&huge, Encoding::ExplicitLittle),
            Err(StructureError::LengthBeyondEnd { .. })
        ));
    }

    #[test]
    fn layout_finds_the_top_level_pixel_data_only() {
        let mut data = element(0x0008, 0x0016, b"UI", 4);
        data.extend(b"1.2\0");
        // Pixel Data nested in an item (an icon image) is not the image's.
        let mut icon = element(0x7FE0, 0x0010, b"OB", 2);
        icon.extend([7, 7]);
        data.extend(element(0x0088, 0x0200, b"SQ", (8 + icon.len()) as u32));
        data.extend(item(icon.len() as u32));
        data.extend(&icon);
        assert_eq!(
            layout(&data, Encoding::ExplicitLittle),
            Ok(Layout { pixel_data: None })
        );
        let offset = data.len();
        data.extend(element(0x7FE0, 0x0010, b"OW", 4));
        data.extend([1, 2, 3, 4]);
        data.extend(element(0xFFFC, 0xFFFC, b"OB", 2));
        data.extend([0, 0]);
        let expected = PixelDataAt {
            offset,
            length: Some(4),
        };
        assert_eq!(
            layout(&data, Encoding::ExplicitLittle).map(|l| l.pixel_data),
            Ok(Some(expected))
        );
        let mut encapsulated = data[..offset].to_vec();
        encapsulated.extend(element(0x7FE0, 0x0010, b"OB", UNDEFINED));
        encapsulated.extend(item(0));
        encapsulated.extend(item(2));
        encapsulated.extend([9, 9]);
        encapsulated.extend(SEQUENCE_END_BYTES);
        assert_eq!(
            layout(&encapsulated, Encoding::ExplicitLittle).map(|l| l.pixel_data),
            Ok(Some(PixelDataAt {
                offset,
                length: None
            }))
        );
    }

    #[test]
    fn truncation_anywhere_is_refused() {
        let mut data = element(0x0008, 0x0016, b"UI", 4);
        data.extend(b"1.2\0");
        let mut sequence = element(0x0040, 0xA730, b"SQ", UNDEFINED);
        sequence.extend(item(UNDEFINED));
        sequence.extend(&data);
        sequence.extend(ITEM_END_BYTES);
        sequence.extend(SEQUENCE_END_BYTES);
        data.extend(&sequence);
        assert_eq!(check(&data, Encoding::ExplicitLittle), Ok(()));
        // A cut between two top-level elements leaves a shorter, well-formed data set; any
        // other cut is refused.
        for cut in 1..data.len() {
            let result = check(&data[..cut], Encoding::ExplicitLittle);
            assert_eq!(result.is_ok(), cut == 12, "cut at {cut}: {result:?}");
        }
    }

    #[test]
    fn the_head_of_a_data_set_still_arriving_is_found_once_it_is_whole() {
        // A sequence of undefined length, holding a later tag, before the stop.
        let mut data = element(0x0008, 0x0016, b"UI", 4);
        data.extend(b"1.2\0");
        data.extend(element(0x0008, 0x1140, b"SQ", UNDEFINED));
        data.extend(item(UNDEFINED));
        data.extend(element(0x0020, 0x000D, b"UI", 4));
        data.extend(b"1.3\0");
        data.extend(ITEM_END_BYTES);
        data.extend(SEQUENCE_END_BYTES);
        data.extend(element(0x0020, 0x000E, b"UI", 4));
        data.extend(b"1.4\0");
        let head = data.len();
        data.extend(element(0x0020, 0x0010, b"SH", 2));
        data.extend(b"77");
        data.extend(element(0x7FE0, 0x0010, b"OW", 4));
        data.extend([1, 2, 3, 4]);
        let stop = Tag(0x0020, 0x0010);
        for cut in 0..data.len() {
            let expected = (cut >= head + 8).then_some(head);
            assert_eq!(
                head_before(&data[..cut], Encoding::ExplicitLittle, stop),
                expected,
                "cut at {cut}"
            );
        }
        // A malformed prefix has no head.
        let mut bad = element(0x0008, 0x0016, b"UI", 400);
        bad.extend(element(0x0020, 0x0010, b"SH", 0));
        assert_eq!(head_before(&bad, Encoding::ExplicitLittle, stop), None);
    }
}
