//! One established association: receives PDUs, reassembles fragmented command and data PDVs into
//! DIMSE messages, dispatches them to the service files (C-ECHO, C-STORE) and sends responses
//! split to the peer's maximum PDU length. Nothing else reads from or writes to the socket.
//! Its stored instances' index rows are committed after their answers; the association waits for
//! them before it answers A-RELEASE-RQ or ends, so a released association's instances are indexed.

use crate::metrics::Metrics;
use crate::net::Stream;
use crate::net::c_echo;
use crate::net::c_store::{self, StoreContext};
use crate::net::dimse::{self, Command, command_field};
use crate::net::pdu::{self, Incoming, Pdv, ReceiveError};
use crate::store::db::AssociationEnd;
use crate::store::{Indexing, InstanceStore, Receiving};
use dicom_ul::Pdu;
use dicom_ul::association::{Association, AsyncServerAssociation};
use dicom_ul::pdu::{
    PDataValueType, PresentationContextNegotiated, PresentationContextResultReason,
};
use tracing::{debug, warn};

/// Largest data set accepted in one C-STORE (an enhanced CT of 2000 512x512 frames is ~1 GiB).
const MAX_DATA_SET_BYTES: usize = 2 << 30;

/// How long the end of an association waits for its instances' index rows (a failing index
/// retries them after that, in the background).
const INDEXING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest buffer reserved ahead for a data set from the size of the one before.
const MAX_DATA_SET_HINT: usize = 64 << 20;

/// Reassembles one association's DIMSE messages from their PDV fragments, one message at a time.
/// A data set's buffer starts at the size of the association's previous data set (the slices of
/// a series are alike), so that it is not copied again each time it grows.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    pending: Option<PendingMessage>,
    last_data_set_len: usize,
}

impl Reassembly {
    /// Whether a message has begun and not ended.
    pub(crate) fn is_mid_message(&self) -> bool {
        self.pending.is_some()
    }

    /// The C-STORE whose data set has begun to arrive and whose file could be begun now (see
    /// `c_store::begin`): its presentation context, request and the data set so far.
    pub(crate) fn awaiting_early_start(&self) -> Option<(u8, &Command, &[u8])> {
        let message = self.pending.as_ref()?;
        let command = message.command.as_ref()?;
        (command.command_field == command_field::C_STORE_RQ
            && matches!(message.early, c_store::EarlyStart::NotYet)
            && !message.data_set.is_empty())
        .then_some((message.presentation_context_id, command, &message.data_set))
    }

    /// What became of the attempt to begin the pending C-STORE's file.
    pub(crate) fn early_start(&mut self, start: c_store::EarlyStart) {
        if let Some(message) = self.pending.as_mut() {
            message.early = start;
        }
    }

    /// How large the data set now arriving is likely to be: the size of the one before.
    pub(crate) fn expected_data_set_len(&self) -> usize {
        self.last_data_set_len
    }

    /// Adds one PDV to the message being assembled; returns the message once it is complete.
    pub(crate) fn accept(&mut self, pdv: Pdv) -> Result<Option<Message>, ProtocolViolation> {
        let hint = self.last_data_set_len.min(MAX_DATA_SET_HINT);
        let message = accept_fragment(&mut self.pending, pdv, hint)?;
        if let Some(data_set) = message.as_ref().and_then(|m| m.data_set.as_ref()) {
            self.last_data_set_len = data_set.len();
        }
        Ok(message)
    }
}

/// A DIMSE message being reassembled from PDV fragments.
#[derive(Debug)]
struct PendingMessage {
    presentation_context_id: u8,
    command_bytes: Vec<u8>,
    /// Set once the last command fragment arrived and the data set is awaited.
    command: Option<Command>,
    data_set: Vec<u8>,
    /// When its first fragment arrived.
    started: std::time::Instant,
    /// Whether its file was begun while the data set arrives (each later fragment is then
    /// handed to it), or is not to be, or is still to be tried.
    early: c_store::EarlyStart,
}

