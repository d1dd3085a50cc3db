//! Lesion insertion: synthetic nodules placed into the lungs of a real CT series, written as a
//! new derived series with ground truth. The nodules are rendered as a difference to the local
//! lung attenuation, integrated over the slice thickness and blurred with the point-spread
//! function, then added to the real slices, so the real image's noise and texture stay on top of
//! them, as they would on a real nodule.

use crate::synth::calibration::Calibration;
use crate::synth::nodules::{Lungs, SegmentedLungs, draw_nodules};
use crate::synth::random::Rng;
use crate::synth::render::{Physics, gaussian_blur};
use crate::synth::study::{Truth, truth_of, write_ground_truth};
use crate::volume::geometry::Vec3;
use crate::volume::lung::lung_mask;
use crate::volume::resample::{Interpolation, resample_isotropic};
use crate::volume::series::{files_in, load_series};
use crate::volume::{Geometry, Volume};
use anyhow::{Context, bail};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Inserts `count` nodules into the series in `series_dir`; writes `out/dicom/*.dcm` and the
/// ground truth files beside them.
pub fn insert_nodules(
    series_dir: &Path,
    out: &Path,
    count: usize,
    seed: u64,
    calibration: &Calibration,
    physics: &Physics,
) -> anyhow::Result<Truth> {
    let files = files_in(series_dir)?;
    let series = load_series(&files)?;
    let hu_1mm = resample_isotropic(&series, 1.0, Interpolation::Linear);
    let lungs = lung_mask(&hu_1mm);
    let real = SegmentedLungs::new(&hu_1mm, &lungs.mask);
    if real.voxels.len() < 50_000 {
        bail!("too little lung in this series to insert nodules");
    }
    let mut rng = Rng::new(seed);
    let nodules = draw_nodules(&real, calibration, count, &mut rng);
    if nodules.len() < count {
        bail!("found room for only {} of {count} nodules", nodules.len());
    }
    // Typical parenchyma attenuation of this series: what a nodule replaces.
    let parenchyma = real
        .voxels
        .iter()
        .map(|&v| f64::from(hu_1mm.data[v]))
        .sum::<f64>()
        / real.voxels.len() as f64;

    let (rows, cols) = (series.rows, series.columns);
    let thickness = series.median_slice_spacing();
    let sub = (thickness / 0.5).ceil().max(1.0) as usize;
    let psf = physics.psf_sigma_mm / series.column_spacing_mm.min(series.row_spacing_mm);
    let changed: Vec<(Vec<f32>, Vec<u8>)> = series
        .slices
        .par_iter()
        .enumerate()
        .map(|(k, slice)| {
            let mut delta = vec![0f32; rows * cols];
            let mut labels = vec![0u8; rows * cols];
            let at = |r: usize, c: usize, dz: f64| -> Vec3 {
                [0, 1, 2].map(|a| {
                    slice.position[a]
                        + series.row_direction[a] * c as f64 * series.column_spacing_mm
                        + series.column_direction[a] * r as f64 * series.row_spacing_mm
                        + series.normal[a] * dz
                })
            };
            for r in 0..rows {
                for c in 0..cols {
                    let centre = at(r, c, 0.0);
                    if !nodules.iter().any(|n| near(n.bounds(), centre, thickness)) {
                        continue;
                    }
                    let mut sum = 0.0;
                    for j in 0..sub {
                        let p = at(r, c, thickness * ((j as f64 + 0.5) / sub as f64 - 0.5));
                        if let Some(n) = nodules.iter().find(|n| n.contains(p))
                            && real.in_lung(p)
                        {
                            sum += n.hu_at(p) - parenchyma;
                        }
                    }
                    delta[r * cols + c] = (sum / sub as f64) as f32;
                    if let Some(n) = nodules.iter().position(|n| n.contains(centre))
                        && real.in_lung(centre)
                    {
                        labels[r * cols + c] = (n + 1) as u8;
                    }
                }
            }
            gaussian_blur(&mut delta, rows, cols, psf);
            let original = &series.hu[k * rows * cols..(k + 1) * rows * cols];
            let plane: Vec<f32> = original.iter().zip(&delta).map(|(o, d)| o + d).collect();
            (plane, labels)
        })
        .collect();

    // Write the derived series: same patient and study, new series and instance UIDs.
    let dicom_dir = out.join("dicom");
    std::fs::create_dir_all(&dicom_dir)?;
    let series_uid = rng.uid();
    let by_sop: HashMap<String, &std::path::PathBuf> = files
        .iter()
        .filter_map(|f| {
            let o = dicom_object::open_file(f).ok()?;
            let uid = o.element(tags::SOP_INSTANCE_UID).ok()?.to_str().ok()?;
            Some((uid.trim_end_matches('\0').to_owned(), f))
        })
        .collect();
    let mut study_uid = String::new();
    for (k, (slice, (plane, _))) in series.slices.iter().zip(&changed).enumerate() {
        if slice.frame.is_some() {
            bail!("lesion insertion supports single-frame series only");
        }
        let source = by_sop
            .get(&slice.sop_instance_uid)
            .with_context(|| format!("no file for {}", slice.sop_instance_uid))?;
        let object = dicom_object::open_file(source)?;
        study_uid = object
            .element(tags::STUDY_INSTANCE_UID)?
            .to_str()?
            .trim_end_matches('\0')
            .to_owned();
        let mut object = object.into_inner();
        let number = |tag| -> f64 {
            object
                .element(tag)
                .ok()
                .and_then(|e| e.to_float64().ok())
                .unwrap_or(if tag == tags::RESCALE_SLOPE { 1.0 } else { 0.0 })
        };
        let (slope, intercept) = (number(tags::RESCALE_SLOPE), number(tags::RESCALE_INTERCEPT));
        let signed = object
            .element(tags::PIXEL_REPRESENTATION)
            .ok()
            .and_then(|e| e.to_int::<u16>().ok())
            == Some(1);
        let bits_stored = object
            .element(tags::BITS_STORED)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(16);
        let (lo, hi) = if signed {
            (
                -(1i64 << (bits_stored - 1)),
                (1i64 << (bits_stored - 1)) - 1,
            )
        } else {
            (0, (1i64 << bits_stored) - 1)
        };
        let stored = plane.iter().map(|&h| {
            ((f64::from(h) - intercept) / slope)
                .round()
                .clamp(lo as f64, hi as f64) as i64
        });
        let pixels = if signed {
            PrimitiveValue::I16(stored.map(|v| v as i16).collect())
        } else {
            PrimitiveValue::U16(stored.map(|v| v as u16).collect())
        };
        let sop_uid = rng.uid();
        let s = |v: &str| PrimitiveValue::from(v);
        object.put(DataElement::new(tags::PIXEL_DATA, VR::OW, pixels));
        object.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        ));
        object.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            s(&sop_uid),
        ));
        object.put(DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            s(&series_uid),
        ));
        object.put(DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(
                ["DERIVED", "SECONDARY", "AXIAL"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        ));
        object.put(DataElement::new(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            s("WITH SYNTHETIC NODULES"),
        ));
        object.put(DataElement::new(
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            s("Synthetic nodules inserted by jnsc synth --into (not a clinical image)"),
        ));
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(sop_uid.as_str())
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(crate::store::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::store::IMPLEMENTATION_VERSION_NAME);
        object
            .with_meta(meta)?
            .write_to_file(dicom_dir.join(format!("CT{:06}.dcm", k + 1)))?;
    }

    let geometry = Geometry {
        size: [cols, rows, series.slices.len()],
        ..series.geometry()
    };
    let truth = Truth {
        series_uid,
        study_uid,
        seed,
        nodules: truth_of(&nodules, &real),
    };
    let (planes, labels): (Vec<Vec<f32>>, Vec<Vec<u8>>) = changed.into_iter().unzip();
    let hu = Volume {
        geometry,
        data: planes.into_iter().flatten().collect(),
    };
    let mask = Volume {
        geometry,
        data: labels.into_iter().flatten().collect(),
    };
    write_ground_truth(out, &truth, &mask, &hu)?;
    Ok(truth)
}

/// Whether `p` is within `margin` of a nodule's bounding box.
fn near(bounds: (Vec3, Vec3), p: Vec3, margin: f64) -> bool {
    (0..3).all(|a| p[a] >= bounds.0[a] - margin && p[a] <= bounds.1[a] + margin)
}
