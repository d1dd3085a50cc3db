//! From stored instances to results: series completion and the job queue (the worker and the
//! outbox come with the inference and results modules).

pub mod completion;
