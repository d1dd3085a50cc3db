//! The outbox sender: delivers due outbox rows to their destinations (one association per
//! destination per round), and decides from each answer whether an object is sent, retried
//! after an exponential back-off, or failed for good. Every attempt is recorded. The rows of a
//! round are claimed for this node ([`Claimant`]) and the claim is renewed while they are sent,
//! so that no other node's sender delivers them too.

use crate::config::SenderConfig;
use crate::metrics::{DeliveryOutcome, Metrics};
use crate::net::dimse::status;
use crate::net::send::{AssociationFailure, Delivery, Outgoing, SendSettings, send};
use crate::store::db::{Index, now_ms};
use crate::store::work::{Claimant, Destination, OutboxItem, SendOutcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// Longest sleep between looks at the outbox (rows queued by `jnsc resend` are seen this soon).
const IDLE_POLL: Duration = Duration::from_secs(2);
/// Rows taken per round.
const BATCH: i64 = 200;

/// The outbox sender of one node.
pub struct Sender {
    pub index: Index,
    /// The storage directory (outbox paths are relative to it).
    pub storage_root: PathBuf,
    pub config: SenderConfig,
    pub settings: SendSettings,
    pub metrics: Arc<Metrics>,
    /// This node, as the holder of the rows it sends.
    pub claimant: Claimant,
}

impl Sender {
    /// Runs until `stopped` turns true; `wake` shortens the wait when new rows are queued.
    pub async fn run(self, wake: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
        let index = &self.index;
        loop {
            if *stopped.borrow() {
                return;
            }
            match index.claim_due_outbox(&self.claimant, BATCH).await {
                Ok(due) if !due.is_empty() => {
                    self.deliver(due).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot read the outbox"),
            }
            let wait = match index.next_outbox_due().await {
                Ok(Some(at)) => Duration::from_millis(
                    (at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64) as u64,
                ),
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// Sends one round of claimed rows, grouped by destination.
    async fn deliver(&self, due: Vec<OutboxItem>) {
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
        // Claims of the groups still waiting are renewed with the group being sent.
        let mut held: Vec<i64> = groups
            .iter()
            .flat_map(|(_, items)| items.iter().map(|item| item.id))
            .collect();
        for (destination, items) in groups {
            let outgoing: Vec<Outgoing> = items
                .iter()
                .map(|item| Outgoing {
                    sop_class_uid: item.sop_class_uid.clone(),
                    sop_instance_uid: item.sop_instance_uid.clone(),
                    path: self.storage_root.join(&item.path),
                })
                .collect();
            let started = Instant::now();
            let result = self
                .holding_claims(&held, send(&destination, &outgoing, &self.settings))
                .await;
            self.metrics
                .send_seconds
                .observe(started.elapsed().as_secs_f64());
            let elapsed = started.elapsed().as_millis() as i64;
            for (i, item) in items.iter().enumerate() {
                let outcome = match &result {
                    Ok(deliveries) => outcome_of(&deliveries[i], item.attempts, &self.config),
                    Err(failure) => association_outcome(failure, item.attempts, &self.config),
                };
                self.log(item, &destination, &outcome);
                match self
                    .index
                    .record_send(item.id, &self.claimant, &outcome, elapsed)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        outbox = item.id,
                        sop_instance_uid = %item.sop_instance_uid,
                        "the attempt was not recorded: the row was superseded, or this node's \
                         claim ran out and another node may send the object again"
                    ),
                    Err(e) => {
                        warn!(outbox = item.id, error = %e, "cannot record a delivery attempt")
                    }
                }
            }
            held.retain(|id| !items.iter().any(|item| item.id == *id));
        }
    }

    /// Runs `sending` while renewing this node's claim on the rows `held`, a few times per
    /// lease period.
    async fn holding_claims<T>(&self, held: &[i64], sending: impl Future<Output = T>) -> T {
        let mut ticker = tokio::time::interval(self.claimant.lease / 3);
        ticker.tick().await;
        tokio::pin!(sending);
        loop {
            tokio::select! {
                done = &mut sending => return done,
                _ = ticker.tick() => {
                    if let Err(e) = self.index.renew_outbox_claims(held, &self.claimant).await {
                        warn!(error = %e, "cannot renew the claim on the outbox rows being sent");
                    }
                }
            }
        }
    }

    /// Counts and logs one attempt's outcome.
    fn log(&self, item: &OutboxItem, destination: &Destination, outcome: &SendOutcome) {
        match outcome {
            SendOutcome::Sent { status } => {
                self.metrics.send(DeliveryOutcome::Sent);
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
                self.metrics.send(DeliveryOutcome::Retry);
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
                self.metrics.send(DeliveryOutcome::Failed);
                warn!(
                    outbox = item.id,
                    destination = %destination.ae_title,
                    attempt = item.attempts + 1,
                    error = %error,
                    "delivery failed for good"
                );
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
