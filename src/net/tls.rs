//! DICOM TLS (PS3.15 B.9, the BCP 195 TLS profile; conformance.md "Security"): the rustls
//! configurations of the TLS listener and of TLS deliveries, built once at start from the PEM
//! files `[dicom.tls]` names. rustls speaks TLS 1.2 and 1.3 only, with forward-secret AEAD
//! cipher suites (ECDHE with AES-GCM or ChaCha20-Poly1305), which is what BCP 195 (RFC 9325)
//! asks; nothing older can be negotiated. Certificates are checked against `dicom.tls.ca`:
//! destinations always, callers when `require_client_certificate` is on.

use crate::config::{Config, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Why the TLS configuration could not be built (the key names the configuration entry).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} = {path}: {problem}")]
    File {
        key: &'static str,
        path: String,
        problem: String,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// The TLS listener's configuration, if `dicom.tls.listen` is set.
pub fn server_config(tls: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(_), Some(certificate), Some(key)) = (&tls.listen, &tls.certificate, &tls.private_key)
    else {
        return Ok(None);
    };
    let chain = certificates(certificate, "dicom.tls.certificate")?;
    let key = private_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("dicom.tls", e))?;
    let builder = if tls.require_client_certificate {
        let ca = tls.ca.as_deref().ok_or_else(|| TlsError::Invalid {
            key: "dicom.tls.ca".into(),
            problem: "is required to verify client certificates".into(),
        })?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(ca)?),
            provider(),
        )
        .build()
        .map_err(|e| invalid("dicom.tls.ca", e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("dicom.tls.private_key", e))?;
    Ok(Some(Arc::new(config)))
}

/// How to reach the peers marked `tls = true`.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    peers: Vec<TlsPeer>,
}

#[derive(Debug, Clone)]
struct TlsPeer {
    host: String,
    port: u16,
    server_name: String,
}

impl ClientTls {
    /// The deliveries' TLS configuration, if any peer has `tls = true`.
    pub fn from_config(config: &Config) -> Result<Option<Self>, TlsError> {
        let tls = &config.dicom.tls;
        let mut peers = Vec::new();
        for (i, peer) in config.dicom.peers.iter().enumerate().filter(|(_, p)| p.tls) {
            let server_name = peer.tls_server_name.clone().unwrap_or(peer.host.clone());
            ServerName::try_from(server_name.as_str()).map_err(|e| TlsError::Invalid {
                key: format!("dicom.peers[{i}].tls_server_name"),
                problem: format!("`{server_name}` is not a DNS name or IP address: {e}"),
            })?;
            peers.push(TlsPeer {
                host: peer.host.clone(),
                port: peer.port,
                server_name,
            });
        }
        if peers.is_empty() {
            return Ok(None);
        }
        let ca = tls.ca.as_deref().ok_or_else(|| TlsError::Invalid {
            key: "dicom.tls.ca".into(),
            problem: "is required to verify TLS destinations".into(),
        })?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("dicom.tls", e))?
            .with_root_certificates(roots(ca)?);
        let client = match (&tls.certificate, &tls.private_key) {
            (Some(certificate), Some(key)) => builder
                .with_client_auth_cert(
                    certificates(certificate, "dicom.tls.certificate")?,
                    private_key(key)?,
                )
                .map_err(|e| invalid("dicom.tls.private_key", e))?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(Self {
            config: Arc::new(client),
            peers,
        }))
    }

    /// The configuration and the name to verify, if results for `host:port` go over TLS.
    pub fn for_destination(&self, host: &str, port: u16) -> Option<(Arc<ClientConfig>, &str)> {
        self.peers
            .iter()
            .find(|p| p.host == host && p.port == port)
            .map(|p| (Arc::clone(&self.config), p.server_name.as_str()))
    }
}

/// rustls's cryptography (ring), with its default, BCP 195-conformant cipher suites.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(key: &str, error: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        key: key.into(),
        problem: error.to_string(),
    }
}

fn file_error(key: &'static str, path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if chain.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate"));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("dicom.tls.private_key", path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, "dicom.tls.ca")? {
        roots
            .add(certificate)
            .map_err(|e| file_error("dicom.tls.ca", path, e))?;
    }
    Ok(roots)
}
