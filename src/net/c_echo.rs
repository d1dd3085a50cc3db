//! C-ECHO SCP (Verification): answers Success to the request's Message ID.

use crate::net::dimse::{Command, Response, command_field, status};
use crate::net::presentation::VERIFICATION;

/// The encoded C-ECHO-RSP for `request`.
pub fn respond(request: &Command) -> Vec<u8> {
    Response {
        command_field: command_field::C_ECHO_RSP,
        message_id_being_responded_to: request.message_id,
        affected_sop_class_uid: request
            .affected_sop_class_uid
            .as_deref()
            .unwrap_or(VERIFICATION),
        affected_sop_instance_uid: None,
        status: status::SUCCESS,
        error_comment: None,
    }
    .encode()
}
