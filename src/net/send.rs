//! C-STORE SCU: delivers stored Part 10 files to one destination over one association. It
//! proposes the result SOP classes with explicit and implicit VR little endian, re-encodes each
//! data set in the transfer syntax the destination accepted, and reports per object what the
//! destination answered, over plain TCP or DICOM TLS (`tls::ClientTls` says which destinations
//! get TLS). Whether to retry is the outbox's decision (`pipeline::sender`).

use crate::net::Stream;
use crate::net::dimse::{self, ReceivedResponse, StoreRequest, command_field};
use crate::net::presentation::{PROPOSED_TRANSFER_SYNTAXES, RESULT_SOP_CLASSES};
use crate::net::tls::ClientTls;
use crate::store::work::Destination;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::Pdu;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::association::{AsyncClientAssociation, Error as UlError};
use dicom_ul::pdu::{AssociationRJResult, PDataValueType, PresentationContextResultReason};
use std::path::PathBuf;
use std::time::Duration;

/// How this node presents itself and how long it waits.
#[derive(Debug, Clone)]
pub struct SendSettings {
    pub calling_ae_title: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Largest PDU we accept from the destination.
    pub max_pdu: u32,
    /// The destinations reached over TLS, and how.
    pub tls: Option<ClientTls>,
}

/// One object to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub path: PathBuf,
}

/// What became of one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The destination answered with this status (success, warning or failure).
    Answered {
        status: u16,
        comment: Option<String>,
    },
    /// The destination did not accept a presentation context for its SOP class.
    NotAccepted(String),
    /// The file could not be read or encoded (nothing was sent).
    Unreadable(String),
    /// The association broke before an answer came.
    Lost(String),
}

/// The association could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AssociationFailure {
    /// A later attempt may succeed (connection refused, timeout, transient rejection).
    pub transient: bool,
    pub message: String,
}

/// Opens one association to `destination` and sends `objects` in order.
pub async fn send(
    destination: &Destination,
    objects: &[Outgoing],
    settings: &SendSettings,
) -> Result<Vec<Delivery>, AssociationFailure> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(settings.calling_ae_title.as_str())
        .called_ae_title(destination.ae_title.as_str())
        .max_pdu_length(settings.max_pdu);
    // Every result SOP class is proposed (what conformance.md lists), whatever this round holds.
    for (class, _) in RESULT_SOP_CLASSES {
        options = options.with_presentation_context(
            *class,
            PROPOSED_TRANSFER_SYNTAXES
                .iter()
                .map(|(uid, _)| *uid)
                .collect(),
        );
    }
    let address = (destination.host.as_str(), destination.port);
    let tls = settings
        .tls
        .as_ref()
        .and_then(|tls| tls.for_destination(&destination.host, destination.port));
    match tls {
        Some((tls_config, server_name)) => {
            let establish = options
                .tls_config(tls_config)
                .server_name(server_name)
                .establish_tls_async(address);
            let association = open(destination, settings, establish).await?;
            Ok(exchange(association, objects, settings).await)
        }
        None => {
            let association = open(destination, settings, options.establish_async(address)).await?;
            Ok(exchange(association, objects, settings).await)
        }
    }
}

/// Awaits the association being opened, within the connect timeout.
async fn open<S>(
    destination: &Destination,
    settings: &SendSettings,
    establish: impl Future<Output = Result<AsyncClientAssociation<S>, UlError>>,
) -> Result<AsyncClientAssociation<S>, AssociationFailure> {
    match tokio::time::timeout(settings.connect_timeout, establish).await {
        Err(_) => Err(AssociationFailure {
            transient: true,
            message: format!(
                "no association with {} within {:?}",
                describe(destination),
                settings.connect_timeout
            ),
        }),
        Ok(Err(error)) => Err(association_failure(destination, &error)),
        Ok(Ok(association)) => Ok(association),
    }
}

/// Sends `objects` in order on an open association, then releases it (or aborts it once one is
/// lost).
async fn exchange<S: Stream>(
    mut association: AsyncClientAssociation<S>,
    objects: &[Outgoing],
    settings: &SendSettings,
) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(objects.len());
    let mut lost: Option<String> = None;
    for (index, object) in objects.iter().enumerate() {
        if let Some(reason) = &lost {
            deliveries.push(Delivery::Lost(reason.clone()));
            continue;
        }
        let message_id = (index % usize::from(u16::MAX)) as u16 + 1;
        let delivery = send_one(&mut association, object, message_id, settings).await;
        if let Delivery::Lost(reason) = &delivery {
            lost = Some(reason.clone());
        }
        deliveries.push(delivery);
    }
    if lost.is_some() {
        let _ = association.abort().await;
    } else {
        let _ = tokio::time::timeout(settings.response_timeout, association.release()).await;
    }
    deliveries
}

