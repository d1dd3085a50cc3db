//! C-STORE SCP: validates a received data set against its request and presentation context,
//! hands it to the durable store, and answers with the status that says what happened. A new
//! instance's file is begun while its data set is still arriving (`begin`), and committed once
//! the whole data set is in and valid.
//! Success is only sent after the store has the file on disk (fsynced); the index row follows,
//! and the association waits for its rows before it is released.

use crate::metrics::{InstanceOutcome, Metrics};
use crate::net::dimse::{Command, Response, command_field, status};
use crate::net::presentation::is_accepted_storage_class;
use crate::store::instance::{InstanceError, file_key_from_head, parse_data_set};
use crate::store::{Indexing, InstanceStore, NewInstance, ReceivedInstance, Receiving, Stored};
use tracing::{info, warn};

/// Who is storing: the association the request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct StoreContext<'a> {
    pub store: &'a InstanceStore,
    /// The node's metrics, counting answered requests.
    pub metrics: &'a Metrics,
    pub association: i64,
    pub calling_ae: &'a str,
    pub called_ae: &'a str,
}

/// A refused C-STORE: its status and the reason logged and sent as Error Comment.
struct Failure {
    status: u16,
    reason: String,
}

impl From<InstanceError> for Failure {
    fn from(error: InstanceError) -> Self {
        let status = match error {
            InstanceError::UnsupportedTransferSyntax(_)
            | InstanceError::Unparseable(_)
            | InstanceError::Structure(_)
            | InstanceError::PixelDataLength { .. } => status::CANNOT_UNDERSTAND,
            InstanceError::MissingAttribute { .. }
            | InstanceError::InvalidUid { .. }
            | InstanceError::SopClassMismatch { .. }
            | InstanceError::SopInstanceMismatch { .. } => {
                status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS
            }
        };
        Failure {
            status,
            reason: error.to_string(),
        }
    }
}

/// Handles one C-STORE-RQ and its data set received on a context negotiated for
/// `abstract_syntax` with `transfer_syntax`; returns the encoded C-STORE-RSP, and the stored
/// instance's index row being committed, if one was stored.
pub async fn handle(
    ctx: StoreContext<'_>,
    abstract_syntax: &str,
    transfer_syntax: &str,
    request: &Command,
    data_set: Vec<u8>,
    early: Option<Receiving>,
) -> (Vec<u8>, Option<Indexing>) {
    let sop_class = request
        .affected_sop_class_uid
        .as_deref()
        .unwrap_or_default();
    let sop_instance = request
        .affected_sop_instance_uid
        .as_deref()
        .unwrap_or_default();
    let data_set_len = data_set.len();
    let result = store(
        ctx,
        abstract_syntax,
        transfer_syntax,
        request,
        data_set,
        early,
    )
    .await;
    let (status, comment, indexing) = match result {
        Ok(Stored { outcome, indexing }) => {
            info!(
                association = ctx.association,
                sop_instance = sop_instance,
                bytes = data_set_len,
                ?outcome,
                "instance stored"
            );
            ctx.metrics.instance(InstanceOutcome::Stored);
            (status::SUCCESS, None, Some(indexing))
        }
        Err(failure) => {
            warn!(
                association = ctx.association,
                sop_instance = sop_instance,
                status = format_args!("{:#06X}", failure.status),
                reason = ?failure.reason,
                "C-STORE refused"
            );
            ctx.metrics.instance(InstanceOutcome::Refused);
            if let Err(e) = ctx
                .store
                .index()
                .record_store_failure(
                    ctx.association,
                    Some(sop_instance).filter(|s| !s.is_empty()),
                    Some(sop_class).filter(|s| !s.is_empty()),
                    failure.status,
                    &failure.reason,
                )
                .await
            {
                warn!(association = ctx.association, error = %e, "cannot log the C-STORE failure");
            }
            (failure.status, Some(failure.reason), None)
        }
    };
    let response = Response {
        command_field: command_field::C_STORE_RSP,
        message_id_being_responded_to: request.message_id,
        affected_sop_class_uid: sop_class,
        affected_sop_instance_uid: Some(sop_instance),
        status,
        error_comment: comment.as_deref(),
    }
    .encode();
    (response, indexing)
}

/// Largest head of a data set searched for its file key (`file_key_from_head`): a data set
/// whose UIDs come later than this is stored the whole way.
const MAX_HEAD_BYTES: usize = 1 << 20;

/// Whether the file of a C-STORE whose data set is arriving was begun.
#[derive(Debug)]
pub enum EarlyStart {
    /// The head received so far does not name the file yet.
    NotYet,
    /// It is to be stored the whole way once complete.
    Declined,
    Begun(Receiving),
}

