//! The `jnsc` command line: `serve` runs the node; the other subcommands are tools around it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: jnsc::alloc::Allocator = jnsc::alloc::Allocator {};

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
    Synth(jnsc::synth::command::SynthArgs),
    /// Read a CT series folder, resample it to 1 mm and segment the lungs; print what was found
    /// and optionally write the volume and the mask as MetaImage (for 3D Slicer, ITK-SNAP).
    Volume(jnsc::volume::command::VolumeArgs),
    /// Model files.
    Model {
        #[command(subcommand)]
        which: ModelCommand,
    },
    /// Find nodules in one CT series folder: findings with malignancy as JSON (stdout or
    /// --json FILE), with the time of each stage.
    Analyze(jnsc::pipeline::analyze::AnalyzeArgs),
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
    /// Choose the model's operating point on the output of `eval studies` on validation
    /// studies: the lowest p(nodule) threshold with at most N reported false positives per
    /// scan; write a model file that carries it (its reporting threshold by default).
    OperatingPoint(jnsc::eval::operating_point::OperatingPointArgs),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a freshly initialised (untrained) model file, e.g. to start a training run.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// cpu or paper.
        #[arg(long, value_enum, default_value_t = jnsc::jnsc::network::Preset::Cpu)]
        preset: jnsc::jnsc::network::Preset,
        /// Override the encoder widths, e.g. 4,8,8,16,16.
        #[arg(long, value_delimiter = ',')]
        widths: Option<Vec<usize>>,
    },
    /// Write a model file that detects with one model's network and takes the benign and
    /// malignant classes from another's classification path (with that one's calibration).
    Combine {
        /// The model whose network detects: location map and p(non-nodule).
        #[arg(long)]
        detection: PathBuf,
        /// The model whose classification path gives p(benign) and p(malignant).
        #[arg(long)]
        malignancy: PathBuf,
        #[command(flatten)]
        written: WrittenModel,
        /// The fraction of a finding's peak at which its measured extent is cut (reported
        /// centre, size and segment), chosen for the detector's map on validation data.
        #[arg(long)]
        measure_fraction: Option<f32>,
    },
    /// Write the element-wise mean of two networks of one configuration (1/2 each; one trained
    /// on from the other), without the calibration, measure fraction or operating point of either.
    Average {
        /// The first model file (its provenance is kept, the second's added).
        #[arg(long)]
        first: PathBuf,
        #[arg(long)]
        second: PathBuf,
        #[command(flatten)]
        written: WrittenModel,
    },
}

/// The model file a `model` command writes, and the name and version written into it.
#[derive(clap::Args)]
struct WrittenModel {
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long)]
    version: String,
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
        device: jnsc::jnsc::device::DeviceSpec,
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
        device: jnsc::jnsc::device::DeviceSpec,
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
    /// Claims per second by 8 workers on one PostgreSQL queue (empty jobs), and on SQLite in
    /// the same run (scripts/bench-postgres.sh starts a scratch server).
    Queue {
        /// A postgres:// URL of the server (any database on it; the role must be allowed to
        /// create databases): each round runs on a fresh database.
        #[arg(long)]
        server: String,
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Ingest of one series by 2 receivers against 1, on one PostgreSQL index.
    Receivers {
        /// As for `bench queue`.
        #[arg(long)]
        server: String,
        #[command(flatten)]
        series: SeriesBench,
    },
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
    jnsc::alloc::configure();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => jnsc::node::serve_command(config.as_deref()),
        Command::Resend { study_uid, config } => jnsc::node::resend(&study_uid, config.as_deref()),
        Command::Synth(args) => jnsc::synth::command::run(args),
        Command::Analyze(args) => jnsc::pipeline::analyze::run(&args),
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
        Command::Eval {
            which: EvalCommand::OperatingPoint(args),
        } => jnsc::eval::operating_point::run(&args),
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
            device,
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
        Command::Bench {
            which:
                BenchCommand::Queue {
                    server,
                    jobs,
                    rounds,
                },
        } => jnsc::bench::nodes::queue(&server, jobs, rounds),
        Command::Bench {
            which: BenchCommand::Receivers { server, series: b },
        } => jnsc::bench::nodes::receivers(&server, b.slices, b.size, b.rounds),
        Command::Model {
            which:
                ModelCommand::Init {
                    out,
                    preset,
                    widths,
                },
        } => jnsc::jnsc::model_file::write_untrained(&out, preset, widths),
        Command::Model {
            which:
                ModelCommand::Average {
                    first,
                    second,
                    written: WrittenModel { out, name, version },
                },
        } => jnsc::jnsc::model_file::average(&first, &second, &out, &name, &version)
            .map(|info| {
                println!(
                    "wrote {} {} to {}: the mean of {} and {}",
                    info.name,
                    info.version,
                    out.display(),
                    first.display(),
                    second.display()
                )
            })
            .map_err(Into::into),
        Command::Model {
            which:
                ModelCommand::Combine {
                    detection,
                    malignancy,
                    written: WrittenModel { out, name, version },
                    measure_fraction,
                },
        } => jnsc::jnsc::model_file::combine(
            &detection,
            &malignancy,
            &out,
            &name,
            &version,
            measure_fraction,
        )
        .map(|info| {
            println!(
                "wrote {} {} to {}: detection from {}, malignancy from {}",
                info.name,
                info.version,
                out.display(),
                detection.display(),
                malignancy.display()
            )
        })
        .map_err(Into::into),
        Command::Bench {
            which: BenchCommand::Network { rounds, device },
        } => jnsc::bench::network(rounds, device),
        Command::Volume(args) => jnsc::volume::command::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jnsc: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
