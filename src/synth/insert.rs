//! Lesion insertion: synthetic nodules placed into the lungs of a real CT series. A lesion is
//! rendered as a difference to the local lung attenuation on the series' own acquired grid:
//! integrated over its slice thickness, blurred with the point-spread function measured on that
//! series (`estimate_psf_sigma_mm`, from the edge of the body), then added to the real slices.
//! The real image's noise and texture stay on top of the lesion, as they would on a real
//! nodule, and the result goes through the same resampling as the real anatomy. `jnsc synth
//! --into` writes the result as a new derived series; training (`datasets::real`) uses it in
//! memory.

use crate::random::Rng;
use crate::synth::calibration::Calibration;
use crate::synth::lesion::Lesion;
use crate::synth::nodules::{Lungs, Nodule, SegmentedLungs, draw_nodules};
use crate::synth::render::{Physics, gaussian_blur};
use crate::synth::study::{KnownNodule, Truth, truth_of, write_ground_truth};
use crate::volume::geometry::Vec3;
use crate::volume::lung::{BoundingBox, lung_mask};
use crate::volume::resample::{Interpolation, resample_isotropic};
use crate::volume::series::{AcquiredSeries, files_in, load_series};
use crate::volume::{Geometry, Volume};
use anyhow::{Context, bail};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Ratio of the 10-90% rise distance of a Gaussian-blurred step to its sigma.
const RISE_10_90_PER_SIGMA: f64 = 2.563;

/// A real series ready to take lesions: its acquired HU, its 1 mm volume and lung mask, and
/// what was measured on it.
pub struct Background {
    pub files: Vec<PathBuf>,
    pub series: AcquiredSeries,
    /// The series resampled to 1 mm (B-spline, as analysis does) and its lung mask.
    pub hu_1mm: Volume<f32>,
    pub lungs: Volume<u8>,
    /// The lungs' bounding box on the 1 mm grid.
    pub lung_box: BoundingBox,
    /// Mean attenuation of the lung parenchyma (below -500 HU in the lung mask): what a lesion
    /// replaces.
    pub parenchyma_hu: f64,
    /// In-plane point-spread function (Gaussian sigma, mm), measured on the series; the
    /// phantom's default where no body edge could be measured.
    pub psf_sigma_mm: f64,
    /// Whether `psf_sigma_mm` was measured (false: the default).
    pub psf_measured: bool,
}

impl Background {
    /// Loads the series in `dir` (DICOM files) and measures it.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let files = files_in(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        let series = load_series(&files).with_context(|| format!("{}", dir.display()))?;
        let hu_1mm = resample_isotropic(&series, 1.0, Interpolation::BSpline);
        let segmented = lung_mask(&hu_1mm);
        let lungs = segmented.mask;
        let lung_box = segmented
            .bounding_box
            .with_context(|| format!("{}: no lungs found", dir.display()))?;
        let real = SegmentedLungs::new(&hu_1mm, &lungs);
        if real.voxels.len() < 50_000 {
            bail!(
                "{}: too little lung in this series to insert nodules",
                dir.display()
            );
        }
        let parenchyma_hu = real
            .voxels
            .iter()
            .map(|&v| f64::from(hu_1mm.data[v]))
            .sum::<f64>()
            / real.voxels.len() as f64;
        let measured = estimate_psf_sigma_mm(&series);
        Ok(Self {
            files,
            psf_sigma_mm: measured.unwrap_or(Physics::default().psf_sigma_mm),
            psf_measured: measured.is_some(),
            series,
            hu_1mm,
            lungs,
            lung_box,
            parenchyma_hu,
        })
    }

    /// Where lesions may go: the segmented parenchyma.
    pub fn segmented_lungs(&self) -> SegmentedLungs<'_> {
        SegmentedLungs::new(&self.hu_1mm, &self.lungs)
    }

    /// Where phantom nodules may go: the segmented parenchyma, and with `juxta_vascular` its
    /// vessels too (`SegmentedLungs::with_vessels`).
    pub fn insertion_lungs(&self, juxta_vascular: bool) -> SegmentedLungs<'_> {
        let lungs = self.segmented_lungs();
        if juxta_vascular {
            lungs.with_vessels()
        } else {
            lungs
        }
    }
}

