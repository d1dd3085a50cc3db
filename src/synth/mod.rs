//! Synthetic CT series written as real DICOM files, for tests, benchmarks and demonstrations on
//! a network without patient data. This first version draws a simple chest-like phantom (body,
//! two lungs, a spine); the anatomical phantom with nodules and ground truth builds on it.

pub mod anatomy;
pub mod calibration;
pub mod insert;
pub mod lesion;
pub mod lidc_shapes;
pub mod nodules;
pub mod preview;
pub mod random;
pub mod render;
pub mod series;
pub mod study;
