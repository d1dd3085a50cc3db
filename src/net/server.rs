//! The SCP's listener: owns the TCP socket, the bound on concurrent associations, the access
//! policy (allow-list of calling AE titles, called AE title), the association log and shutdown.
//! Each established association is served by `association::serve` in its own task. A listener
//! with a TLS configuration (`tls`) runs the TLS handshake first, within the same time limit as
//! the A-ASSOCIATE-RQ.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::presentation::{STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION};
use crate::net::{Stream, association, with_causes};
use crate::store::InstanceStore;
use dicom_ul::Pdu;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::{Association, Error as UlError};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PresentationContextProposed, UserIdentity,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
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
    tls: Option<Arc<rustls::ServerConfig>>,
    config: Arc<Config>,
    store: Arc<InstanceStore>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.dicom.max_associations));
    let per_host = HostCounts::default();
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
        // Refused before negotiation: too little disk, or every slot taken.
        let admission = match below_disk_floor(&config) {
            Some(free) => Err((
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
                format!(
                    "rejected: {} MiB free on the storage file system, below the floor of {} \
                     MiB (temporary congestion)",
                    free / (1024 * 1024),
                    config.storage.min_free_mb
                ),
            )),
            None => match per_host.try_take(peer.ip(), config.max_associations_per_host()) {
                None => Err((
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                    format!(
                        "rejected: this host already holds {} associations \
                         (dicom.max_associations_per_host; local limit exceeded)",
                        config.max_associations_per_host()
                    ),
                )),
                Some(host_slot) => Arc::clone(&slots)
                    .try_acquire_owned()
                    .map(|permit| (permit, host_slot))
                    .map_err(|_| {
                        (
                            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                            "rejected: all association slots are in use (local limit exceeded)"
                                .into(),
                        )
                    }),
            },
        };
        let store = Arc::clone(&store);
        let metrics = Arc::clone(&metrics);
        match admission {
            Ok((permit, host_slot)) => {
                let config = Arc::clone(&config);
                let tls = tls.clone();
                tasks.spawn(
                    async move {
                        handle_connection(socket, peer, tls, &config, &store, &metrics).await;
                        drop((permit, host_slot));
                    }
                    .instrument(span),
                );
            }
            Err((reason, text)) => {
                tasks.spawn(
                    async move { refuse(socket, peer, &store, &metrics, reason, &text).await }
                        .instrument(span),
                );
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

/// Associations held per host: a slot is given back when its `HostSlot` is dropped.
#[derive(Clone, Default)]
struct HostCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct HostSlot {
    counts: HostCounts,
    host: IpAddr,
}

impl HostCounts {
    /// One more association for `host`, unless it holds `limit` already.
    fn try_take(&self, host: IpAddr, limit: usize) -> Option<HostSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.entry(host).or_insert(0);
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(HostSlot {
            counts: self.clone(),
            host,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = counts.get_mut(&self.host) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.host);
            }
        }
    }
}

/// Negotiates, serves and logs one association.
async fn handle_connection(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    config: &Config,
    store: &InstanceStore,
    metrics: &Metrics,
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

    match tls {
        None => {
            let negotiated = tokio::time::timeout(config.associate_timeout(), async {
                // PS3.8 rules dicom-ul does not enforce, checked on the request before it
                // negotiates.
                if let Err(problem) = check_proposal(&socket).await {
                    abort_invalid(socket).await;
                    return Err(Refusal::Proposal(problem));
                }
                options
                    .establish_async(socket)
                    .await
                    .map_err(Refusal::Negotiation)
            })
            .await;
            conclude(negotiated, config, &seen_titles, peer, store, metrics).await;
        }
        Some(tls) => {
            let options = options.tls_config(tls);
            let negotiated = tokio::time::timeout(config.associate_timeout(), async {
                let association = options
                    .establish_tls_async(socket)
                    .await
                    .map_err(Refusal::Negotiation)?;
                // The request is encrypted and cannot be read before dicom-ul negotiates: the
                // same PS3.8 rules, checked on what it accepted (each proposed context has a
                // result), abort right after the A-ASSOCIATE-AC.
                let ids: Vec<u8> = association
                    .presentation_contexts()
                    .iter()
                    .map(|pc| pc.id)
                    .collect();
                if let Err(problem) = check_context_ids(&ids) {
                    let _ = association.abort().await;
                    return Err(Refusal::Proposal(problem));
                }
                Ok(association)
            })
            .await;
            conclude(negotiated, config, &seen_titles, peer, store, metrics).await;
        }
    }
}

