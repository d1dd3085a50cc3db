//! The `jnsc` command line: `serve` runs the node; the other subcommands are tools around it.

use clap::{Parser, Subcommand};
use jnsc::config::Config;
use jnsc::synth::series::{SeriesSpec, write_ct_series};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the node: DICOM SCP, durable store, SQLite index, series completion.
    Serve {
        /// Configuration file (TOML); every key has a default.
        #[arg(long, env = "JNSC_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write a synthetic CT series (one DICOM file per slice) into a directory.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 40)]
        slices: usize,
        /// Rows and columns of each slice.
        #[arg(long, default_value_t = 256)]
        size: u16,
        #[arg(long, default_value_t = 0.7)]
        pixel_spacing: f64,
        #[arg(long, default_value_t = 1.25)]
        slice_spacing: f64,
    },
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
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Sends one CT series over loopback to this node and to DCMTK's storescp, in one run, and
    /// prints instances/second for both and their ratio.
    Ingest {
        #[arg(long, default_value_t = 300)]
        slices: usize,
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// Rounds per peer (alternating); the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Times series -> volume -> 1 mm for a synthetic series, and SimpleITK doing the same in
    /// the same run; prints both and the ratio.
    Volume {
        #[arg(long, default_value_t = 300)]
        slices: usize,
        #[arg(long, default_value_t = 512)]
        size: u16,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Synth {
            out,
            seed,
            slices,
            size,
            pixel_spacing,
            slice_spacing,
        } => {
            let spec = SeriesSpec {
                slices,
                rows: size,
                columns: size,
                pixel_spacing_mm: pixel_spacing,
                slice_spacing_mm: slice_spacing,
                seed,
                ..SeriesSpec::default()
            };
            write_ct_series(&spec, &out)
                .map(|written| {
                    println!(
                        "wrote {} slices of series {} to {}",
                        written.files.len(),
                        written.series_uid,
                        out.display()
                    )
                })
                .map_err(anyhow::Error::from)
        }
        Command::Bench {
            which:
                BenchCommand::Ingest {
                    slices,
                    size,
                    rounds,
                },
        } => jnsc::bench::ingest(slices, size, rounds),
        Command::Bench {
            which:
                BenchCommand::Volume {
                    slices,
                    size,
                    rounds,
                },
        } => jnsc::bench::volume(slices, size, rounds),
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
    runtime.block_on(jnsc::node::serve(config))
}
