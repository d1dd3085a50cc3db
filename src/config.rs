//! Node configuration: a TOML file whose every key has a default, so `jnsc serve` runs with no file.
//!
//! The file is found through `--config FILE` or `JNSC_CONFIG`. Unknown keys are rejected and every
//! validation error names the offending key, so a typo fails at start instead of being ignored.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::store::db::DbLocation;

/// The whole configuration, one section per concern.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub dicom: DicomConfig,
    pub storage: StorageConfig,
    pub pipeline: PipelineConfig,
    pub model: ModelConfig,
    pub results: crate::results::ResultsConfig,
    pub sender: SenderConfig,
    pub status: StatusConfig,
    pub log: LogConfig,
}

/// `[node]`: this node among the nodes that share one database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// A stable name, unique among the nodes on one database: it marks the jobs, deliveries
    /// and associations the node holds (a restarted node takes its own interrupted work back at
    /// once), and names its area of a shared storage directory (`nodes/<name>/`). Letters,
    /// digits, `.`, `_` and `-`. Default: the host name.
    pub name: String,
    /// What this node does: see [`NodeRole`].
    pub role: NodeRole,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: host_name(),
            role: NodeRole::default(),
        }
    }
}

/// What a node does among the nodes sharing one PostgreSQL index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Everything: receive, store and index; analyse; deliver (the only role on SQLite).
    #[default]
    All,
    /// Receive, store and index, and queue each complete series; no model, no deliveries.
    Receiver,
    /// Claim queued jobs, analyse them and deliver the results; no DICOM listener.
    Worker,
}

impl NodeRole {
    /// Whether the node listens for DICOM and stores what it receives.
    pub fn receives(self) -> bool {
        matches!(self, Self::All | Self::Receiver)
    }

    /// Whether the node analyses queued series and delivers results.
    pub fn works(self) -> bool {
        matches!(self, Self::All | Self::Worker)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Receiver => "receiver",
            Self::Worker => "worker",
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node name is a path component of the shared storage directory and a label value: 1 to 64
/// letters, digits, `.`, `_` or `-`, not starting with `.`.
fn check_node_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if name.starts_with('.') || !name.chars().all(allowed) {
        return Err(format!(
            "`{name}` may hold only letters, digits, `.`, `_` and `-`, and not start with `.`"
        ));
    }
    Ok(())
}

/// The machine's host name (`jnsc` where it has none).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "jnsc".to_owned())
}

/// `[dicom]`: the SCP's identity, limits and known peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    /// Our AE title (called AE title that callers must use when the allow-list is on).
    pub ae_title: String,
    /// TCP address the SCP listens on.
    pub listen: SocketAddr,
    /// Associations served at once; further ones are rejected (transient, local limit exceeded).
    pub max_associations: usize,
    /// Largest P-DATA-TF PDU we accept, announced in A-ASSOCIATE-AC.
    pub max_pdu: u32,
    /// Seconds without a PDU from the peer before the association is aborted.
    pub read_timeout_secs: u64,
    /// Seconds a new connection may take to send its A-ASSOCIATE-RQ before it is closed (a
    /// silent socket must not hold an association slot).
    pub associate_timeout_secs: u64,
    /// Associations one host (IP address) may hold at once; 0: half of `max_associations`
    /// (at least 1), so that one host cannot take every slot.
    pub max_associations_per_host: usize,
    /// Seconds a write to the peer may block before the association is aborted.
    pub write_timeout_secs: u64,
    /// `false`: only AE titles listed in `peers` may associate, and only to our `ae_title`.
    pub allow_unknown_callers: bool,
    /// Known peers: where results for studies sent by this calling AE title go.
    pub peers: Vec<PeerConfig>,
    /// `[dicom.tls]`: DICOM TLS (PS3.15 B.9, the BCP 195 profile) for a second listener and for
    /// deliveries to peers marked `tls = true`.
    pub tls: TlsConfig,
}