/// A complete message ready for its service.
pub(crate) struct Message {
    presentation_context_id: u8,
    command: Command,
    pub(crate) data_set: Option<Vec<u8>>,
    /// The file begun for its data set, if one was.
    early: Option<Receiving>,
    /// From its first fragment to its last (debug timing).
    received: std::time::Duration,
}

/// A violation of the DIMSE/upper layer protocol by the peer: the association is aborted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProtocolViolation(String);

/// Serves `association` until it is released, aborted or lost, and its instances are indexed;
/// returns how it ended.
pub async fn serve<S: Stream>(
    association: AsyncServerAssociation<S>,
    read_timeout: std::time::Duration,
    store: &InstanceStore,
    metrics: &Metrics,
    association_id: i64,
) -> (AssociationEnd, Option<String>) {
    let mut indexing = Vec::new();
    let end = serve_messages(
        association,
        read_timeout,
        store,
        metrics,
        association_id,
        &mut indexing,
    )
    .await;
    wait_for_rows(&mut indexing, association_id).await;
    end
}

/// Waits (at most `INDEXING_WAIT`) for the index rows of the instances stored so far.
async fn wait_for_rows(indexing: &mut Vec<Indexing>, association_id: i64) {
    let rows = std::mem::take(indexing);
    let all = async {
        for row in rows {
            row.finished().await;
        }
    };
    if tokio::time::timeout(INDEXING_WAIT, all).await.is_err() {
        warn!(
            association = association_id,
            "the association ends before its instances are indexed (retried in the background)"
        );
    }
}

async fn serve_messages<S: Stream>(
    mut association: AsyncServerAssociation<S>,
    read_timeout: std::time::Duration,
    store: &InstanceStore,
    metrics: &Metrics,
    association_id: i64,
    indexing: &mut Vec<Indexing>,
) -> (AssociationEnd, Option<String>) {
    let calling_ae = association.peer_ae_title().trim().to_owned();
    let called_ae = association.called_ae_title().trim().to_owned();
    let ctx = StoreContext {
        store,
        metrics,
        association: association_id,
        calling_ae: &calling_ae,
        called_ae: &called_ae,
    };
    let mut messages = Reassembly::default();
    loop {
        let pdu = match pdu::receive(&mut association, read_timeout).await {
            Ok(pdu) => pdu,
            Err(error) => {
                let (end, reason) = classify_receive_error(&error, messages.is_mid_message());
                if end == AssociationEnd::TimedOut {
                    let _ = association.abort().await;
                }
                return (end, Some(reason));
            }
        };
        match pdu {
            Incoming::PData(values) => {
                for pdv in values {
                    let message = match messages.accept(pdv) {
                        Ok(Some(message)) => message,
                        Ok(None) => {
                            try_early_start(&association, ctx, &mut messages);
                            continue;
                        }
                        Err(violation) => return abort(association, violation).await,
                    };
                    match dispatch(&mut association, ctx, message).await {
                        Ok(Some(row)) => {
                            indexing.retain(|row| !row.is_finished());
                            indexing.push(row);
                        }
                        Ok(None) => {}
                        Err(violation) => return abort(association, violation).await,
                    }
                }
            }
            Incoming::Other(Pdu::ReleaseRQ) => {
                wait_for_rows(indexing, association_id).await;
                let _ = association.send(&Pdu::ReleaseRP).await;
                let reason = messages
                    .is_mid_message()
                    .then(|| "released in the middle of a message".to_owned());
                return (AssociationEnd::Released, reason);
            }
            Incoming::Other(Pdu::AbortRQ { source }) => {
                return (
                    AssociationEnd::AbortedByPeer,
                    Some(format!("A-ABORT from {source:?}")),
                );
            }
            Incoming::Other(other) => {
                let violation =
                    ProtocolViolation(format!("unexpected PDU {}", other.short_description()));
                return abort(association, violation).await;
            }
        }
    }
}

