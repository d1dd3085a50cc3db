//! DIMSE messages: command sets (always implicit VR little endian, PS3.7 section 6.3.1), their
//! parsing and encoding, status codes, and the split of a message into P-DATA-TF PDUs that respect
//! the peer's maximum PDU length.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::Pdu;
use dicom_ul::pdu::{PDataValue, PDataValueType};

/// Command Field values (PS3.7 E.1) this node handles.
pub mod command_field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
}

/// DIMSE status codes (PS3.4 B.2.3, PS3.7 C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (the instance could not be written or indexed).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Warning: requested optional attributes are not supported (PS3.7 C.4.2).
    pub const OPTIONAL_ATTRIBUTES_NOT_SUPPORTED: u16 = 0x0001;
    /// Failure: processing failure (PS3.7 C.4.2).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Failure: duplicate invocation (PS3.7 C.4.2).
    pub const DUPLICATE_INVOCATION: u16 = 0x0210;
    /// Failure: resource limitation (PS3.7 C.4.2).
    pub const RESOURCE_LIMITATION: u16 = 0x0213;
    /// The high nibble of C-STORE's warnings (coercion of data elements, elements discarded,
    /// data set does not match the SOP class: B000, B007, B006).
    pub const WARNING_CLASS: u16 = 0xB000;
}

/// Command Data Set Type value meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;

/// A received command set, reduced to what the services read.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub has_data_set: bool,
}

/// A command set that cannot be read; the association is aborted (PS3.7 has no status for it).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command set cannot be parsed: {0}")]
    Unparseable(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// Reads a command set (always implicit VR little endian), its structure checked first.
fn read_command_set(bytes: &[u8]) -> Result<InMemDicomObject, CommandError> {
    crate::encoding::check(bytes, crate::encoding::Encoding::ImplicitLittle)
        .map_err(|e| CommandError::Unparseable(e.to_string()))?;
    InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| CommandError::Unparseable(e.to_string()))
}

/// A US command element that must be there.
fn required_u16(
    object: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<u16, CommandError> {
    object
        .get(tag)
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or(CommandError::Missing(name))
}

impl Command {
    /// Parses a command set encoded in implicit VR little endian.
    pub fn parse(bytes: &[u8]) -> Result<Self, CommandError> {
        let object = read_command_set(bytes)?;
        let uint = |tag, name| required_u16(&object, tag, name);
        let text = |tag: Tag| -> Option<String> {
            let element = object.get(tag)?;
            let value = element.to_str().ok()?;
            Some(value.trim_end_matches(['\0', ' ']).to_owned())
        };
        Ok(Self {
            command_field: uint(tags::COMMAND_FIELD, "Command Field (0000,0100)")?,
            message_id: uint(tags::MESSAGE_ID, "Message ID (0000,0110)")?,
            affected_sop_class_uid: text(tags::AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid: text(tags::AFFECTED_SOP_INSTANCE_UID),
            has_data_set: uint(
                tags::COMMAND_DATA_SET_TYPE,
                "Command Data Set Type (0000,0800)",
            )? != NO_DATA_SET,
        })
    }
}

/// What a response command set says (read by the SCU side).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedResponse {
    pub command_field: u16,
    pub message_id_being_responded_to: u16,
    pub status: u16,
    pub error_comment: Option<String>,
}

impl ReceivedResponse {
    /// Parses a response command set encoded in implicit VR little endian.
    pub fn parse(bytes: &[u8]) -> Result<Self, CommandError> {
        let object = read_command_set(bytes)?;
        let uint = |tag, name| required_u16(&object, tag, name);
        Ok(Self {
            command_field: uint(tags::COMMAND_FIELD, "Command Field (0000,0100)")?,
            message_id_being_responded_to: uint(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                "Message ID Being Responded To (0000,0120)",
            )?,
            status: uint(tags::STATUS, "Status (0000,0900)")?,
            error_comment: crate::attributes::text(&object, tags::ERROR_COMMENT),
        })
    }
}

/// A response command set (no data set follows).
#[derive(Debug, Clone)]
pub struct Response<'a> {
    pub command_field: u16,
    pub message_id_being_responded_to: u16,
    pub affected_sop_class_uid: &'a str,
    pub affected_sop_instance_uid: Option<&'a str>,
    pub status: u16,
    /// Error Comment (0000,0902), LO: cut to 64 characters.
    pub error_comment: Option<&'a str>,
}

impl Response<'_> {
    /// Encodes the response in implicit VR little endian, with the Command Group Length.
    pub fn encode(&self) -> Vec<u8> {
        let mut elements = vec![
            ui(tags::AFFECTED_SOP_CLASS_UID, self.affected_sop_class_uid),
            us(tags::COMMAND_FIELD, self.command_field),
            us(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                self.message_id_being_responded_to,
            ),
            us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
            us(tags::STATUS, self.status),
        ];
        if let Some(uid) = self.affected_sop_instance_uid {
            elements.push(ui(tags::AFFECTED_SOP_INSTANCE_UID, uid));
        }
        if let Some(comment) = self.error_comment {
            let comment: String = comment
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
                .take(64)
                .collect();
            elements.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(comment),
            ));
        }
        encode_command(elements)
    }
}