/// `[dicom.tls]`: this node's certificate and the trust anchors it checks peers against (PEM
/// files). Without `listen`, no TLS listener is opened; the plain `dicom.listen` stays (bind it
/// to 127.0.0.1 to accept TLS only from the network).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// TCP address of the TLS listener (2762 is DICOM's registered port for TLS).
    pub listen: Option<SocketAddr>,
    /// This node's certificate chain (leaf first): the server certificate of the TLS listener
    /// and the client certificate of TLS deliveries.
    pub certificate: Option<PathBuf>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1; unencrypted).
    pub private_key: Option<PathBuf>,
    /// Trust anchors: certificates of the CAs (or the peers' own certificates) that peers'
    /// certificates must chain to. Required for TLS deliveries and for client certificates.
    pub ca: Option<PathBuf>,
    /// The TLS listener accepts only callers with a certificate that chains to `ca`.
    pub require_client_certificate: bool,
}

/// `[[dicom.peers]]`: a calling AE title and the destination of its results.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Calling AE title this peer uses when it sends us studies.
    pub ae_title: String,
    /// Host that receives results (C-STORE SCP of the peer).
    pub host: String,
    /// Port of the peer's C-STORE SCP.
    pub port: u16,
    /// AE title of the peer's C-STORE SCP; defaults to `ae_title`.
    #[serde(default)]
    pub dest_ae_title: Option<String>,
    /// Deliver results over DICOM TLS (`dicom.tls`: `ca` verifies the peer's certificate; this
    /// node presents its `certificate` when it has one).
    #[serde(default)]
    pub tls: bool,
    /// The name the peer's certificate must hold (DNS name or IP address); defaults to `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// `[storage]`: where instances, results and the index live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root of the durable store. Default: [`default_storage_dir`].
    pub dir: PathBuf,
    /// The index: an SQLite file (a path, or `sqlite:PATH`; `<dir>/jnsc.db` when unset), or a
    /// PostgreSQL server (`postgres://user@host:port/database`) that several nodes share.
    pub db: Option<DbLocation>,
    /// Free space (MiB) below which new associations are refused and `/ready` fails.
    pub min_free_mb: u64,
}

/// `[pipeline]`: when a series counts as complete.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Seconds without a new instance before a series is complete and gets a job.
    pub stable_age_secs: u64,
    /// `false`: receive and queue only (no model is loaded; jobs wait for a node that analyses).
    pub analyze: bool,
    /// Seconds a claimed job stays this node's without its worker renewing the claim (it does,
    /// three times per period, while it analyses). A job whose node stopped (killed, cut off)
    /// is queued again once its lease runs out.
    pub lease_secs: u64,
    /// Claims of a job (the first included) before one whose lease runs out fails it for good.
    pub max_attempts: u32,
}

/// `[model]`: the network the worker runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model file (safetensors with JNSC metadata); relative paths are from the working
    /// directory. Unset: the shipped model embedded in the binary.
    pub path: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: crate::jnsc::device::DeviceSpec,
    /// `f32` (as trained), or `f16` on a GPU (models/README.md "Half precision").
    pub precision: crate::jnsc::device::Precision,
    /// Sliding-window blending: `fast` or `paper`.
    pub tiling: crate::inference::tiles::TilingName,
    /// Test-time mirroring of the segmentation, 1 (off) to 8 passes per window; each pass
    /// costs one segmentation (models/README.md "Test-time mirroring").
    pub mirrors: usize,
    /// Test-time mirroring of the classification path, 1 (off) to 8 windows per finding.
    pub classify_mirrors: usize,
    /// Only findings whose one-pass p(nodule) is at least this get the classification's
    /// mirrors (0: every finding).
    pub classify_mirrors_from: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: None,
            device: crate::jnsc::device::DeviceSpec::Cpu,
            precision: crate::jnsc::device::Precision::F32,
            tiling: crate::inference::tiles::TilingName::Fast,
            mirrors: 1,
            classify_mirrors: crate::inference::DEFAULT_CLASSIFY_MIRRORS,
            classify_mirrors_from: crate::inference::DEFAULT_CLASSIFY_MIRRORS_FROM,
        }
    }
}

/// `[sender]`: delivery of results to the configured destinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Attempts before an object is marked failed for good.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub retry_base_secs: u64,
    /// Longest wait between attempts.
    pub retry_max_secs: u64,
    /// Seconds to open the TCP connection and negotiate the association.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for a C-STORE response.
    pub response_timeout_secs: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            retry_base_secs: 30,
            retry_max_secs: 3600,
            connect_timeout_secs: 10,
            response_timeout_secs: 60,
        }
    }
}

