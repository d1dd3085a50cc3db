//! DICOM networking: the listener and association policy (`server`), one association's message
//! loop (`association`) and how it reads PDUs (`pdu`), DIMSE command sets (`dimse`), what is negotiated (`presentation`), and
//! one file per DIMSE service, the C-STORE SCU that delivers results (`send`), and DICOM TLS
//! (`tls`). Associations run on plain TCP or TLS alike (`Stream`).

pub mod association;
pub mod c_echo;
pub mod c_store;
pub mod dimse;
pub(crate) mod pdu;
pub mod presentation;
pub mod send;
pub mod server;
pub mod tls;

/// What an association runs on: a TCP stream, or TLS over one.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// An error and its causes, "a: b: c" (a TLS handshake failure says why in its source).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
