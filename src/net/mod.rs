//! DICOM networking: the listener and association policy (`server`), one association's message
//! loop (`association`), DIMSE command sets (`dimse`), what is negotiated (`presentation`), and
//! one file per DIMSE service, and the C-STORE SCU that delivers results (`send`).

pub mod association;
pub mod c_echo;
pub mod c_store;
pub mod dimse;
pub mod presentation;
pub mod send;
pub mod server;