/// Begins the file of the C-STORE whose data set is arriving, once its head names it.
fn try_early_start<S: Stream>(
    association: &AsyncServerAssociation<S>,
    ctx: StoreContext<'_>,
    messages: &mut Reassembly,
) {
    let expected = messages.expected_data_set_len();
    let Some((context_id, command, head)) = messages.awaiting_early_start() else {
        return;
    };
    let start = match accepted_context(association, context_id) {
        Ok(context) => c_store::begin(
            ctx,
            &context.abstract_syntax,
            &context.transfer_syntax,
            command,
            head,
            expected,
        ),
        Err(_) => c_store::EarlyStart::Declined,
    };
    messages.early_start(start);
}

/// The accepted presentation context `id` of `association`.
fn accepted_context<S: Stream>(
    association: &AsyncServerAssociation<S>,
    id: u8,
) -> Result<PresentationContextNegotiated, ProtocolViolation> {
    association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == id)
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
        .ok_or_else(|| {
            ProtocolViolation(format!(
                "message on presentation context {id}, which was not accepted"
            ))
        })
}

/// Adds one PDV to the message being assembled; returns the message once it is complete. A data
/// set's buffer is reserved at `data_set_hint` bytes when its first fragment is smaller.
fn accept_fragment(
    pending: &mut Option<PendingMessage>,
    pdv: Pdv,
    data_set_hint: usize,
) -> Result<Option<Message>, ProtocolViolation> {
    let message = pending.get_or_insert_with(|| PendingMessage {
        presentation_context_id: pdv.presentation_context_id,
        command_bytes: Vec::new(),
        command: None,
        data_set: Vec::new(),
        started: std::time::Instant::now(),
        early: c_store::EarlyStart::NotYet,
    });
    if message.presentation_context_id != pdv.presentation_context_id {
        return Err(ProtocolViolation(format!(
            "fragment for presentation context {} inside a message on context {}",
            pdv.presentation_context_id, message.presentation_context_id
        )));
    }
    match (pdv.value_type, &message.command) {
        (PDataValueType::Command, None) => {
            message.command_bytes.extend_from_slice(&pdv.data);
            if !pdv.is_last {
                return Ok(None);
            }
            let command = Command::parse(&message.command_bytes)
                .map_err(|e| ProtocolViolation(e.to_string()))?;
            if command.has_data_set {
                message.command = Some(command);
                return Ok(None);
            }
            let (presentation_context_id, started) =
                (message.presentation_context_id, message.started);
            *pending = None;
            Ok(Some(Message {
                presentation_context_id,
                command,
                data_set: None,
                early: None,
                received: started.elapsed(),
            }))
        }
        (PDataValueType::Data, Some(_)) => {
            if message.data_set.len() + pdv.data.len() > MAX_DATA_SET_BYTES {
                return Err(ProtocolViolation(format!(
                    "data set larger than {MAX_DATA_SET_BYTES} bytes"
                )));
            }
            if message.data_set.is_empty() && pdv.data.len() >= data_set_hint {
                message.data_set = Vec::from(pdv.data);
            } else {
                message
                    .data_set
                    .reserve_exact(data_set_hint.saturating_sub(message.data_set.len()));
                message.data_set.extend_from_slice(&pdv.data);
                if let c_store::EarlyStart::Begun(receiving) = &mut message.early {
                    receiving.append(pdv.data);
                }
            }
            if !pdv.is_last {
                return Ok(None);
            }
            let done = pending.take().expect("message is pending");
            Ok(Some(Message {
                presentation_context_id: done.presentation_context_id,
                command: done.command.expect("command was parsed"),
                data_set: Some(done.data_set),
                early: match done.early {
                    c_store::EarlyStart::Begun(receiving) => Some(receiving),
                    _ => None,
                },
                received: done.started.elapsed(),
            }))
        }
        (PDataValueType::Data, None) => Err(ProtocolViolation(
            "data set fragment before the end of its command set".into(),
        )),
        (PDataValueType::Command, Some(_)) => Err(ProtocolViolation(
            "command fragment while a data set was expected".into(),
        )),
    }
}

