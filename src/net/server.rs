//! The SCP's listener: owns the TCP socket, the bound on concurrent associations, the access
//! policy (allow-list of calling AE titles, called AE title), the association log and shutdown.
//! Each established association is served by `association::serve` in its own task.

use crate::config::Config;
use crate::net::association;
use crate::net::presentation::{STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION};
use crate::store::InstanceStore;
use dicom_ul::Pdu;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::{Association, Error as UlError};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, UserIdentity,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, warn};

/// How long open associations may take to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest A-ASSOCIATE-RQ read when refusing an association for lack of capacity.
const MAX_REFUSED_RQ_BYTES: usize = 1 << 20;

/// Accepts associations on `listener` until `shutdown` turns true, then lets open associations
/// finish for a grace period.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    store: Arc<InstanceStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.dicom.max_associations));
    let mut tasks = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        let _ = socket.set_nodelay(true);
        let span = tracing::info_span!("association", peer = %peer);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                let config = Arc::clone(&config);
                let store = Arc::clone(&store);
                tasks.spawn(
                    async move {
                        handle_connection(socket, peer, &config, &store).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                let store = Arc::clone(&store);
                tasks
                    .spawn(async move { refuse_busy(socket, peer, &store).await }.instrument(span));
            }
        }
    }
    info!(
        open = tasks.len(),
        "DICOM listener stopped; waiting for open associations"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!(
            open = tasks.len(),
            "closing associations still open after the grace period"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Negotiates, serves and logs one association.
async fn handle_connection(
    socket: TcpStream,
    peer: SocketAddr,
    config: &Config,
    store: &InstanceStore,
) {
    let policy = AccessPolicy::new(config);
    let seen_titles = Arc::clone(&policy.seen_titles);
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(policy)
        .ae_title(config.dicom.ae_title.as_str())
        .max_pdu_length(config.dicom.max_pdu)
        .read_timeout(config.read_timeout())
        .write_timeout(config.write_timeout())
        .with_abstract_syntax(VERIFICATION);
    for (uid, _) in STORAGE_SOP_CLASSES {
        options = options.with_abstract_syntax(*uid);
    }
    for (uid, _) in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*uid);
    }

    let association = match options.establish_async(socket).await {
        Ok(association) => association,
        Err(UlError::Rejected { association_rj, .. }) => {
            let titles = seen_titles.lock().unwrap_or_else(|e| e.into_inner()).take();
            let (calling, called) = titles.unzip();
            let reason = format!("rejected: {}", association_rj.source);
            warn!(calling_ae = ?calling, called_ae = ?called, %reason, "association rejected");
            log_rejection(store, calling.as_deref(), called.as_deref(), peer, &reason).await;
            return;
        }
        Err(e) => {
            debug!(error = %e, "association not established");
            return;
        }
    };

    let calling_ae = association.peer_ae_title().trim().to_owned();
    let called_ae = association.called_ae_title().trim().to_owned();
    let id = match store
        .index()
        .begin_association(&calling_ae, &called_ae, &peer.to_string())
        .await
    {
        Ok(id) => id,
        Err(e) => {
            error!(error = %e, "cannot log the association; aborting it");
            let _ = association.abort().await;
            return;
        }
    };
    info!(association = id, calling_ae = %calling_ae, "association established");
    let (end, reason) = association::serve(association, store, id).await;
    info!(association = id, end = end.as_str(), reason = ?reason, "association ended");
    if let Err(e) = store
        .index()
        .end_association(id, end, reason.as_deref())
        .await
    {
        error!(association = id, error = %e, "cannot log the end of the association");
    }
}

/// Answers an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ (transient, local limit exceeded) when all
/// association slots are taken.
async fn refuse_busy(mut socket: TcpStream, peer: SocketAddr, store: &InstanceStore) {
    let read = async {
        let mut header = [0u8; 6];
        socket.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if header[0] != 0x01 || length > MAX_REFUSED_RQ_BYTES {
            return Ok::<_, std::io::Error>(None);
        }
        let mut pdu = header.to_vec();
        pdu.resize(6 + length, 0);
        socket.read_exact(&mut pdu[6..]).await?;
        Ok(Some(pdu))
    };
    let request = tokio::time::timeout(Duration::from_secs(10), read).await;
    let (calling, called) = match request {
        Ok(Ok(Some(bytes))) => {
            match dicom_ul::read_pdu(&bytes[..], MAX_REFUSED_RQ_BYTES as u32, false) {
                Ok(Some(Pdu::AssociationRQ(rq))) => (
                    Some(rq.calling_ae_title.trim().to_owned()),
                    Some(rq.called_ae_title.trim().to_owned()),
                ),
                _ => (None, None),
            }
        }
        _ => return,
    };
    let reject = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut bytes = Vec::new();
    if dicom_ul::write_pdu(&mut bytes, &reject).is_ok() {
        let _ = socket.write_all(&bytes).await;
        let _ = socket.shutdown().await;
    }
    let reason = "rejected: all association slots are in use (local limit exceeded)";
    warn!(calling_ae = ?calling, reason, "association rejected");
    log_rejection(store, calling.as_deref(), called.as_deref(), peer, reason).await;
}

async fn log_rejection(
    store: &InstanceStore,
    calling: Option<&str>,
    called: Option<&str>,
    peer: SocketAddr,
    reason: &str,
) {
    if let Err(e) = store
        .index()
        .record_rejected_association(calling, called, &peer.to_string(), reason)
        .await
    {
        error!(error = %e, "cannot log a rejected association");
    }
}

/// The configured access policy. With `allow_unknown_callers = false`, only calling AE titles of
/// configured peers may associate, and only to our own AE title. It remembers the titles it saw
/// so that a rejection can be logged with them.
struct AccessPolicy {
    allow_unknown_callers: bool,
    known_callers: HashSet<String>,
    seen_titles: Arc<Mutex<Option<(String, String)>>>,
}

impl AccessPolicy {
    fn new(config: &Config) -> Self {
        Self {
            allow_unknown_callers: config.dicom.allow_unknown_callers,
            known_callers: config
                .dicom
                .peers
                .iter()
                .map(|p| p.ae_title.trim().to_owned())
                .collect(),
            seen_titles: Arc::default(),
        }
    }
}

impl AccessControl for AccessPolicy {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        let called = called_ae_title.trim();
        *self.seen_titles.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((calling.to_owned(), called.to_owned()));
        if self.allow_unknown_callers {
            return Ok(());
        }
        if !self.known_callers.contains(calling) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if called != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        Ok(())
    }
}