/// Serves a negotiated association, or logs why there is none.
async fn conclude<S: Stream>(
    negotiated: Result<
        Result<dicom_ul::association::AsyncServerAssociation<S>, Refusal>,
        tokio::time::error::Elapsed,
    >,
    config: &Config,
    seen_titles: &Mutex<Option<(String, String)>>,
    peer: SocketAddr,
    store: &InstanceStore,
    metrics: &Metrics,
) {
    let Ok(negotiated) = negotiated else {
        info!(
            seconds = config.dicom.associate_timeout_secs,
            "no A-ASSOCIATE-RQ in time: connection closed (dicom.associate_timeout_secs)"
        );
        return;
    };
    let association = match negotiated {
        Ok(association) => association,
        Err(refusal) => {
            log_refusal(refusal, seen_titles, peer, store, metrics).await;
            return;
        }
    };
    serve_established(association, peer, config, store, metrics).await;
}

/// Logs why a connection gave no association.
async fn log_refusal(
    refusal: Refusal,
    seen_titles: &Mutex<Option<(String, String)>>,
    peer: SocketAddr,
    store: &InstanceStore,
    metrics: &Metrics,
) {
    match refusal {
        Refusal::Proposal(problem) => {
            let reason = format!("aborted: invalid A-ASSOCIATE-RQ: {problem}");
            warn!(reason = ?reason, "association refused");
            log_rejection(store, metrics, None, None, peer, &reason).await;
        }
        Refusal::Negotiation(UlError::Rejected { association_rj, .. }) => {
            let titles = seen_titles.lock().unwrap_or_else(|e| e.into_inner()).take();
            let (calling, called) = titles.unzip();
            let reason = format!("rejected: {}", association_rj.source);
            warn!(calling_ae = ?calling, called_ae = ?called, ?reason, "association rejected");
            log_rejection(
                store,
                metrics,
                calling.as_deref(),
                called.as_deref(),
                peer,
                &reason,
            )
            .await;
        }
        Refusal::Negotiation(e @ (UlError::TlsHandshake { .. } | UlError::TlsNotSupported)) => {
            let reason = format!("TLS handshake failed: {}", with_causes(&e));
            warn!(reason = ?reason, "association refused");
            log_rejection(store, metrics, None, None, peer, &reason).await;
        }
        Refusal::Negotiation(e) => {
            debug!(error = %e, "association not established");
        }
    }
}

/// Logs, serves and logs the end of an established association.
async fn serve_established<S: Stream>(
    association: dicom_ul::association::AsyncServerAssociation<S>,
    peer: SocketAddr,
    config: &Config,
    store: &InstanceStore,
    metrics: &Metrics,
) {
    let node = config.node.name.as_str();
    let calling_ae = association.peer_ae_title().trim().to_owned();
    let called_ae = association.called_ae_title().trim().to_owned();
    let id = match store
        .index()
        .begin_association(node, &calling_ae, &called_ae, &peer.to_string())
        .await
    {
        Ok(id) => id,
        Err(e) => {
            error!(error = %e, "cannot log the association; aborting it");
            let _ = association.abort().await;
            return;
        }
    };
    info!(association = id, calling_ae = ?calling_ae, "association established");
    metrics.associations_total.inc();
    metrics.associations_active.inc();
    let started = std::time::Instant::now();
    let (end, reason) =
        association::serve(association, config.read_timeout(), store, metrics, id).await;
    metrics.associations_active.dec();
    metrics
        .association_seconds
        .observe(started.elapsed().as_secs_f64());
    info!(association = id, end = end.as_str(), reason = ?reason, "association ended");
    if let Err(e) = store
        .index()
        .end_association(id, end, reason.as_deref())
        .await
    {
        error!(association = id, error = %e, "cannot log the end of the association");
    }
}

/// The length field of a PDU header (type, reserved, 4-byte big-endian length).
fn pdu_length(header: &[u8]) -> usize {
    u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize
}

/// Why no association came of a connection.
enum Refusal {
    /// The request breaks PS3.8 (it has been answered with A-ABORT).
    Proposal(String),
    /// dicom-ul's negotiation failed or rejected it.
    Negotiation(UlError),
}

/// Largest A-ASSOCIATE-RQ checked by `check_proposal` (larger ones are left to dicom-ul).
const MAX_CHECKED_RQ_BYTES: usize = 64 * 1024;