/// The in-plane point-spread function of a series as a Gaussian sigma (mm), measured on the
/// edge between the air around the patient and the skin: along image rows through the middle
/// third of the middle slices, the 10-90% rise distance of each clean air-to-tissue step, the
/// median of them, less the pixel's own width. None when fewer than 20 clean edges are seen
/// (the body fills the field of view, say).
pub fn estimate_psf_sigma_mm(series: &AcquiredSeries) -> Option<f64> {
    let (rows, cols) = (series.rows, series.columns);
    let n = series.slices.len();
    if cols < 40 || n == 0 {
        return None;
    }
    let slices: Vec<usize> = (n / 4..=(3 * n / 4).min(n - 1))
        .step_by((n / 20).max(1))
        .collect();
    let mut rises: Vec<f64> = Vec::new();
    for &k in &slices {
        for r in (rows / 3..2 * rows / 3).step_by(4) {
            let line = &series.hu[(k * rows + r) * cols..(k * rows + r + 1) * cols];
            let reversed: Vec<f32> = line.iter().rev().copied().collect();
            for profile in [line, &reversed[..]] {
                if let Some(d) = edge_rise_pixels(profile) {
                    rises.push(d);
                }
            }
        }
    }
    if rises.len() < 20 {
        return None;
    }
    rises.sort_by(f64::total_cmp);
    let rise_mm = rises[rises.len() / 2] * series.column_spacing_mm;
    let total = rise_mm / RISE_10_90_PER_SIGMA;
    let pixel = series.column_spacing_mm.powi(2) / 12.0;
    Some((total * total - pixel).max(0.01).sqrt())
}

/// The 10-90% rise distance (pixels) of the first air-to-tissue step of a profile: air (below
/// -900 HU over 4 pixels) followed within a few pixels by tissue (above -300 HU over 4 pixels,
/// at least 600 HU above the air).
fn edge_rise_pixels(profile: &[f32]) -> Option<f64> {
    let c = profile.iter().position(|&v| v > -500.0)?;
    if c < 10 || c + 10 > profile.len() {
        return None;
    }
    let mean = |a: usize, b: usize| {
        profile[a..b].iter().map(|&v| f64::from(v)).sum::<f64>() / (b - a) as f64
    };
    let (air, tissue) = (mean(c - 9, c - 5), mean(c + 5, c + 9));
    if air > -900.0 || tissue < -300.0 || tissue - air < 600.0 {
        return None;
    }
    // The step must be monotone across the edge window (no table or clothing edge inside it).
    let window = &profile[c - 5..c + 5];
    if window
        .windows(2)
        .any(|w| f64::from(w[1]) < f64::from(w[0]) - 40.0)
    {
        return None;
    }
    let crossing = |level: f64| -> Option<f64> {
        (c - 5..c + 5).find_map(|i| {
            let (a, b) = (f64::from(profile[i]), f64::from(profile[i + 1]));
            (a < level && b >= level).then(|| i as f64 + (level - a) / (b - a))
        })
    };
    let low = crossing(air + 0.1 * (tissue - air))?;
    let high = crossing(air + 0.9 * (tissue - air))?;
    (high > low).then_some(high - low)
}

#[derive(serde::Deserialize)]
struct KnownTruth {
    nodules: Vec<KnownNodule>,
}

/// The DICOM folder and the known nodules of a background folder: a study folder (`dicom/` and
/// `truth.json`, as `jnsc synth` and `../shared/data/real-ct` lay them out) or a DICOM folder.
pub fn background_folder(dir: &Path) -> anyhow::Result<(PathBuf, Vec<KnownNodule>)> {
    let truth = dir.join("truth.json");
    if truth.exists() {
        let text = std::fs::read(&truth).with_context(|| format!("{}", truth.display()))?;
        let known: KnownTruth =
            serde_json::from_slice(&text).with_context(|| format!("{}", truth.display()))?;
        Ok((dir.join("dicom"), known.nodules))
    } else {
        Ok((dir.to_owned(), Vec::new()))
    }
}

/// Inserted nodules keep this far (mm) from the surface of a known nodule.
const KNOWN_CLEARANCE_MM: f64 = 10.0;

/// Draws up to `count` nodules in `lungs`, each at least `KNOWN_CLEARANCE_MM` from the surface
/// of every known nodule.
pub fn draw_clear_of(
    lungs: &impl Lungs,
    known: &[KnownNodule],
    calibration: &Calibration,
    count: usize,
    rng: &mut Rng,
) -> Vec<Nodule> {
    let clear = |n: &Nodule| {
        known.iter().all(|k| {
            let d = (0..3)
                .map(|a| (k.center_mm[a] - n.centre[a]).powi(2))
                .sum::<f64>()
                .sqrt();
            d > k.diameter_mm / 2.0 + n.nominal_diameter_mm / 2.0 + KNOWN_CLEARANCE_MM
        })
    };
    draw_nodules(lungs, calibration, count + 3, rng)
        .into_iter()
        .filter(clear)
        .take(count)
        .collect()
}

