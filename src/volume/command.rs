//! `jnsc volume`: a series folder -> the 1 mm volume and the lung mask, described, optionally
//! written as MetaImage (for 3D Slicer, ITK-SNAP).

use super::resample::Interpolation;
use super::{metaimage, prepare, series};
use std::path::PathBuf;

/// Options of `jnsc volume`.
#[derive(clap::Args, Debug)]
pub struct VolumeArgs {
    /// Folder with the series' DICOM files.
    pub dir: PathBuf,
    /// Write the 1 mm volume (HU) here (.mhd, with a .raw beside it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the lung mask here (.mhd).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// bspline (default) or linear.
    #[arg(long, default_value = "bspline")]
    pub interpolation: Interpolation,
}

/// Runs `jnsc volume`.
pub fn run(args: &VolumeArgs) -> anyhow::Result<()> {
    let (dir, out, mask) = (&args.dir, args.out.as_deref(), args.mask.as_deref());
    let interpolation = args.interpolation;
    let files = series::files_in(dir)?;
    let prepared = prepare::prepare(&files, interpolation)?;
    let s = &prepared.series;
    println!(
        "series {}: {} slices of {}x{}",
        s.series_uid,
        s.slices.len(),
        s.columns,
        s.rows
    );
    for note in &s.notes {
        println!("note: {note}");
    }
    let g = prepared.hu.geometry;
    println!(
        "1 mm volume: size {:?}, origin {:?}, directions {:?}",
        g.size, g.origin, g.direction
    );
    println!("lungs: {:.0} ml", prepared.lungs.lung_volume_ml);
    match prepared.lungs.bounding_box {
        Some(b) => println!(
            "lung bounding box: {:?} .. {:?} (size {:?})",
            b.min,
            b.max,
            b.size()
        ),
        None => println!("lung bounding box: none (no lung found)"),
    }
    let t = prepared.timings_ms;
    println!(
        "timings: load {:.0} ms, resample {:.0} ms, lung mask {:.0} ms",
        t.load, t.resample, t.lung_mask
    );
    if let Some(path) = out {
        metaimage::write(path, &prepared.hu)?;
    }
    if let Some(path) = mask {
        metaimage::write(path, &prepared.lungs.mask)?;
    }
    Ok(())
}