/// Checks the presentation contexts of the A-ASSOCIATE-RQ waiting on `socket`, without
/// consuming it (PS3.8 9.3.2.2): at least one, each ID odd (1-255) and used once.
async fn check_proposal(socket: &TcpStream) -> Result<(), String> {
    let peek_exactly = |size: usize| async move {
        let mut buffer = vec![0u8; size];
        loop {
            match socket.peek(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if n == size => return Some(buffer),
                // Part of it has arrived: wait for the rest (the caller's timeout bounds this).
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    let Some(header) = peek_exactly(6).await else {
        return Ok(());
    };
    let length = pdu_length(&header);
    if header[0] != 0x01 || length + 6 > MAX_CHECKED_RQ_BYTES {
        return Ok(());
    }
    let Some(bytes) = peek_exactly(6 + length).await else {
        return Ok(());
    };
    let Ok(Some(Pdu::AssociationRQ(rq))) =
        dicom_ul::read_pdu(&bytes[..], MAX_CHECKED_RQ_BYTES as u32, false)
    else {
        return Ok(());
    };
    check_contexts(&rq.presentation_contexts)
}

/// PS3.8 9.3.2.2 on the presentation contexts an A-ASSOCIATE-RQ proposes: at least one, each ID
/// odd and used once.
pub(crate) fn check_contexts(contexts: &[PresentationContextProposed]) -> Result<(), String> {
    check_context_ids(&contexts.iter().map(|c| c.id).collect::<Vec<_>>())
}

/// `check_contexts` on the presentation context IDs.
fn check_context_ids(ids: &[u8]) -> Result<(), String> {
    if ids.is_empty() {
        return Err("no presentation context proposed".into());
    }
    let mut seen = HashSet::new();
    for &id in ids {
        if id % 2 == 0 {
            return Err(format!("presentation context ID {id} is even"));
        }
        if !seen.insert(id) {
            return Err(format!("presentation context ID {id} is used twice"));
        }
    }
    Ok(())
}

/// Answers an invalid A-ASSOCIATE-RQ with A-ABORT (service provider, invalid PDU parameter
/// value), after reading the request off the socket.
async fn abort_invalid(mut socket: TcpStream) {
    use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource};
    let mut header = [0u8; 6];
    if socket.read_exact(&mut header).await.is_ok() {
        let length = pdu_length(&header);
        let mut rest = vec![0u8; length.min(MAX_CHECKED_RQ_BYTES)];
        let _ = socket.read_exact(&mut rest).await;
    }
    let abort = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::InvalidPduParameter),
    };
    let mut bytes = Vec::new();
    if dicom_ul::write_pdu(&mut bytes, &abort).is_ok() {
        let _ = socket.write_all(&bytes).await;
        let _ = socket.shutdown().await;
    }
}

/// Free bytes on the storage file system when they are below the configured floor.
fn below_disk_floor(config: &Config) -> Option<u64> {
    let floor = config.storage.min_free_mb.saturating_mul(1024 * 1024);
    match crate::store::files::disk_space(&config.storage.dir) {
        Ok(space) if space.free_bytes < floor => Some(space.free_bytes),
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "cannot read the free space of the storage file system");
            None
        }
    }
}

/// Answers an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ (transient, service provider (presentation),
/// `reason`) before any association is established: all slots taken, or the disk is full.
async fn refuse(
    mut socket: TcpStream,
    peer: SocketAddr,
    store: &InstanceStore,
    metrics: &Metrics,
    reason: AssociationRJServiceProviderPresentationReason,
    text: &str,
) {
    let read = async {
        let mut header = [0u8; 6];
        socket.read_exact(&mut header).await?;
        let length = pdu_length(&header);
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
        source: AssociationRJSource::ServiceProviderPresentation(reason),
    });
    let mut bytes = Vec::new();
    if dicom_ul::write_pdu(&mut bytes, &reject).is_ok() {
        let _ = socket.write_all(&bytes).await;
        let _ = socket.shutdown().await;
    }
    warn!(calling_ae = ?calling, reason = text, "association rejected");
    log_rejection(
        store,
        metrics,
        calling.as_deref(),
        called.as_deref(),
        peer,
        text,
    )
    .await;
}

async fn log_rejection(
    store: &InstanceStore,
    metrics: &Metrics,
    calling: Option<&str>,
    called: Option<&str>,
    peer: SocketAddr,
    reason: &str,
) {
    metrics.associations_rejected.inc();
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
        // Not an AE title at all (control characters, backslash: PS3.5 6.2): refused whatever
        // the policy, before it reaches the association log.
        if crate::attributes::check_ae_title(calling_ae_title).is_err() {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if crate::attributes::check_ae_title(called_ae_title).is_err() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
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
