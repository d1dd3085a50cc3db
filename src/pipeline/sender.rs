//! The outbox sender: delivers due outbox rows to their destinations (one association per
//! destination per round), and decides from each answer whether an object is sent, retried
//! after an exponential back-off, or failed for good. Every attempt is recorded.

use crate::config::SenderConfig;
use crate::metrics::{DeliveryOutcome, Metrics};
use crate::net::dimse::status;
use crate::net::send::{AssociationFailure, Delivery, Outgoing, SendSettings, send};
use crate::store::db::{Index, now_ms};
use crate::store::work::{Destination, OutboxItem, SendOutcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// Longest sleep between looks at the outbox (rows queued by `jnsc resend` are seen this soon).
const IDLE_POLL: Duration = Duration::from_secs(2);
/// Rows taken per round.
const BATCH: i64 = 200;

/// Runs until `stopped` turns true; `wake` shortens the wait when new rows are queued.
pub async fn run(
    index: Index,
    storage_root: PathBuf,
    config: SenderConfig,
    settings: SendSettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        match index.due_outbox(BATCH).await {
            Ok(due) if !due.is_empty() => {
                deliver(&index, &storage_root, &config, &settings, &metrics, due).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the outbox"),
        }
        let wait = match index.next_outbox_due().await {
            Ok(Some(at)) => {
                Duration::from_millis((at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64) as u64)
            }
            _ => IDLE_POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Sends one round of due rows, grouped by destination.
async fn deliver(
    index: &Index,
    storage_root: &std::path::Path,
    config: &SenderConfig,
    settings: &SendSettings,
    metrics: &Metrics,
    due: Vec<OutboxItem>,
) {
    let mut groups: Vec<(Destination, Vec<OutboxItem>)> = Vec::new();
    for item in due {
        let destination = Destination {
            ae_title: item.dest_ae.clone(),
            host: item.dest_host.clone(),
            port: u16::try_from(item.dest_port).unwrap_or(0),
        };
        match groups.iter_mut().find(|(d, _)| *d == destination) {
            Some((_, items)) => items.push(item),
            None => groups.push((destination, vec![item])),
        }
    }
    for (destination, items) in groups {
        let outgoing: Vec<Outgoing> = items
            .iter()
            .map(|item| Outgoing {
                sop_class_uid: item.sop_class_uid.clone(),
                sop_instance_uid: item.sop_instance_uid.clone(),
                path: storage_root.join(&item.path),
            })
            .collect();
        let started = Instant::now();
        let result = send(&destination, &outgoing, settings).await;
        metrics
            .send_seconds
            .observe(started.elapsed().as_secs_f64());
        let elapsed = started.elapsed().as_millis() as i64;
        for (i, item) in items.iter().enumerate() {
            let outcome = match &result {
                Ok(deliveries) => outcome_of(&deliveries[i], item.attempts, config),
                Err(failure) => association_outcome(failure, item.attempts, config),
            };
            match &outcome {
                SendOutcome::Sent { status } => {
                    metrics.send(DeliveryOutcome::Sent);
                    info!(
                    outbox = item.id,
                    sop_instance_uid = %item.sop_instance_uid,
                    destination = %destination.ae_title,
                    status = format!("{status:#06x}"),
                    "result delivered"
                    );
                }
                SendOutcome::Retry {
                    error,
                    next_attempt_at,
                    ..
                } => {
                    metrics.send(DeliveryOutcome::Retry);
                    warn!(
                    outbox = item.id,
                    destination = %destination.ae_title,
                    attempt = item.attempts + 1,
                    retry_in_s = (next_attempt_at - now_ms()) / 1000,
                    error = %error,
                    "delivery failed; will retry"
                    );
                }
                SendOutcome::Failed { error, .. } => {
                    metrics.send(DeliveryOutcome::Failed);
                    warn!(
                    outbox = item.id,
                    destination = %destination.ae_title,
                    attempt = item.attempts + 1,
                    error = %error,
                    "delivery failed for good"
                    );
                }
            }
            if let Err(e) = index.record_send(item.id, &outcome, elapsed).await {
                warn!(outbox = item.id, error = %e, "cannot record a delivery attempt");
            }
        }
    }
}

/// Whether a DIMSE status is worth retrying (PS3.4 B.2.3, PS3.7 C): out of resources,
/// processing failure, resource limitation, duplicate invocation.
fn is_transient(status: u16) -> bool {
    (status & 0xFF00) == status::OUT_OF_RESOURCES
        || matches!(
            status,
            status::PROCESSING_FAILURE | status::DUPLICATE_INVOCATION | status::RESOURCE_LIMITATION
        )
}

/// Success (0000) or a warning (0001, Bxxx): the object is stored.
fn is_stored(status: u16) -> bool {
    status == status::SUCCESS
        || status == status::OPTIONAL_ATTRIBUTES_NOT_SUPPORTED
        || (status & 0xF000) == status::WARNING_CLASS
}

/// A retry after back-off, unless `attempts` (before this one) used up the allowance.
fn retry_or_fail(
    status: Option<u16>,
    error: String,
    attempts: i64,
    config: &SenderConfig,
) -> SendOutcome {
    let attempts = attempts.max(0) as u32 + 1;
    if attempts >= config.max_attempts {
        return SendOutcome::Failed {
            status,
            error: format!("{error} (gave up after {attempts} attempts)"),
        };
    }
    SendOutcome::Retry {
        status,
        error,
        next_attempt_at: now_ms() + config.backoff(attempts).as_millis() as i64,
    }
}

/// The outbox's decision for one delivered (or not) object.
pub fn outcome_of(delivery: &Delivery, attempts: i64, config: &SenderConfig) -> SendOutcome {
    match delivery {
        Delivery::Answered { status, .. } if is_stored(*status) => {
            SendOutcome::Sent { status: *status }
        }
        Delivery::Answered { status, comment } => {
            let error = format!(
                "C-STORE failed with status {status:#06x}{}",
                comment
                    .as_ref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            );
            if is_transient(*status) {
                retry_or_fail(Some(*status), error, attempts, config)
            } else {
                SendOutcome::Failed {
                    status: Some(*status),
                    error,
                }
            }
        }
        Delivery::NotAccepted(reason) | Delivery::Unreadable(reason) => SendOutcome::Failed {
            status: None,
            error: reason.clone(),
        },
        Delivery::Lost(reason) => retry_or_fail(None, reason.clone(), attempts, config),
    }
}

fn association_outcome(
    failure: &AssociationFailure,
    attempts: i64,
    config: &SenderConfig,
) -> SendOutcome {
    if failure.transient {
        retry_or_fail(None, failure.message.clone(), attempts, config)
    } else {
        SendOutcome::Failed {
            status: None,
            error: failure.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SenderConfig {
        SenderConfig {
            max_attempts: 3,
            retry_base_secs: 10,
            retry_max_secs: 25,
            ..SenderConfig::default()
        }
    }

    #[test]
    fn statuses_are_classified() {
        let c = config();
        let answered = |status| Delivery::Answered {
            status,
            comment: None,
        };
        assert!(matches!(
            outcome_of(&answered(0x0000), 0, &c),
            SendOutcome::Sent { .. }
        ));
        assert!(matches!(
            outcome_of(&answered(0xB000), 0, &c),
            SendOutcome::Sent { .. }
        ));
        for permanent in [0x0122, 0xA900, 0xC000, 0x0124] {
            assert!(
                matches!(
                    outcome_of(&answered(permanent), 0, &c),
                    SendOutcome::Failed { .. }
                ),
                "{permanent:#x}"
            );
        }
        for transient in [0xA700, 0xA7FF, 0x0110, 0x0213] {
            assert!(
                matches!(
                    outcome_of(&answered(transient), 0, &c),
                    SendOutcome::Retry { .. }
                ),
                "{transient:#x}"
            );
        }
        assert!(matches!(
            outcome_of(&Delivery::NotAccepted("no".into()), 0, &c),
            SendOutcome::Failed { .. }
        ));
    }

    #[test]
    fn retries_back_off_exponentially_and_stop() {
        let c = config();
        assert_eq!(c.backoff(1), Duration::from_secs(10));
        assert_eq!(c.backoff(2), Duration::from_secs(20));
        assert_eq!(c.backoff(3), Duration::from_secs(25), "capped");
        let lost = Delivery::Lost("connection reset".into());
        let before = now_ms();
        let SendOutcome::Retry {
            next_attempt_at, ..
        } = outcome_of(&lost, 1, &c)
        else {
            panic!("the second attempt is retried")
        };
        assert!(next_attempt_at >= before + 20_000 && next_attempt_at <= now_ms() + 20_000);
        assert!(
            matches!(outcome_of(&lost, 2, &c), SendOutcome::Failed { .. }),
            "third attempt was the last"
        );
    }
}