/// Adds `lesions` to the series' HU in place and returns the label of every acquired voxel
/// (lesion n = n + 1, 0 elsewhere; a voxel is labelled where its centre is inside the lesion
/// and in the lungs). Each lesion is rendered as its difference to `parenchyma_hu`, averaged
/// over the slice thickness (sub-planes at most 0.5 mm apart), blurred in-plane with
/// `psf_sigma_mm`, and added: the series' own noise stays.
pub fn add_lesions(
    series: &mut AcquiredSeries,
    lesions: &[&dyn Lesion],
    in_lung: &(dyn Fn(Vec3) -> bool + Sync),
    parenchyma_hu: f64,
    psf_sigma_mm: f64,
) -> Vec<u8> {
    let (rows, cols) = (series.rows, series.columns);
    let thickness = series.median_slice_spacing();
    let sub = (thickness / 0.5).ceil().max(1.0) as usize;
    let psf = psf_sigma_mm / series.column_spacing_mm.min(series.row_spacing_mm);
    let geometry = &*series;
    let changed: Vec<(Vec<f32>, Vec<u8>)> = series
        .slices
        .par_iter()
        .map(|slice| {
            let mut delta = vec![0f32; rows * cols];
            let mut labels = vec![0u8; rows * cols];
            let at = |r: usize, c: usize, dz: f64| -> Vec3 {
                [0, 1, 2].map(|a| {
                    slice.position[a]
                        + geometry.row_direction[a] * c as f64 * geometry.column_spacing_mm
                        + geometry.column_direction[a] * r as f64 * geometry.row_spacing_mm
                        + geometry.normal[a] * dz
                })
            };
            for r in 0..rows {
                for c in 0..cols {
                    let centre = at(r, c, 0.0);
                    if !lesions.iter().any(|n| near(n.bounds(), centre, thickness)) {
                        continue;
                    }
                    let mut sum = 0.0;
                    for j in 0..sub {
                        let p = at(r, c, thickness * ((j as f64 + 0.5) / sub as f64 - 0.5));
                        if let Some(n) = lesions.iter().find(|n| n.contains(p))
                            && in_lung(p)
                        {
                            sum += n.hu_at(p) - parenchyma_hu;
                        }
                    }
                    delta[r * cols + c] = (sum / sub as f64) as f32;
                    if let Some(n) = lesions.iter().position(|n| n.contains(centre))
                        && in_lung(centre)
                    {
                        labels[r * cols + c] = (n + 1) as u8;
                    }
                }
            }
            if delta.iter().any(|&d| d != 0.0) {
                gaussian_blur(&mut delta, rows, cols, psf);
            }
            (delta, labels)
        })
        .collect();
    let mut all_labels = Vec::with_capacity(series.hu.len());
    for (plane, (delta, labels)) in series.hu.chunks_mut(rows * cols).zip(changed) {
        for (h, d) in plane.iter_mut().zip(delta) {
            *h += d;
        }
        all_labels.extend(labels);
    }
    all_labels
}

/// Inserts `count` nodules into the series in `background_dir` (a DICOM folder, or a study
/// folder whose `truth.json` names known nodules: the new ones keep clear of them, and they are
/// carried into the new `truth.json` as `known_nodules`); writes `out/dicom/*.dcm` and the
/// ground truth files beside them. With `juxta_vascular`, the series' vessels are offered to
/// juxta-vascular nodules (`Background::insertion_lungs`).
pub fn insert_nodules(
    background_dir: &Path,
    out: &Path,
    count: usize,
    seed: u64,
    calibration: &Calibration,
    juxta_vascular: bool,
) -> anyhow::Result<Truth> {
    let (series_dir, known) = background_folder(background_dir)?;
    let background = Background::load(&series_dir)?;
    let real = background.insertion_lungs(juxta_vascular);
    let mut rng = Rng::new(seed);
    let nodules = draw_clear_of(&real, &known, calibration, count, &mut rng);
    if nodules.len() < count {
        bail!("found room for only {} of {count} nodules", nodules.len());
    }
    let lesions: Vec<&dyn Lesion> = nodules.iter().map(|n| n as &dyn Lesion).collect();
    let mut series = background.series.clone();
    let labels = add_lesions(
        &mut series,
        &lesions,
        &|p| real.in_lung(p),
        background.parenchyma_hu,
        background.psf_sigma_mm,
    );
    let (rows, cols) = (series.rows, series.columns);
    let files = &background.files;
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
    for (k, (slice, plane)) in series
        .slices
        .iter()
        .zip(series.hu.chunks(rows * cols))
        .enumerate()
    {
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
        let meta = crate::write::file_meta(
            uids::CT_IMAGE_STORAGE,
            sop_uid.as_str(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        );
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
        known_nodules: known,
    };
    let hu = Volume {
        geometry,
        data: series.hu.clone(),
    };
    let mask = Volume {
        geometry,
        data: labels,
    };
    write_ground_truth(out, &truth, &mask, &hu)?;
    Ok(truth)
}

/// Whether `p` is within `margin` of a nodule's bounding box.
fn near(bounds: (Vec3, Vec3), p: Vec3, margin: f64) -> bool {
    (0..3).all(|a| p[a] >= bounds.0[a] - margin && p[a] <= bounds.1[a] + margin)
}