/// A C-STORE-RQ command set (a data set follows), as the SCU side sends it.
#[derive(Debug, Clone)]
pub struct StoreRequest<'a> {
    pub message_id: u16,
    pub affected_sop_class_uid: &'a str,
    pub affected_sop_instance_uid: &'a str,
}

/// Command Data Set Type value meaning "a data set follows" (any value other than 0x0101).
const DATA_SET_PRESENT: u16 = 0x0000;
/// Priority MEDIUM.
const PRIORITY_MEDIUM: u16 = 0x0000;

impl StoreRequest<'_> {
    /// Encodes the request in implicit VR little endian, with the Command Group Length.
    pub fn encode(&self) -> Vec<u8> {
        encode_command(vec![
            ui(tags::AFFECTED_SOP_CLASS_UID, self.affected_sop_class_uid),
            us(tags::COMMAND_FIELD, command_field::C_STORE_RQ),
            us(tags::MESSAGE_ID, self.message_id),
            us(tags::PRIORITY, PRIORITY_MEDIUM),
            us(tags::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
            ui(
                tags::AFFECTED_SOP_INSTANCE_UID,
                self.affected_sop_instance_uid,
            ),
        ])
    }
}

/// Encodes command elements (group 0000) with their group length, implicit VR little endian.
fn encode_command(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    let object = InMemDicomObject::command_from_element_iter(elements);
    let mut bytes = Vec::with_capacity(256);
    object
        .write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("writing a command set to memory cannot fail");
    bytes
}

/// A UI command element.
fn ui(tag: Tag, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(value))
}

/// A US command element.
fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

/// Bytes of PDU overhead per PDV item: item length (4), context id (1), control header (1).
const PDV_ITEM_OVERHEAD: usize = 6;

/// Splits one command or data set into P-DATA-TF PDUs, each holding one PDV whose PDU stays
/// within `max_pdu_length` (the peer's announced maximum; 0 means unlimited).
pub fn pdata_pdus(
    presentation_context_id: u8,
    value_type: PDataValueType,
    bytes: &[u8],
    max_pdu_length: u32,
) -> Vec<Pdu> {
    let limit = if max_pdu_length == 0 {
        usize::MAX
    } else {
        (max_pdu_length as usize)
            .saturating_sub(PDV_ITEM_OVERHEAD)
            .max(2)
    };
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![bytes]
    } else {
        bytes.chunks(limit).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id,
                value_type: value_type.clone(),
                is_last: i == last,
                data: chunk.to_vec(),
            }],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_round_trips_through_the_parser() {
        let bytes = Response {
            command_field: command_field::C_STORE_RSP,
            message_id_being_responded_to: 4242,
            affected_sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
            affected_sop_instance_uid: Some("1.2.3"),
            status: status::CANNOT_UNDERSTAND,
            error_comment: Some("bad data"),
        }
        .encode();
        let parsed = ReceivedResponse::parse(&bytes).unwrap();
        assert_eq!(parsed.status, 0xC000);
        assert_eq!(parsed.message_id_being_responded_to, 4242);
        assert_eq!(parsed.error_comment.as_deref(), Some("bad data"));
        // The group length, by hand.
        let object =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
        let get = |tag| object.element(tag).unwrap().to_int::<u32>().unwrap();
        assert_eq!(get(tags::MESSAGE_ID_BEING_RESPONDED_TO), 4242);
        assert_eq!(get(tags::STATUS), 0xC000);
        assert_eq!(get(tags::COMMAND_FIELD), 0x8001);
        // group length counts every byte after the group length element itself (12 bytes)
        assert_eq!(get(tags::COMMAND_GROUP_LENGTH) as usize, bytes.len() - 12);
    }

    #[test]
    fn store_request_parses_back() {
        let bytes = StoreRequest {
            message_id: 9,
            affected_sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
            affected_sop_instance_uid: "1.2.3.4",
        }
        .encode();
        let command = Command::parse(&bytes).unwrap();
        assert_eq!(command.command_field, command_field::C_STORE_RQ);
        assert_eq!(command.message_id, 9);
        assert!(command.has_data_set);
        assert_eq!(
            command.affected_sop_instance_uid.as_deref(),
            Some("1.2.3.4")
        );
    }

    #[test]
    fn pdus_respect_the_peer_maximum() {
        let data = vec![7u8; 10_000];
        let pdus = pdata_pdus(3, PDataValueType::Data, &data, 4096);
        assert_eq!(pdus.len(), 3);
        let mut joined = Vec::new();
        for (i, pdu) in pdus.iter().enumerate() {
            let Pdu::PData { data: pdvs } = pdu else {
                panic!("not a P-DATA-TF")
            };
            assert!(pdvs[0].data.len() + PDV_ITEM_OVERHEAD <= 4096);
            assert_eq!(pdvs[0].is_last, i == 2);
            joined.extend_from_slice(&pdvs[0].data);
        }
        assert_eq!(joined, data);
    }
}