impl SenderConfig {
    /// Delay before attempt `attempts + 1` after `attempts` failed ones (exponential, capped).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u64 << attempts.saturating_sub(1).min(30);
        Duration::from_secs(
            self.retry_base_secs
                .saturating_mul(factor)
                .min(self.retry_max_secs),
        )
    }
}

/// `[status]`: the HTTP status endpoint (served by the operations module).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    pub listen: SocketAddr,
    /// When set, every endpoint but `/health` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Seconds a client may take to send its request headers before the connection is closed.
    pub header_timeout_secs: u64,
}

/// `[log]`: tracing filter, e.g. `info` or `jnsc=debug,info`; `RUST_LOG` overrides it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
}

impl Default for DicomConfig {
    fn default() -> Self {
        Self {
            ae_title: "JNSC".into(),
            listen: "0.0.0.0:11112".parse().expect("literal address"),
            max_associations: 16,
            max_pdu: 65536,
            read_timeout_secs: 60,
            associate_timeout_secs: 10,
            max_associations_per_host: 0,
            write_timeout_secs: 60,
            allow_unknown_callers: true,
            peers: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: default_storage_dir(),
            db: None,
            min_free_mb: 1024,
        }
    }
}

/// Where the node keeps its data when `storage.dir` is not set, so that the working directory
/// never matters (a service started from `/` must not write to `/storage`):
/// - `$STATE_DIRECTORY`, which systemd sets for a unit with `StateDirectory=` (the first entry);
/// - else `$XDG_STATE_HOME/jnsc`, else `$HOME/.local/state/jnsc`;
/// - else (no home) `storage` in the working directory.
pub fn default_storage_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dirs) = var("STATE_DIRECTORY") {
        // systemd joins several StateDirectory= entries with ':'.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return PathBuf::from(state).join("jnsc");
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/jnsc"),
        None => PathBuf::from("storage"),
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            stable_age_secs: 10,
            analyze: true,
            lease_secs: 60,
            max_attempts: 3,
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            token: None,
            header_timeout_secs: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// A configuration that cannot be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

/// Smallest PDU a peer may be told to send (PS3.8 allows less, but nothing real uses it).
const MIN_PDU: u32 = 4096;
/// Largest PDU we are willing to buffer for one P-DATA-TF.
const MAX_PDU: u32 = 16 * 1024 * 1024;

impl Config {
    /// Reads and validates `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text).map_err(|e| match e {
                    ConfigError::Parse { message, .. } => ConfigError::Parse {
                        path: path.to_owned(),
                        message,
                    },
                    other => other,
                })?
            }
        };
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot check; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            key: key.into(),
            problem,
        };
        if let Err(problem) = crate::attributes::check_ae_title(&self.dicom.ae_title) {
            return Err(invalid("dicom.ae_title", problem));
        }
        if self.dicom.max_associations == 0 {
            return Err(invalid(
                "dicom.max_associations",
                "must be at least 1".into(),
            ));
        }
        if !(MIN_PDU..=MAX_PDU).contains(&self.dicom.max_pdu) {
            return Err(invalid(
                "dicom.max_pdu",
                format!("must be between {MIN_PDU} and {MAX_PDU}"),
            ));
        }
        for (key, mirrors) in [
            ("model.mirrors", self.model.mirrors),
            ("model.classify_mirrors", self.model.classify_mirrors),
        ] {
            crate::inference::tiles::check_mirrors(mirrors).map_err(|p| invalid(key, p))?;
        }
        crate::jnsc::model_file::check_min_p_nodule(self.model.classify_mirrors_from)
            .map_err(|p| invalid("model.classify_mirrors_from", p))?;
        if self.status.header_timeout_secs == 0 {
            return Err(invalid(
                "status.header_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if self.dicom.associate_timeout_secs == 0 {
            return Err(invalid(
                "dicom.associate_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if self.dicom.read_timeout_secs == 0 {
            return Err(invalid(
                "dicom.read_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if self.dicom.write_timeout_secs == 0 {
            return Err(invalid(
                "dicom.write_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        for (i, peer) in self.dicom.peers.iter().enumerate() {
            if let Err(problem) = crate::attributes::check_ae_title(&peer.ae_title) {
                return Err(invalid(&format!("dicom.peers[{i}].ae_title"), problem));
            }
            if let Some(dest) = &peer.dest_ae_title
                && let Err(problem) = crate::attributes::check_ae_title(dest)
            {
                return Err(invalid(&format!("dicom.peers[{i}].dest_ae_title"), problem));
            }
            if peer.host.trim().is_empty() {
                return Err(invalid(
                    &format!("dicom.peers[{i}].host"),
                    "is empty".into(),
                ));
            }
            if peer.port == 0 {
                return Err(invalid(
                    &format!("dicom.peers[{i}].port"),
                    "must not be 0".into(),
                ));
            }
            if self.dicom.peers[..i]
                .iter()
                .any(|p| p.ae_title == peer.ae_title)
            {
                return Err(invalid(
                    &format!("dicom.peers[{i}].ae_title"),
                    format!("`{}` is listed twice", peer.ae_title),
                ));
            }
        }
        self.validate_tls()?;
        if let Err(problem) = check_node_name(&self.node.name) {
            return Err(invalid("node.name", problem));
        }
        if self.node.role != NodeRole::All && !matches!(self.db(), DbLocation::Postgres(_)) {
            return Err(invalid(
                "node.role",
                format!(
                    "`{}` needs a queue shared with other nodes: set storage.db to a \
                     postgres:// URL (an SQLite index serves one node, role `all`)",
                    self.node.role
                ),
            ));
        }
        if self.storage.dir.as_os_str().is_empty() {
            return Err(invalid("storage.dir", "is empty".into()));
        }
        if self.pipeline.stable_age_secs == 0 {
            return Err(invalid(
                "pipeline.stable_age_secs",
                "must be at least 1".into(),
            ));
        }
        if let Err(problem) = self.model.device.check() {
            return Err(invalid("model.device", problem.to_string()));
        }
        if let Some(p) = self.results.min_p_nodule {
            crate::jnsc::model_file::check_min_p_nodule(p)
                .map_err(|problem| invalid("results.min_p_nodule", problem))?;
        }
        if self.sender.max_attempts == 0 {
            return Err(invalid("sender.max_attempts", "must be at least 1".into()));
        }
        if self.sender.retry_base_secs == 0 {
            return Err(invalid(
                "sender.retry_base_secs",
                "must be at least 1".into(),
            ));
        }
        if self.sender.connect_timeout_secs == 0 || self.sender.response_timeout_secs == 0 {
            return Err(invalid(
                "sender.connect_timeout_secs",
                "timeouts must be at least 1 second".into(),
            ));
        }
        if self
            .status
            .token
            .as_deref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            return Err(invalid(
                "status.token",
                "must be at least 16 characters".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("is not a valid filter: {e}")));
        }
        Ok(())
    }

    /// `[dicom.tls]` names what each use of TLS needs (the files are read at start).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.dicom.tls;
        let missing = |key: &str, why: &str| ConfigError::Invalid {
            key: format!("dicom.tls.{key}"),
            problem: format!("is required {why}"),
        };
        match (&tls.certificate, &tls.private_key) {
            (Some(_), None) => return Err(missing("private_key", "with dicom.tls.certificate")),
            (None, Some(_)) => return Err(missing("certificate", "with dicom.tls.private_key")),
            _ => {}
        }
        if tls.listen.is_some() && tls.certificate.is_none() {
            return Err(missing(
                "certificate",
                "for the TLS listener (dicom.tls.listen)",
            ));
        }
        if tls.require_client_certificate {
            if tls.listen.is_none() {
                return Err(missing(
                    "listen",
                    "with dicom.tls.require_client_certificate",
                ));
            }
            if tls.ca.is_none() {
                return Err(missing("ca", "to verify client certificates"));
            }
        }
        if let Some(i) = self.dicom.peers.iter().position(|p| p.tls)
            && tls.ca.is_none()
        {
            return Err(missing(
                "ca",
                &format!("to verify dicom.peers[{i}] (tls = true)"),
            ));
        }
        Ok(())
    }

    /// This node's part of the storage directory, relative to it: all of it on SQLite (one node
    /// owns the directory), `nodes/<name>/` on PostgreSQL, where the directory is shared by the
    /// nodes and each one writes, locks and recovers only its own area.
    pub fn storage_area(&self) -> PathBuf {
        match self.db() {
            DbLocation::Sqlite(_) => PathBuf::new(),
            DbLocation::Postgres(_) => Path::new("nodes").join(&self.node.name),
        }
    }

    /// Where the index lives (explicit, or an SQLite file inside the storage directory).
    pub fn db(&self) -> DbLocation {
        self.storage
            .db
            .clone()
            .unwrap_or_else(|| DbLocation::Sqlite(self.storage.dir.join("jnsc.db")))
    }

    /// Where results of series sent by `calling_ae_title` go, if a peer is configured for it.
    pub fn destination(&self, calling_ae_title: &str) -> Option<crate::store::work::Destination> {
        self.peer(calling_ae_title)
            .map(|p| crate::store::work::Destination {
                ae_title: p
                    .dest_ae_title
                    .clone()
                    .unwrap_or_else(|| p.ae_title.clone()),
                host: p.host.clone(),
                port: p.port,
            })
    }

    /// The peer that sends with this calling AE title, if configured.
    pub fn peer(&self, calling_ae_title: &str) -> Option<&PeerConfig> {
        self.dicom
            .peers
            .iter()
            .find(|p| p.ae_title == calling_ae_title)
    }

    pub fn associate_timeout(&self) -> Duration {
        Duration::from_secs(self.dicom.associate_timeout_secs)
    }

    /// Associations one host may hold at once (`dicom.max_associations_per_host`, resolved).
    pub fn max_associations_per_host(&self) -> usize {
        match self.dicom.max_associations_per_host {
            0 => (self.dicom.max_associations / 2).max(1),
            n => n,
        }
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.dicom.read_timeout_secs)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.dicom.write_timeout_secs)
    }

    pub fn stable_age(&self) -> Duration {
        Duration::from_secs(self.pipeline.stable_age_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.dicom.ae_title, "JNSC");
        assert_eq!(config.dicom.listen.port(), 11112);
        assert_eq!(config.dicom.max_associations, 16);
        assert_eq!(config.dicom.max_pdu, 65536);
        assert!(config.dicom.allow_unknown_callers);
        assert_eq!(
            config.db(),
            DbLocation::Sqlite(default_storage_dir().join("jnsc.db"))
        );
        assert_eq!(config.model.path, None, "the embedded model");
        assert_eq!(config.pipeline.stable_age_secs, 10);
        assert_eq!(config.status.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn the_index_location_is_a_file_or_a_postgres_url_whose_password_is_never_shown() {
        let parse = |db: &str| {
            Config::parse(&format!("[storage]\ndir = \"/data\"\ndb = \"{db}\"\n"))
                .unwrap()
                .db()
        };
        assert_eq!(
            parse("/var/jnsc.db"),
            DbLocation::Sqlite("/var/jnsc.db".into())
        );
        assert_eq!(parse("sqlite:idx.db"), DbLocation::Sqlite("idx.db".into()));
        let url = "postgres://jnsc:s3cret@db.example:5432/jnsc";
        assert_eq!(parse(url), DbLocation::Postgres(url.into()));
        let shown = format!("{} {:?}", parse(url), parse(url));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://jnsc:***@db.example:5432/jnsc"),
            "{shown}"
        );
        assert_eq!(
            parse("postgresql://jnsc@127.0.0.1/jnsc").to_string(),
            "postgresql://jnsc@127.0.0.1/jnsc"
        );
    }

    #[test]
    fn roles_need_a_shared_queue_and_name_each_node_s_storage_area() {
        let worker =
            "[node]\nname = \"gpu-1\"\nrole = \"worker\"\n[storage]\ndir = \"/srv/jnsc\"\n";
        let error = Config::parse(worker).unwrap_err().to_string();
        assert!(
            error.contains("node.role") && error.contains("postgres://"),
            "{error}"
        );
        let shared = format!("{worker}db = \"postgres://jnsc@db/jnsc\"\n");
        let config = Config::parse(&shared).unwrap();
        assert_eq!(config.node.role, NodeRole::Worker);
        assert!(config.node.role.works() && !config.node.role.receives());
        assert_eq!(config.storage_area(), Path::new("nodes/gpu-1"));
        let alone = Config::parse("[storage]\ndir = \"/srv/jnsc\"\n").unwrap();
        assert_eq!(alone.node.role, NodeRole::All);
        assert_eq!(alone.storage_area(), Path::new(""));
        for bad in ["", "../up", ".hidden", "a/b", "name with space"] {
            let text = shared.replace("gpu-1", bad);
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(error.contains("node.name"), "{bad:?}: {error}");
        }
        let error = Config::parse(&shared.replace("worker", "gpu")).unwrap_err();
        assert!(error.to_string().contains("role"), "{error}");
    }

    #[test]
    fn storage_defaults_to_the_state_directory_not_the_working_directory() {
        let dir = default_storage_dir();
        match std::env::var_os("STATE_DIRECTORY") {
            Some(state) if !state.is_empty() => {
                assert!(state.to_string_lossy().starts_with(&*dir.to_string_lossy()))
            }
            _ if std::env::var_os("HOME").is_some() => {
                assert!(dir.is_absolute(), "{}", dir.display())
            }
            _ => assert_eq!(dir, PathBuf::from("storage")),
        }
    }

    #[test]
    fn the_deployment_example_parses() {
        let config = Config::parse(include_str!("../deploy/jnsc.toml")).unwrap();
        assert!(!config.dicom.allow_unknown_callers);
        assert_eq!(config.dicom.peers[0].ae_title, "ORTHANC");
        assert_eq!(config.model.path, None);
    }

    #[test]
    fn issue_example_parses() {
        let config = Config::parse(
            r#"
            [dicom]
            ae_title = "JNSC"
            listen = "0.0.0.0:11112"
            max_associations = 16
            max_pdu = 65536
            allow_unknown_callers = true
            [[dicom.peers]]
            ae_title = "PACS"
            host = "127.0.0.1"
            port = 11113
            [storage]
            dir = "storage"
            [pipeline]
            stable_age_secs = 10
            [status]
            listen = "127.0.0.1:8080"
            "#,
        )
        .unwrap();
        let peer = config.peer("PACS").unwrap();
        assert_eq!(peer.port, 11113);
        assert!(config.peer("OTHER").is_none());
    }

    fn error_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error_of("[dicom]\nae_title = \"\"").contains("dicom.ae_title"));
        assert!(
            error_of("[dicom]\nae_title = \"MUCH_TOO_LONG_AE_TITLE\"").contains("dicom.ae_title")
        );
        assert!(error_of("[dicom]\nmax_pdu = 12").contains("dicom.max_pdu"));
        assert!(error_of("[dicom]\nmax_associations = 0").contains("dicom.max_associations"));
        assert!(error_of("[model]\nmirrors = 9").contains("model.mirrors"));
        assert!(error_of("[model]\nclassify_mirrors = 0").contains("model.classify_mirrors"));
        assert!(
            error_of("[model]\nclassify_mirrors_from = 1.5")
                .contains("model.classify_mirrors_from")
        );
        assert!(error_of("[pipeline]\nstable_age_secs = 0").contains("pipeline.stable_age_secs"));
        assert!(
            error_of("[[dicom.peers]]\nae_title = \"A\"\nhost = \"h\"\nport = 0")
                .contains("dicom.peers[0].port")
        );
        assert!(error_of("[dicom]\nlisten = \"nonsense\"").contains("listen"));
        assert!(error_of("[dicom]\nae_tilte = \"X\"").contains("ae_tilte"));
        assert!(error_of("[storage]\ndb = 5").contains("db"));
    }

    #[test]
    fn duplicate_peer_is_rejected() {
        let text = "[[dicom.peers]]\nae_title = \"A\"\nhost = \"h\"\nport = 1\n\
                    [[dicom.peers]]\nae_title = \"A\"\nhost = \"h\"\nport = 2\n";
        assert!(error_of(text).contains("dicom.peers[1].ae_title"));
    }

    #[test]
    fn tls_keys_name_what_is_missing() {
        let tls = |body: &str| error_of(&format!("[dicom.tls]\n{body}"));
        assert!(tls("listen = \"0.0.0.0:2762\"").contains("dicom.tls.certificate"));
        assert!(tls("certificate = \"a.crt\"").contains("dicom.tls.private_key"));
        assert!(
            tls(
                "listen = \"0.0.0.0:2762\"\ncertificate = \"a\"\nprivate_key = \"b\"\n\
                 require_client_certificate = true"
            )
            .contains("dicom.tls.ca")
        );
        let peer = "[[dicom.peers]]\nae_title = \"A\"\nhost = \"h\"\nport = 1\ntls = true\n";
        assert!(error_of(peer).contains("dicom.tls.ca"));
        let with_ca = format!("{peer}[dicom.tls]\nca = \"ca.crt\"\n");
        assert!(Config::parse(&with_ca).unwrap().dicom.peers[0].tls);
    }
}
