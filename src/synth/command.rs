//! `jnsc synth`: a synthetic chest CT study with nodules and its ground truth, or nodules
//! inserted into a real series, from the command line.

use super::calibration::Calibration;
use super::render::Physics;
use super::series::SeriesSpec;
use super::study::{StudyOptions, write_study};
use std::path::PathBuf;

/// Options of `jnsc synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 300)]
    pub slices: usize,
    /// Rows and columns of each slice.
    #[arg(long, default_value_t = 512)]
    pub size: u16,
    /// In-plane pixel spacing, mm (0.5-1.0).
    #[arg(long, default_value_t = 0.7)]
    pub pixel_spacing: f64,
    /// Slice spacing and thickness, mm (0.625-5).
    #[arg(long, default_value_t = 1.25)]
    pub slice_spacing: f64,
    /// Number of nodules (default: 0-4, drawn like screening studies).
    #[arg(long)]
    pub nodules: Option<usize>,
    /// Patient position: HFS, FFS (supine) or HFP, FFP (prone).
    #[arg(long, default_value = "FFS")]
    pub position: String,
    /// explicit or implicit (VR little endian).
    #[arg(long, default_value = "explicit")]
    pub transfer_syntax: String,
    /// Noise standard deviation at 1.25 mm slices, HU.
    #[arg(long, default_value_t = 22.0)]
    pub noise: f64,
    /// Insert the nodules into this real CT series instead (geometry options are ignored).
    #[arg(long)]
    pub into: Option<PathBuf>,
    /// With --into: offer the series' vessels to juxta-vascular nodules (without it, a real
    /// series' nodules are isolated or juxta-pleural, as insertion sets made before it).
    #[arg(long, requires = "into")]
    pub juxta_vascular: bool,
}

/// Runs `jnsc synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    if !(0.5..=1.0).contains(&args.pixel_spacing) {
        anyhow::bail!("--pixel-spacing must be within 0.5-1.0 mm");
    }
    if !(0.625..=5.0).contains(&args.slice_spacing) {
        anyhow::bail!("--slice-spacing must be within 0.625-5 mm");
    }
    let (row, column) = match args.position.as_str() {
        "HFS" | "FFS" => ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        "HFP" | "FFP" => ([-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
        other => anyhow::bail!("--position {other}: use HFS, FFS, HFP or FFP"),
    };
    let transfer_syntax = match args.transfer_syntax.as_str() {
        "explicit" => dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
        "implicit" => dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN,
        other => anyhow::bail!("--transfer-syntax {other}: use explicit or implicit"),
    };
    let options = StudyOptions {
        series: SeriesSpec {
            slices: args.slices,
            rows: args.size,
            columns: args.size,
            pixel_spacing_mm: args.pixel_spacing,
            slice_spacing_mm: args.slice_spacing,
            row_direction: row,
            column_direction: column,
            patient_position: args.position.clone(),
            transfer_syntax: transfer_syntax.into(),
            seed: args.seed,
            patient_id: format!("SYNTH{:06}", args.seed % 1_000_000),
            ..SeriesSpec::default()
        },
        nodules: args.nodules,
        physics: Physics {
            noise_hu: args.noise,
            ..Physics::default()
        },
    };
    let started = std::time::Instant::now();
    let truth = match &args.into {
        Some(real) => super::insert::insert_nodules(
            real,
            &args.out,
            args.nodules.unwrap_or(3),
            args.seed,
            &Calibration::lidc(),
            args.juxta_vascular,
        )?,
        None => write_study(&options, &Calibration::lidc(), &args.out)?,
    };
    println!(
        "wrote series {} to {} in {:.1} s",
        truth.series_uid,
        args.out.join("dicom").display(),
        started.elapsed().as_secs_f64()
    );
    for n in &truth.nodules {
        println!(
            "nodule {}: {:?} {:?} {:?}, {:.1} mm at [{:.1}, {:.1}, {:.1}], ratings {:?}{}",
            n.label,
            n.kind,
            n.margin,
            n.location,
            n.diameter_mm,
            n.center_mm[0],
            n.center_mm[1],
            n.center_mm[2],
            n.ratings,
            if n.marginal { " (marginal)" } else { "" }
        );
    }
    Ok(())
}
