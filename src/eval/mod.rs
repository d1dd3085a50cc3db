//! Evaluation tools: detection FROC/CPM by the LUNA16 rules (`froc`), malignancy classification
//! metrics with M = 3 excluded (`classification`), the FROC plot (`plot`), evaluation of the
//! model on synthetic studies with ground truth (`studies`), of its classifier alone on the
//! reference nodules of held-out synthetic scans (`nodules`) and on real LIDC-IDRI nodule shapes
//! of held-out patients inserted into a held-out real background (`shapes`), the calibration of
//! the malignancy output with its reliability diagram (`calibration`), the choice of the
//! model's operating point on validation studies (`operating_point`), and the `jnsc eval`
//! commands.

pub mod calibration;
pub mod classification;
pub mod froc;
pub mod nodules;
pub mod operating_point;
pub mod plot;
pub mod shapes;
pub mod studies;

use anyhow::Context;
use std::path::{Path, PathBuf};

/// `jnsc eval froc`: LUNA16-format CSVs in, the official script's outputs and the CPM out.
#[derive(Debug, clap::Args)]
pub struct FrocArgs {
    /// annotations.csv: seriesuid,coordX,coordY,coordZ,diameter_mm (world mm).
    #[arg(long)]
    pub annotations: PathBuf,
    /// annotations_excluded.csv: findings whose marks are neither hits nor false positives.
    #[arg(long)]
    pub excluded: PathBuf,
    /// seriesuids.csv: every scan evaluated, one per line.
    #[arg(long)]
    pub series: PathBuf,
    /// The CAD marks: seriesuid,coordX,coordY,coordZ,probability.
    #[arg(long)]
    pub submission: PathBuf,
    /// Write CADAnalysis.txt, froc_points.txt and nodules_without_candidate.txt here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The system's name in CADAnalysis.txt (default: the submission file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Marks kept per scan (the challenge's rule: 100; 0 keeps all).
    #[arg(long, default_value_t = froc::MAX_MARKS_PER_SCAN)]
    pub max_marks: usize,
    /// Bootstrap rounds over scans for a 95% confidence interval of the CPM (0: none).
    #[arg(long, default_value_t = 0)]
    pub bootstrap: usize,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs `jnsc eval froc`.
pub fn run_froc(args: &FrocArgs) -> anyhow::Result<()> {
    let name_of = |p: &Path| p.display().to_string();
    let reference = froc::Reference {
        series: froc::parse_series_list(&read(&args.series)?),
        nodules: froc::parse_findings(&name_of(&args.annotations), &read(&args.annotations)?)?,
        excluded: froc::parse_findings(&name_of(&args.excluded), &read(&args.excluded)?)?,
    };
    let marks = froc::parse_marks(&name_of(&args.submission), &read(&args.submission)?)?;
    let analysis = froc::evaluate(&reference, &marks, args.max_marks);
    let name = args.name.clone().unwrap_or_else(|| {
        args.submission
            .file_stem()
            .map_or("CAD".into(), |s| s.to_string_lossy().into_owned())
    });
    print_and_write(&analysis, &name, args.out.as_deref())?;
    if args.bootstrap > 0 {
        let (low, high) = bootstrap_cpm(&reference, &marks, args, args.bootstrap);
        println!(
            "CPM 95% bootstrap interval over scans ({} rounds): {low:.6} .. {high:.6}",
            args.bootstrap
        );
    }
    Ok(())
}

/// Prints the CAD analysis and the CPM; with `out`, writes the script's three files and
/// froc.svg there. Returns the sensitivities at the CPM rates and the CPM.
pub fn print_and_write(
    analysis: &froc::Analysis,
    name: &str,
    out: Option<&Path>,
) -> anyhow::Result<([f64; 7], f64)> {
    let report = analysis.report(name);
    print!("{report}");
    let (at, score) = froc::cpm(&analysis.curve);
    let listed: Vec<String> = at.iter().map(|s| format!("{s:.4}")).collect();
    println!(
        "\nSensitivity at {:?} FPs/scan: {}\nCPM: {score:.6}",
        froc::CPM_RATES,
        listed.join(" ")
    );
    if let Some(out) = out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        for (file, text) in [
            ("CADAnalysis.txt", report),
            ("froc_points.txt", analysis.curve_csv()),
            ("nodules_without_candidate.txt", analysis.missed_csv()),
        ] {
            let path = out.join(file);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let svg = out.join("froc.svg");
        plot::write_froc_svg(&svg, &analysis.curve, name)
            .with_context(|| format!("cannot write {}", svg.display()))?;
    }
    Ok((at, score))
}

/// The 2.5th and 97.5th percentiles of the CPM over scans resampled with replacement.
fn bootstrap_cpm(
    reference: &froc::Reference,
    marks: &[froc::Mark],
    args: &FrocArgs,
    rounds: usize,
) -> (f64, f64) {
    let mut rng = crate::random::Rng::new(args.seed);
    let n = reference.series.len();
    let mut scores: Vec<f64> = (0..rounds)
        .map(|_| {
            let sample = froc::Reference {
                series: (0..n)
                    .map(|_| reference.series[rng.below(n)].clone())
                    .collect(),
                ..reference.clone()
            };
            froc::cpm(&froc::evaluate(&sample, marks, args.max_marks).curve).1
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    let at = |q: f64| scores[((q * (rounds - 1) as f64).round() as usize).min(rounds - 1)];
    (at(0.025), at(0.975))
}
