//! Synthetic CT series written as real DICOM files, for tests, benchmarks and demonstrations on
//! a network without patient data: the anatomical chest phantom (`anatomy`) with LIDC-calibrated
//! nodules and their ground truth (`nodules`, `calibration`, `features`), lesions inserted into
//! real series (`insert`, `lesion`, `lidc_shapes`), and the rendering and DICOM writing of whole
//! studies (`render`, `series`, `study`).

pub mod anatomy;
pub mod calibration;
pub mod command;
pub mod features;
pub mod insert;
pub mod lesion;
pub mod lidc_shapes;
pub mod nodules;
pub mod preview;
pub mod render;
pub mod series;
pub mod study;
