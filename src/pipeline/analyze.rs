//! `jnsc analyze`: the worker's work on one series folder, without the node: the analysis as
//! JSON (each stage timed), and optionally the SEG and SR the node would send, written to a
//! folder.

use std::path::PathBuf;

/// Options of `jnsc analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Folder with the series' DICOM files.
    pub dir: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub analyzer: crate::inference::command::AnalyzerArgs,
    /// Also write the nodule location map (p(nodule) per voxel over the lung region, 1 mm) here
    /// as MetaImage (.mhd, with a .raw beside it), to look at in 3D Slicer or ITK-SNAP.
    #[arg(long)]
    pub map: Option<PathBuf>,
    /// Also write the result objects the node would send (seg.dcm, sr.dcm, results.json) here.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Lowest nodule probability reported in the result objects (default: the model file's
    /// operating point).
    #[arg(long)]
    pub min_p_nodule: Option<f64>,
    /// Most findings reported in the result objects.
    #[arg(long, default_value_t = crate::results::DEFAULT_MAX_FINDINGS)]
    pub max_findings: usize,
    /// AE title named as the device observer in the results.
    #[arg(long, default_value = "JNSC")]
    pub ae_title: String,
    /// Classify every finding (default: only those whose location probability reaches
    /// --min-p-nodule, the only ones that can be reported).
    #[arg(long)]
    pub classify_all: bool,
}

/// Runs `jnsc analyze`.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let mut analyzer = args.analyzer.load()?;
    // Needed to prefilter what is classified and to write results; otherwise a model without an
    // operating point (for this setting) analyses as well as any.
    let min_p_nodule = crate::results::min_p_nodule(args.min_p_nodule, &analyzer);
    if !args.classify_all {
        analyzer.classify_min_p_location = min_p_nodule.clone()?;
    }
    let files = crate::volume::series::files_in(&args.dir)?;
    let analysis = analyzer.analyze(&files)?;
    let json = serde_json::to_string_pretty(&analysis.report)?;
    match &args.json {
        Some(path) => std::fs::write(path, json + "\n")?,
        None => println!("{json}"),
    }
    if let Some(path) = &args.map {
        crate::volume::metaimage::write(path, &analysis.map)?;
    }
    if let Some(dir) = &args.results {
        use crate::results::{
            Equipment, ReportPolicy, build, read_summary, source::SourceStudy, write,
        };
        use anyhow::Context;
        let first = files.first().context("the folder has no DICOM file")?;
        let source = SourceStudy::read(first, &analysis.volume.series)?;
        let policy = ReportPolicy {
            min_p_nodule: min_p_nodule?,
            max_findings: args.max_findings,
        };
        let previous = read_summary(dir);
        let equipment = Equipment::new(&args.ae_title);
        let objects = build(&analysis, &source, &policy, &equipment, previous.as_ref());
        let written = write(&objects, dir)?;
        eprintln!(
            "jnsc: {} of {} findings reported; wrote {}{}",
            objects.summary.findings.len(),
            objects.summary.candidates,
            written.sr.display(),
            written
                .seg
                .map(|p| format!(" and {}", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}