/// Runs the service for `message` and sends its response; returns the index row of an instance
/// it stored.
async fn dispatch<S: Stream>(
    association: &mut AsyncServerAssociation<S>,
    ctx: StoreContext<'_>,
    message: Message,
) -> Result<Option<Indexing>, ProtocolViolation> {
    let context = accepted_context(association, message.presentation_context_id)?;
    let command = &message.command;
    let dispatch_started = std::time::Instant::now();
    let (response, indexing) = match (command.command_field, message.data_set) {
        (command_field::C_ECHO_RQ, _) => {
            debug!(association = ctx.association, "C-ECHO");
            (c_echo::respond(command), None)
        }
        (command_field::C_STORE_RQ, Some(data_set)) => {
            c_store::handle(
                ctx,
                &context.abstract_syntax,
                &context.transfer_syntax,
                command,
                data_set,
                message.early,
            )
            .await
        }
        (field, _) => {
            return Err(ProtocolViolation(format!(
                "unsupported DIMSE command field {field:#06X}"
            )));
        }
    };
    debug!(
        received_us = message.received.as_micros() as u64,
        handled_us = dispatch_started.elapsed().as_micros() as u64,
        "handled"
    );
    let max_pdu = association.requestor_max_pdu_length();
    for pdu in dimse::pdata_pdus(context.id, PDataValueType::Command, &response, max_pdu) {
        association
            .send(&pdu)
            .await
            .map_err(|e| ProtocolViolation(format!("cannot send the response: {e}")))?;
    }
    Ok(indexing)
}

async fn abort<S: Stream>(
    association: AsyncServerAssociation<S>,
    violation: ProtocolViolation,
) -> (AssociationEnd, Option<String>) {
    warn!(reason = ?violation.to_string(), "aborting association");
    let _ = association.abort().await;
    (AssociationEnd::AbortedByUs, Some(violation.0))
}

/// How a failed receive ended the association.
fn classify_receive_error(error: &ReceiveError, mid_message: bool) -> (AssociationEnd, String) {
    let during = if mid_message {
        " in the middle of a message"
    } else {
        ""
    };
    match error {
        ReceiveError::Timeout => (
            AssociationEnd::TimedOut,
            format!("no PDU within the read timeout{during}"),
        ),
        ReceiveError::Closed | ReceiveError::Io(_) => (
            AssociationEnd::ConnectionLost,
            format!("connection closed by the peer{during}"),
        ),
        other => (
            AssociationEnd::ConnectionLost,
            format!("cannot read a PDU{during}: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::StoreRequest;

    fn pdv(value_type: PDataValueType, data: &[u8], is_last: bool) -> Pdv {
        Pdv {
            presentation_context_id: 1,
            value_type,
            is_last,
            data: bytes::Bytes::copy_from_slice(data),
        }
    }

    /// Two C-STOREs in 1000-byte fragments: each data set comes out whole, and the second one's
    /// buffer was reserved at the first one's size (not grown fragment by fragment).
    #[test]
    fn data_sets_are_reassembled_whole_into_a_buffer_sized_from_the_last() {
        let command = StoreRequest {
            message_id: 1,
            affected_sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
            affected_sop_instance_uid: "2.25.1",
        }
        .encode();
        let mut messages = Reassembly::default();
        for round in 0..2u8 {
            let data_set: Vec<u8> = (0..10_000u32).map(|i| (i as u8) ^ round).collect();
            assert!(
                messages
                    .accept(pdv(PDataValueType::Command, &command, true))
                    .unwrap()
                    .is_none()
            );
            let chunks: Vec<&[u8]> = data_set.chunks(1000).collect();
            let mut done = None;
            for (i, chunk) in chunks.iter().enumerate() {
                let last = i + 1 == chunks.len();
                done = messages
                    .accept(pdv(PDataValueType::Data, chunk, last))
                    .unwrap();
                assert_eq!(done.is_some(), last);
            }
            let received = done.unwrap().data_set.unwrap();
            assert_eq!(received, data_set);
            if round == 1 {
                assert_eq!(received.capacity(), data_set.len());
            }
            assert!(!messages.is_mid_message());
        }
    }
}
