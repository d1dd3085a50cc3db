//! The `jnsc` command line: `serve` runs the node; the other subcommands are tools around it.

use clap::{Parser, Subcommand};
use jnsc::config::Config;
use jnsc::synth::series::SeriesSpec;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mi_option_e` in mimalloc.h, v3): milliseconds before
/// freed memory goes back to the OS; -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the OS (unless `MIMALLOC_PURGE_DELAY`
/// says otherwise). The network frees and allocates the same large buffers for every window;
/// given back and faulted in again, each one is zeroed by the kernel page by page, about 15% of
/// an analysis' time. The price: the resident size stays at the analysis' peak between studies.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "jnsc",
    version,
    about = "DICOM node for lung nodule detection (JNSC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: DICOM SCP, durable store, SQLite index, series completion, analysis worker,
    /// and delivery of SEG + SR to the sender.
    Serve {
        /// Configuration file (TOML); every key has a default.
        #[arg(long, env = "JNSC_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Queue a study's latest results for delivery again (to the destination the configuration
    /// now names for the AE that sent it); a running node sends them within seconds.
    Resend {
        /// Study Instance UID.
        study_uid: String,
        /// Configuration file (TOML) of the node.
        #[arg(long, env = "JNSC_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write a synthetic chest CT study with nodules and ground truth: DIR/dicom/CT*.dcm,
    /// DIR/truth.json, DIR/truth_mask.mhd, DIR/annotations.csv, DIR/preview.png.
    Synth(SynthArgs),
    /// Read a CT series folder, resample it to 1 mm and segment the lungs; print what was found
    /// and optionally write the volume and the mask as MetaImage (for 3D Slicer, ITK-SNAP).
    Volume {
        /// Folder with the series' DICOM files.
        dir: PathBuf,
        /// Write the 1 mm volume (HU) here (.mhd, with a .raw beside it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the lung mask here (.mhd).
        #[arg(long)]
        mask: Option<PathBuf>,
        /// bspline (default) or linear.
        #[arg(long, default_value = "bspline")]
        interpolation: jnsc::volume::resample::Interpolation,
    },
    /// Model files.
    Model {
        #[command(subcommand)]
        which: ModelCommand,
    },
    /// Find nodules in one CT series folder: findings with malignancy as JSON (stdout or
    /// --json FILE), with the time of each stage.
    Analyze(AnalyzeArgs),
    /// Train JNSC on synthetic scans (segmentation pre-training, joint training, pseudo-labels);
    /// resumable, with metrics.csv and a model file at the end.
    Train(jnsc::train::TrainArgs),
    /// Evaluation: detection FROC/CPM by the LUNA16 rules, malignancy metrics.
    Eval {
        #[command(subcommand)]
        which: EvalCommand,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Folder with the series' DICOM files.
    dir: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The model file (default: the shipped model embedded in this binary).
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// fast (128^3 windows, 16-voxel margins) or paper (64^3 windows shifted by 32, averaged).
    #[arg(long, default_value = "fast")]
    tiling: String,
    /// Windows per network call (more is faster on a GPU).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also write the result objects the node would send (seg.dcm, sr.dcm, results.json) here.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Lowest nodule probability reported in the result objects.
    #[arg(long, default_value_t = jnsc::results::ReportPolicy::default().min_p_nodule)]
    min_p_nodule: f64,
    /// Most findings reported in the result objects.
    #[arg(long, default_value_t = jnsc::results::ReportPolicy::default().max_findings)]
    max_findings: usize,
    /// AE title named as the device observer in the results.
    #[arg(long, default_value = "JNSC")]
    ae_title: String,
    /// Classify every finding (default: only those whose location probability reaches
    /// --min-p-nodule, the only ones that can be reported).
    #[arg(long)]
    classify_all: bool,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// FROC and CPM of CAD marks against LUNA16-format annotations, exactly as the challenge's
    /// evaluation script computes them; prints its CAD analysis and the CPM.
    Froc(jnsc::eval::FrocArgs),
    /// Run the analyzer on studies with ground truth (folders written by `jnsc synth`) and report
    /// FROC/CPM and malignancy accuracy, sensitivity, specificity, balanced accuracy and AUC.
    Studies(jnsc::eval::studies::StudiesArgs),
    /// Classify every reference nodule of held-out synthetic scans with its true box (the
    /// classifier alone, apart from detection) and report the malignancy metrics.
    Nodules(jnsc::eval::nodules::NodulesArgs),
    /// Classify real LIDC-IDRI nodule shapes of held-out patients, inserted into a held-out real
    /// background, with their true boxes; report the malignancy metrics against their readers'
    /// ratings with bootstrap intervals.
    Shapes(jnsc::eval::shapes::ShapesArgs),
    /// Fit Platt scaling of p(malignant | nodule) and the call's threshold on one nodules.csv
    /// of `eval nodules`, check them on another (reliability diagram), write a calibrated model.
    Calibrate(jnsc::eval::calibration::CalibrateArgs),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a freshly initialised (untrained) model file, e.g. to start a training run.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// cpu or paper.
        #[arg(long, default_value = "cpu")]
        preset: String,
        /// Override the encoder widths, e.g. 4,8,8,16,16.
        #[arg(long, value_delimiter = ',')]
        widths: Option<Vec<usize>>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Sends one CT series over loopback to this node and to DCMTK's storescp, in one run, and
    /// prints instances/second for both and their ratio.
    Ingest(SeriesBench),
    /// Times the network's forward and forward+backward passes for both presets.
    Network {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Runs `analyze` on a synthetic chest study with the paper's sliding window and the fast
    /// setting; prints each stage's time and the peak memory.
    Analyze {
        #[arg(long, default_value_t = 300)]
        slices: usize,
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// The model file (default: the shipped model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Windows per network call.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// A real series folder to analyse instead of the synthetic study.
        #[arg(long)]
        series: Option<PathBuf>,
    },
    /// Times series -> volume -> 1 mm for a synthetic series, and SimpleITK doing the same in
    /// the same run; prints both and the ratio.
    Volume(SeriesBench),
    /// kill -9 during transfers: sends a synthetic series with storescu, kills the node at a
    /// random moment, starts it again, and checks every acknowledged instance is there.
    Crash {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        #[arg(long, default_value_t = 200)]
        slices: usize,
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// Seed of the moments the node is killed at.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Mutation fuzzing of what the node parses from the network (association streams,
    /// command sets, data sets) for a time per target; prints executions and crashes.
    Fuzz(jnsc::fuzz::FuzzArgs),
}

/// The synthetic series a benchmark uses, and how many rounds it runs.
#[derive(clap::Args)]
struct SeriesBench {
    #[arg(long, default_value_t = 300)]
    slices: usize,
    /// Rows and columns of each slice.
    #[arg(long, default_value_t = 512)]
    size: u16,
    /// Rounds per peer (alternating); the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Resend { study_uid, config } => resend(&study_uid, config),
        Command::Synth(args) => synth(args),
        Command::Analyze(args) => analyze(&args),
        Command::Train(args) => jnsc::train::run(&args),
        Command::Eval {
            which: EvalCommand::Froc(args),
        } => jnsc::eval::run_froc(&args),
        Command::Eval {
            which: EvalCommand::Studies(args),
        } => jnsc::eval::studies::run(&args),
        Command::Eval {
            which: EvalCommand::Nodules(args),
        } => jnsc::eval::nodules::run(&args),
        Command::Eval {
            which: EvalCommand::Shapes(args),
        } => jnsc::eval::shapes::run(&args),
        Command::Eval {
            which: EvalCommand::Calibrate(args),
        } => jnsc::eval::calibration::run(&args),
        Command::Bench {
            which: BenchCommand::Ingest(b),
        } => jnsc::bench::ingest(b.slices, b.size, b.rounds),
        Command::Bench {
            which:
                BenchCommand::Analyze {
                    slices,
                    size,
                    model,
                    device,
                    batch,
                    series,
                },
        } => jnsc::bench::analyze(
            slices,
            size,
            model.as_deref(),
            &device,
            batch,
            series.as_deref(),
        ),
        Command::Bench {
            which: BenchCommand::Volume(b),
        } => jnsc::bench::volume(b.slices, b.size, b.rounds),
        Command::Bench {
            which: BenchCommand::Fuzz(args),
        } => jnsc::fuzz::run_bench(&args),
        Command::Bench {
            which:
                BenchCommand::Crash {
                    rounds,
                    slices,
                    size,
                    seed,
                },
        } => jnsc::bench::crash(rounds, slices, size, seed),
        Command::Model {
            which:
                ModelCommand::Init {
                    out,
                    preset,
                    widths,
                },
        } => model_init(&out, &preset, widths),
        Command::Bench {
            which: BenchCommand::Network { rounds, device },
        } => jnsc::bench::network(rounds, &device),
        Command::Volume {
            dir,
            out,
            mask,
            interpolation,
        } => volume(&dir, out.as_deref(), mask.as_deref(), interpolation),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jnsc: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Options of `jnsc synth`.
#[derive(clap::Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 300)]
    slices: usize,
    /// Rows and columns of each slice.
    #[arg(long, default_value_t = 512)]
    size: u16,
    /// In-plane pixel spacing, mm (0.5-1.0).
    #[arg(long, default_value_t = 0.7)]
    pixel_spacing: f64,
    /// Slice spacing and thickness, mm (0.625-5).
    #[arg(long, default_value_t = 1.25)]
    slice_spacing: f64,
    /// Number of nodules (default: 0-4, drawn like screening studies).
    #[arg(long)]
    nodules: Option<usize>,
    /// Patient position: HFS, FFS (supine) or HFP, FFP (prone).
    #[arg(long, default_value = "FFS")]
    position: String,
    /// explicit or implicit (VR little endian).
    #[arg(long, default_value = "explicit")]
    transfer_syntax: String,
    /// Noise standard deviation at 1.25 mm slices, HU.
    #[arg(long, default_value_t = 22.0)]
    noise: f64,
    /// Insert the nodules into this real CT series instead (geometry options are ignored).
    #[arg(long)]
    into: Option<PathBuf>,
}

fn synth(args: SynthArgs) -> anyhow::Result<()> {
    use jnsc::synth::calibration::Calibration;
    use jnsc::synth::render::Physics;
    use jnsc::synth::study::{StudyOptions, write_study};
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
        Some(real) => jnsc::synth::insert::insert_nodules(
            real,
            &args.out,
            args.nodules.unwrap_or(3),
            args.seed,
            &Calibration::lidc(),
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

fn model_init(
    out: &std::path::Path,
    preset: &str,
    widths: Option<Vec<usize>>,
) -> anyhow::Result<()> {
    use jnsc::jnsc::model_file::{ModelInfo, save};
    use jnsc::jnsc::network::{Config, Jnsc};
    let mut config = Config::preset(preset).map_err(|e| anyhow::anyhow!("--preset: {e}"))?;
    if let Some(w) = widths {
        config.widths = w
            .try_into()
            .map_err(|_| anyhow::anyhow!("--widths needs 5 values"))?;
    }
    let device = candle_core::Device::Cpu;
    let vars = candle_nn::VarMap::new();
    Jnsc::new(
        &config,
        candle_nn::VarBuilder::from_varmap(&vars, candle_core::DType::F32, &device),
    )?;
    jnsc::jnsc::network::seeded_init(&vars, 1)?;
    let info = ModelInfo {
        malignancy_calibration: None,
        name: format!("jnsc-{preset}"),
        version: "0.0.0-untrained".into(),
        config,
        normalization: jnsc::volume::Normalization::default(),
        provenance: serde_json::json!({"trained": false, "init": "kaiming normal", "jnsc": env!("CARGO_PKG_VERSION")}),
    };
    save(out, &vars, &info)?;
    println!("wrote untrained model {} to {}", info.name, out.display());
    Ok(())
}

fn volume(
    dir: &std::path::Path,
    out: Option<&std::path::Path>,
    mask: Option<&std::path::Path>,
    interpolation: jnsc::volume::resample::Interpolation,
) -> anyhow::Result<()> {
    use jnsc::volume::{metaimage, prepare, series};
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

fn resend(study_uid: &str, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let queued = runtime.block_on(async {
        let index = jnsc::store::db::Index::open(&config.db_path()).await?;
        let queued = index
            .resend_study(study_uid, |ae| config.destination(ae))
            .await?;
        index.pool().close().await;
        anyhow::Ok(queued)
    })?;
    if queued == 0 {
        anyhow::bail!("no results are recorded for study {study_uid}");
    }
    println!("jnsc: {queued} result objects of study {study_uid} queued for delivery");
    Ok(())
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jnsc")
        .build()?;
    runtime.block_on(jnsc::node::serve(config, jnsc::node::shutdown_signal()))
}

fn analyze(args: &AnalyzeArgs) -> anyhow::Result<()> {
    use jnsc::inference::{Analyzer, tiles::Tiling};
    let mut tiling = Tiling::named(&args.tiling).map_err(anyhow::Error::msg)?;
    tiling.batch = args.batch;
    tiling.validate().map_err(anyhow::Error::msg)?;
    let device = jnsc::jnsc::device::select(&args.device)?;
    let model = jnsc::jnsc::model_file::ModelSource::from_option(args.model.clone());
    let mut analyzer = Analyzer::new(&model, device, tiling)?;
    if !args.classify_all {
        analyzer.classify_min_p_location = args.min_p_nodule;
    }
    let files = jnsc::volume::series::files_in(&args.dir)?;
    let analysis = analyzer.analyze(&files)?;
    let json = serde_json::to_string_pretty(&analysis.report)?;
    match &args.json {
        Some(path) => std::fs::write(path, json + "\n")?,
        None => println!("{json}"),
    }
    if let Some(dir) = &args.results {
        use anyhow::Context;
        use jnsc::results::{
            Equipment, ReportPolicy, build, read_summary, source::SourceStudy, write,
        };
        let first = files.first().context("the folder has no DICOM file")?;
        let source = SourceStudy::read(first, &analysis.volume.series)?;
        let policy = ReportPolicy {
            min_p_nodule: args.min_p_nodule,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_kept_by_the_allocator() {
        // SAFETY: reads and sets an integer option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc v3's default purge delay (options.c): the index names that option.
            assert_eq!(before, 1000);
        }
        keep_freed_memory();
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(after, -1);
        }
    }
}