/// Sends one object on an open association and waits for its response.
async fn send_one<S: Stream>(
    association: &mut AsyncClientAssociation<S>,
    object: &Outgoing,
    message_id: u16,
    settings: &SendSettings,
) -> Delivery {
    let context = association.presentation_contexts().iter().find(|pc| {
        pc.abstract_syntax.trim_end_matches('\0') == object.sop_class_uid
            && pc.reason == PresentationContextResultReason::Acceptance
    });
    let Some(context) = context.cloned() else {
        return Delivery::NotAccepted(format!(
            "the destination accepted no presentation context for SOP class {}",
            object.sop_class_uid
        ));
    };
    let data_set = match encode(object, context.transfer_syntax.trim_end_matches('\0')) {
        Ok(bytes) => bytes,
        Err(message) => return Delivery::Unreadable(message),
    };
    let command = StoreRequest {
        message_id,
        affected_sop_class_uid: &object.sop_class_uid,
        affected_sop_instance_uid: &object.sop_instance_uid,
    }
    .encode();
    let max_pdu = association.acceptor_max_pdu_length();
    let pdus = dimse::pdata_pdus(context.id, PDataValueType::Command, &command, max_pdu)
        .into_iter()
        .chain(dimse::pdata_pdus(
            context.id,
            PDataValueType::Data,
            &data_set,
            max_pdu,
        ));
    for pdu in pdus {
        if let Err(e) = association.send(&pdu).await {
            return Delivery::Lost(format!("sending failed: {e}"));
        }
    }
    let mut response = Vec::new();
    loop {
        let pdu = match tokio::time::timeout(settings.response_timeout, association.receive()).await
        {
            Err(_) => {
                return Delivery::Lost(format!(
                    "no C-STORE response within {:?}",
                    settings.response_timeout
                ));
            }
            Ok(Err(e)) => return Delivery::Lost(format!("receiving failed: {e}")),
            Ok(Ok(pdu)) => pdu,
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        continue;
                    }
                    response.extend_from_slice(&pdv.data);
                    if !pdv.is_last {
                        continue;
                    }
                    return match ReceivedResponse::parse(&response) {
                        Ok(r)
                            if r.command_field == command_field::C_STORE_RSP
                                && r.message_id_being_responded_to == message_id =>
                        {
                            Delivery::Answered {
                                status: r.status,
                                comment: r.error_comment,
                            }
                        }
                        Ok(r) => Delivery::Lost(format!(
                            "unexpected response (command field {:#06x}, message {})",
                            r.command_field, r.message_id_being_responded_to
                        )),
                        Err(e) => Delivery::Lost(format!("unreadable response: {e}")),
                    };
                }
            }
            Pdu::AbortRQ { source } => {
                return Delivery::Lost(format!("the destination aborted ({source:?})"));
            }
            other => {
                return Delivery::Lost(format!(
                    "unexpected PDU {} while waiting for the response",
                    other.short_description()
                ));
            }
        }
    }
}

/// The object's data set in `transfer_syntax`.
fn encode(object: &Outgoing, transfer_syntax: &str) -> Result<Vec<u8>, String> {
    let file = dicom_object::open_file(&object.path)
        .map_err(|e| format!("cannot read {}: {e}", object.path.display()))?;
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
    let mut bytes = Vec::new();
    file.write_dataset_with_ts(&mut bytes, ts)
        .map_err(|e| format!("cannot encode {}: {e}", object.path.display()))?;
    Ok(bytes)
}

fn describe(destination: &Destination) -> String {
    format!(
        "{}@{}:{}",
        destination.ae_title, destination.host, destination.port
    )
}

/// Classifies a failure to associate.
fn association_failure(destination: &Destination, error: &UlError) -> AssociationFailure {
    let (transient, what) = match error {
        UlError::Rejected { association_rj, .. } => (
            association_rj.result == AssociationRJResult::Transient,
            format!(
                "association rejected ({:?}, {:?})",
                association_rj.result, association_rj.source
            ),
        ),
        UlError::NoAcceptedPresentationContexts { .. } => (
            false,
            "the destination accepted none of the proposed SOP classes".to_owned(),
        ),
        other => (true, crate::net::with_causes(other)),
    };
    AssociationFailure {
        transient,
        message: format!("{}: {what}", describe(destination)),
    }
}
