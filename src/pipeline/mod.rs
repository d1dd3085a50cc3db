//! From stored instances to delivered results: series completion queues a job (`completion`),
//! the worker analyses it and writes SEG + SR into the outbox (`worker`), and the sender delivers
//! the outbox to the destination configured for the calling AE (`sender`). `analyze` is the
//! worker's work on one folder, for `jnsc analyze`.

pub mod analyze;
pub mod completion;
pub mod sender;
pub mod worker;