/// Begins the file of the C-STORE `request` whose data set's first `head` bytes have arrived
/// (`InstanceStore::begin`), when the request is one the SCP accepts and the head names its file.
/// A request that will be refused is never begun: its data set is checked whole.
pub fn begin(
    ctx: StoreContext<'_>,
    abstract_syntax: &str,
    transfer_syntax: &str,
    request: &Command,
    head: &[u8],
    expected_bytes: usize,
) -> EarlyStart {
    let Ok((sop_class, sop_instance)) = requested(request, abstract_syntax) else {
        return EarlyStart::Declined;
    };
    let Some(key) = file_key_from_head(head, transfer_syntax) else {
        return if head.len() < MAX_HEAD_BYTES {
            EarlyStart::NotYet
        } else {
            EarlyStart::Declined
        };
    };
    if key.sop_instance_uid.as_str() != sop_instance {
        return EarlyStart::Declined;
    }
    let instance = NewInstance {
        key,
        sop_class_uid: sop_class.to_owned(),
        transfer_syntax: transfer_syntax.to_owned(),
        calling_ae: ctx.calling_ae.to_owned(),
        called_ae: ctx.called_ae.to_owned(),
        expected_bytes: expected_bytes.max(head.len()),
    };
    match ctx.store.begin(instance, head.to_vec()) {
        Some(receiving) => EarlyStart::Begun(receiving),
        None => EarlyStart::Declined,
    }
}

/// The SOP class and instance a C-STORE-RQ announces (without their padding), if the request
/// can be served on a context for `abstract_syntax`.
fn requested<'r>(
    request: &'r Command,
    abstract_syntax: &str,
) -> Result<(&'r str, &'r str), Failure> {
    let refuse = |status, reason: String| Err(Failure { status, reason });
    let Some(sop_class) = request.affected_sop_class_uid.as_deref() else {
        return refuse(
            status::CANNOT_UNDERSTAND,
            "C-STORE-RQ lacks Affected SOP Class UID".into(),
        );
    };
    let Some(sop_instance) = request.affected_sop_instance_uid.as_deref() else {
        return refuse(
            status::CANNOT_UNDERSTAND,
            "C-STORE-RQ lacks Affected SOP Instance UID".into(),
        );
    };
    if sop_class != abstract_syntax || !is_accepted_storage_class(sop_class) {
        return refuse(
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            format!("SOP class {sop_class} sent on a presentation context for {abstract_syntax}"),
        );
    }
    let trim = |uid: &'r str| uid.trim_end_matches(['\0', ' ']);
    Ok((trim(sop_class), trim(sop_instance)))
}

/// Largest data set parsed on the association's own task. The parse reads the elements before
/// the pixel data: for a 512x512 CT slice about 60 us (median, `bench ingest`'s series), less
/// than handing the data set to a blocking thread and back (two thread wake-ups on the path to
/// the answer; 100-600 us measured with the hop). Larger data sets, which may hold megabytes of
/// elements to parse, and deflated ones (inflated first) are parsed on a blocking thread, off the
/// runtime's workers.
const MAX_INLINE_PARSE_BYTES: usize = 4 << 20;

/// Whether a data set of `len` bytes in `transfer_syntax` is parsed on the association's task.
fn parses_inline(transfer_syntax: &str, len: usize) -> bool {
    len <= MAX_INLINE_PARSE_BYTES
        && transfer_syntax != dicom_dictionary_std::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
}

async fn store(
    ctx: StoreContext<'_>,
    abstract_syntax: &str,
    transfer_syntax: &str,
    request: &Command,
    mut data_set: Vec<u8>,
    mut early: Option<Receiving>,
) -> Result<Stored, Failure> {
    let (sop_class, sop_instance) = requested(request, abstract_syntax)?;
    // A file begun early is made durable while the data set is validated; it is kept only if
    // the data set is valid (`InstanceStore::finish`), and removed when `early` is dropped.
    if let Some(receiving) = &mut early {
        receiving.commit();
    }
    let parse_started = std::time::Instant::now();
    let attributes = if parses_inline(transfer_syntax, data_set.len()) {
        parse_data_set(&data_set, transfer_syntax)
    } else {
        let transfer_syntax_owned = transfer_syntax.to_owned();
        let parsed;
        (parsed, data_set) = tokio::task::spawn_blocking(move || {
            let parsed = parse_data_set(&data_set, &transfer_syntax_owned);
            (parsed, data_set)
        })
        .await
        .map_err(|e| Failure {
            status: status::OUT_OF_RESOURCES,
            reason: format!("parser task failed: {e}"),
        })?;
        parsed
    }?;
    tracing::debug!(
        parse_us = parse_started.elapsed().as_micros() as u64,
        "parsed"
    );
    attributes.check_matches_request(sop_class, sop_instance)?;

    let received = ReceivedInstance {
        attributes,
        data_set: std::sync::Arc::new(data_set),
        transfer_syntax: transfer_syntax.to_owned(),
        calling_ae: ctx.calling_ae.to_owned(),
        called_ae: ctx.called_ae.to_owned(),
        association: ctx.association,
    };
    match early {
        Some(receiving) => ctx.store.finish(receiving, received).await,
        None => ctx.store.store(received).await,
    }
    .map_err(|e| Failure {
        status: status::OUT_OF_RESOURCES,
        reason: e.to_string(),
    })
}
