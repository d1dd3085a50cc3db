//! Benchmark commands. `bench ingest` sends the same CT series over loopback, with DCMTK's
//! `storescu`, to this node (fsync + SQLite index) and to DCMTK's `storescp` (writing files, no
//! fsync), in alternating rounds of one run, and prints instances/second for both and their ratio.
//!
//! DCMTK leaves Nagle's algorithm on unless the environment says `TCP_NODELAY=1`; on loopback
//! that costs it about 40 ms per instance (a delayed-ACK stall). Both settings are measured: DCMTK
//! as shipped, and DCMTK with `TCP_NODELAY=1` on both its sender and its receiver, its fastest.
//! Then the same series split over 4 associations at once (4 `storescu`; this `storescp` serves
//! one association at a time, as Debian builds it; for information, `storescp --fork`, a process
//! per association, is timed too: what receiving in parallel reaches on this machine without
//! fsync or index), and the durable-write limit: the node's own
//! file write (`FileStore::write_part10`: file and directory fsynced) of the same data sets,
//! alone, one after another, with no network and no index, measured before the rounds and after
//! them. The shared disks of these machines can slow down partway through a run (one round
//! writes about 1 GB, three about 3 GB): when the limit after is well under the limit before,
//! the later settings compared both tools on a slowed disk, and the run says so. Each round also
//! reads the receiver's CPU time (user + system, all its threads, from `/proc`) and prints it per
//! instance: the cost of the receive path, beside the rate. It is the steadier figure while the
//! disk is at its speed; in the slowed state the kernel's work on the page cache is charged to
//! the writer too (`storescp` went from 0.53-0.60 ms to 1.8 ms per instance in one such round).
//!
//! After the rounds, what durability before the answer leaves on one association: the sync of a
//! new file whose last PDU arrives last (the rest already on the disk), timed on the same data
//! sets, and the highest share of `storescp`'s rate that a receiver answering only after that
//! sync could reach, whatever else it did in no time.
//!
//! `bench queue` and `bench receivers` (in `nodes`) measure several nodes on one PostgreSQL
//! queue.

pub mod nodes;

use crate::jnsc::device::DeviceSpec;
use crate::synth::series::{SeriesSpec, write_ct_series};
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// DCMTK binaries, by absolute path: pynetdicom installs scripts of the same names.
const STORESCU: &str = "/usr/bin/storescu";
const STORESCP: &str = "/usr/bin/storescp";
const ECHOSCU: &str = "/usr/bin/echoscu";

/// Runs the ingest benchmark and prints its figures.
pub fn ingest(slices: usize, size: u16, rounds: usize) -> anyhow::Result<()> {
    for tool in [STORESCU, STORESCP, ECHOSCU] {
        if !Path::new(tool).exists() {
            bail!("{tool} not found: install DCMTK (apt-get install -y dcmtk)");
        }
    }
    let (work, data) = bench_series("ingest", slices, size)?;
    let bytes: u64 = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "series: {slices} slices of {size}x{size}, {:.1} MB, sent by {STORESCU} over loopback",
        bytes as f64 / 1e6
    );

    let files = crate::volume::series::files_in(&data)?;
    let limit_before = durable_write_rate(&work.join("fsync-before"), &files)?;
    let mut storescp_one = None;
    for (nodelay, associations) in [(false, 1), (true, 1), (true, PARALLEL_ASSOCIATIONS)] {
        let setting = match (nodelay, associations) {
            (false, _) => "DCMTK as shipped (Nagle on)".to_owned(),
            (true, 1) => "DCMTK with TCP_NODELAY=1".to_owned(),
            (true, n) => format!("{n} associations at once, TCP_NODELAY=1"),
        };
        println!("-- {setting}");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
        let mut forked = Vec::new();
        for round in 0..rounds {
            let tag = format!("{}-{associations}-{round}", u8::from(nodelay));
            let sending = Sending {
                files: &files,
                nodelay,
                associations,
            };
            let node = run_jnsc_round(&work.join(format!("jnsc-{tag}")), &sending)?;
            let dcmtk = run_storescp_round(&work.join(format!("storescp-{tag}")), &sending, false)?;
            if associations > 1 {
                let fork =
                    run_storescp_round(&work.join(format!("storescp-fork-{tag}")), &sending, true)?;
                println!(
                    "round {}: storescp --fork {:.1} inst/s",
                    round + 1,
                    fork.rate
                );
                forked.push(fork.rate);
            }
            println!(
                "round {}: jnsc {:.1} inst/s ({:.2} ms CPU per instance), storescp {:.1} inst/s \
                 ({:.2} ms)",
                round + 1,
                node.rate,
                node.cpu_ms,
                dcmtk.rate,
                dcmtk.cpu_ms
            );
            ours.push(node.rate);
            theirs.push(dcmtk.rate);
            our_cpu.push(node.cpu_ms);
            their_cpu.push(dcmtk.cpu_ms);
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        if (nodelay, associations) == (true, 1) {
            storescp_one = Some(theirs);
        }
        let (our_cpu, their_cpu) = (median(&mut our_cpu), median(&mut their_cpu));
        println!(
            "median: jnsc {ours:.1} inst/s (fsync + SQLite index), storescp {theirs:.1} inst/s; \
             receiver's CPU per instance: jnsc {our_cpu:.2} ms, storescp {their_cpu:.2} ms \
             ({:.1}x)",
            our_cpu / their_cpu
        );
        let target = if associations == 1 {
            "target >= 0.80"
        } else {
            "target > 1.00"
        };
        println!(
            "ratio jnsc/storescp ({setting}): {:.2} ({target})",
            ours / theirs
        );
        if !forked.is_empty() {
            let forked = median(&mut forked);
            println!(
                "for information: storescp --fork (a process per association, in parallel) \
                 {forked:.1} inst/s; jnsc/that {:.2}",
                ours / forked
            );
        }
    }
    println!(
        "-- the durable-write limit (the node's file write alone: file and directory fsynced)"
    );
    let mut limits: Vec<f64> = (0..rounds)
        .map(|round| durable_write_rate(&work.join(format!("fsync-{round}")), &files))
        .collect::<anyhow::Result<_>>()?;
    let limit_after = median(&mut limits);
    println!(
        "before the rounds: {limit_before:.1} inst/s; after them (median): {limit_after:.1} \
         inst/s written durably, one after another"
    );
    if limit_after < DISK_SLOWED * limit_before {
        println!(
            "the disk slowed during the run ({:.0}% of its rate before): the later settings \
             compared both tools on a slowed disk; run again later (fewer --rounds write \
             less) to see the disk at its speed",
            100.0 * limit_after / limit_before
        );
    }
    if let Some(storescp) = storescp_one {
        let sync_ms = last_pdu_sync_ms(&work.join("final-sync"), &files)?;
        let per_instance_ms = 1e3 / storescp;
        println!(
            "-- what answering only once the data are durable leaves on one association: the \
             sync of a new file whose last {} KiB (one PDU) arrived last, the rest already on \
             the disk, takes {sync_ms:.3} ms (median); after storescp's {per_instance_ms:.3} ms \
             per instance that is at most {:.2} of storescp's rate (target >= 0.80)",
            LAST_PDU_BYTES / 1024,
            per_instance_ms / (per_instance_ms + sync_ms)
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The bytes of an instance's data set that arrive last: one PDU of the node's default
/// `dicom.max_pdu`.
const LAST_PDU_BYTES: usize = 64 << 10;

/// The least a receiver that answers only once an instance is durable must wait after its last
/// byte: for the data set of every file in `files`, a new file under `dir` with all but its last
/// [`LAST_PDU_BYTES`] written and already on the disk, then those written and the file synced;
/// the median time of that sync, in ms. (The node's early writer starts the write-back as the
/// data set arrives; at best everything but the last PDU is on the disk when it ends.)
fn last_pdu_sync_ms(dir: &Path, files: &[PathBuf]) -> anyhow::Result<f64> {
    use crate::store::files::{FileStore, write_back_and_wait};
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut times = Vec::with_capacity(files.len());
    for (i, source) in files.iter().enumerate() {
        let data_set = FileStore::read_data_set(source)?;
        let (head, tail) = data_set.split_at(data_set.len().saturating_sub(LAST_PDU_BYTES));
        let mut file = std::fs::File::create(dir.join(format!("{i}.dcm")))?;
        file.write_all(head)?;
        write_back_and_wait(&file, head.len() as u64)?;
        let start = Instant::now();
        file.write_all(tail)?;
        file.sync_data()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut times))
}

/// A durable-write limit after the rounds under this fraction of the limit before them means
/// the disk slowed during the run.
const DISK_SLOWED: f64 = 0.7;

/// Associations of the parallel round.
const PARALLEL_ASSOCIATIONS: usize = 4;

/// How a round sends the series.
struct Sending<'a> {
    /// The series' files.
    files: &'a [PathBuf],
    nodelay: bool,
    /// The files are dealt round-robin to this many `storescu`, started at once.
    associations: usize,
}

/// The node's own durable file write (`FileStore::write_part10`) of the data set of every file
/// in `files`, one after another, into a fresh store under `dir`: instances per second.
fn durable_write_rate(dir: &Path, files: &[PathBuf]) -> anyhow::Result<f64> {
    use crate::store::files::FileStore;
    use dicom_dictionary_std::uids;
    let data_sets: Vec<Vec<u8>> = files
        .iter()
        .map(|f| FileStore::read_data_set(f))
        .collect::<std::io::Result<_>>()?;
    let store = FileStore::open(dir, std::path::Path::new(""))?;
    let meta = |i: usize| {
        crate::write::file_meta(
            uids::CT_IMAGE_STORAGE,
            &format!("2.25.{}", 1000 + i),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        )
        .build()
        .map_err(|e| anyhow::anyhow!("file meta: {e}"))
    };
    Command::new("sync").status()?;
    let start = Instant::now();
    for (i, data_set) in data_sets.iter().enumerate() {
        store.write_part10(Path::new(&format!("series/{i}.dcm")), &meta(i)?, data_set)?;
    }
    Ok(files.len() as f64 / start.elapsed().as_secs_f64())
}

/// A scratch folder for a benchmark and a synthetic series written into it.
fn bench_series(name: &str, slices: usize, size: u16) -> anyhow::Result<(PathBuf, PathBuf)> {
    let work = std::env::temp_dir().join(format!("jnsc-bench-{name}-{}", std::process::id()));
    let data = work.join("series");
    let spec = SeriesSpec {
        slices,
        rows: size,
        columns: size,
        ..SeriesSpec::default()
    };
    write_ct_series(&spec, &data)?;
    Ok((work, data))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one round measured of a receiver.
struct Round {
    /// Instances per second.
    rate: f64,
    /// The receiver's CPU time per instance, ms.
    cpu_ms: f64,
}

impl Round {
    /// Sends the series to `receiver` (listening on `port` as `called_ae`) and reads its CPU
    /// time around the sending.
    fn measure(
        sending: &Sending,
        called_ae: &str,
        port: u16,
        receiver: &Guard,
    ) -> anyhow::Result<Round> {
        let cpu_before = cpu_time(receiver.0.id())?;
        let rate = send(sending, called_ae, &[port])?;
        let cpu = cpu_time(receiver.0.id())?.saturating_sub(cpu_before);
        Ok(Round {
            rate,
            cpu_ms: cpu.as_secs_f64() * 1e3 / sending.files.len() as f64,
        })
    }
}

/// The CPU time (user + system) process `pid` has used so far, all its threads together
/// (`/proc/PID/stat`, in clock ticks).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read the CPU time of process {pid}"))?;
    // The fields after the command name (which may hold spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15.
    let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    let ticks = ticks.with_context(|| format!("unexpected /proc/{pid}/stat: {stat:?}"))?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("no clock tick rate (sysconf)");
    }
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn run_jnsc_round(dir: &Path, sending: &Sending) -> anyhow::Result<Round> {
    let (guard, port) = start_node(dir)?;
    Round::measure(sending, "JNSC", port, &guard)
}

/// Starts `jnsc serve` with its storage under `dir` (kept from an earlier start, if any) on a free
/// loopback port; returns the process (killed with SIGKILL when dropped) once it listens, and
/// the port.
fn start_node(dir: &Path) -> anyhow::Result<(Guard, u16)> {
    let storage = format!("dir = \"{}\"", dir.join("storage").display());
    start_node_with(dir, "", &storage)
}

/// Starts `jnsc serve` as `start_node` does, with `sections` added to its configuration and
/// `storage` as the keys of its `[storage]` section.
fn start_node_with(dir: &Path, sections: &str, storage: &str) -> anyhow::Result<(Guard, u16)> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("jnsc.toml");
    std::fs::write(
        &config,
        format!(
            "{sections}\n[dicom]\nlisten = \"127.0.0.1:0\"\n[storage]\n{storage}\n\
             [status]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n"
        ),
    )?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start jnsc serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .rsplit_once(" as AE ")
        .and_then(|(head, _)| head.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .with_context(|| format!("unexpected first line from jnsc serve: {line:?}"))?;
    Ok((guard, port))
}

/// `bench crash`: kill -9 during transfers. Each round starts the node on fresh storage and
/// sends a synthetic series with `storescu` (one association, files in order), kills the node
/// with SIGKILL at a random moment of the transfer, starts it again on the same storage (startup
/// recovery), and checks every instance `storescu` saw acknowledged (Success): indexed, and its
/// stored data set byte for byte the one sent. Prints acknowledged against present per round and
/// in all; fails when an acknowledged instance is missing or differs.
pub fn crash(rounds: usize, slices: usize, size: u16, seed: u64) -> anyhow::Result<()> {
    if !Path::new(STORESCU).exists() {
        bail!("{STORESCU} not found: install DCMTK (apt-get install -y dcmtk)");
    }
    let work = std::env::temp_dir().join(format!("jnsc-bench-crash-{}", std::process::id()));
    let spec = SeriesSpec {
        slices,
        rows: size,
        columns: size,
        ..SeriesSpec::default()
    };
    let series = write_ct_series(&spec, &work.join("series"))?;
    // One uninterrupted transfer: how long a whole one takes.
    let (guard, port) = start_node(&work.join("calibration"))?;
    let started = Instant::now();
    let (acknowledged, _) = store_until_killed(&series.files, port, None)?;
    let whole = started.elapsed();
    drop(guard);
    if acknowledged != slices {
        bail!("the uninterrupted transfer was acknowledged for {acknowledged} of {slices}");
    }
    println!(
        "{slices} slices of {size}x{size} in {:.2} s uninterrupted; {rounds} rounds killed at a \
         random moment of the transfer",
        whole.as_secs_f64()
    );
    let mut rng = crate::random::Rng::new(seed);
    let (mut total_acknowledged, mut total_present) = (0, 0);
    for round in 1..=rounds {
        let dir = work.join(format!("round-{round}"));
        let (guard, port) = start_node(&dir)?;
        let at = whole.mul_f64(rng.range(0.05, 0.95));
        let (acknowledged, _) = store_until_killed(&series.files, port, Some((guard, at)))?;
        // Start again on the same storage: recovery runs before the node listens.
        let (guard, _) = start_node(&dir)?;
        let check = check_stored(&dir.join("storage"), &series, acknowledged)?;
        drop(guard);
        println!(
            "round {round}: killed at {:.0} ms; acknowledged {acknowledged}, present and \
             identical {}, missing {}, differing {}; stored beyond the acknowledged {}; \
             quarantined {}",
            at.as_secs_f64() * 1000.0,
            check.identical,
            check.missing,
            check.differing,
            check.beyond,
            check.quarantined
        );
        total_acknowledged += acknowledged;
        total_present += check.identical;
    }
    println!(
        "in all: {total_present} of {total_acknowledged} acknowledged instances present, indexed \
         and byte-identical"
    );
    let _ = std::fs::remove_dir_all(&work);
    if total_present != total_acknowledged {
        bail!("acknowledged instances were lost");
    }
    Ok(())
}

/// Sends `files` with `storescu -v` in one association; with `kill`, the node's process is killed
/// (SIGKILL) that long after the transfer starts. Returns how many instances were acknowledged
/// with Success (storescu sends them one at a time, in order, so these are the first ones) and
/// storescu's log.
fn store_until_killed(
    files: &[PathBuf],
    port: u16,
    kill: Option<(Guard, Duration)>,
) -> anyhow::Result<(usize, String)> {
    let child = Command::new(STORESCU)
        .env("TCP_NODELAY", "1")
        .args(["-v", "-aec", "JNSC", "127.0.0.1", &port.to_string()])
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start storescu")?;
    if let Some((node, after)) = kill {
        std::thread::sleep(after);
        drop(node);
    }
    let out = child.wait_with_output()?;
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((acknowledged_by_storescu(&log), log))
}

/// How many instances a `storescu -v` log (stdout and stderr) shows acknowledged with Success.
pub fn acknowledged_by_storescu(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("Received Store Response (Success)"))
        .count()
}

/// What a storage directory holds of a sent series.
struct StoredCheck {
    identical: usize,
    missing: usize,
    differing: usize,
    beyond: usize,
    quarantined: usize,
}

/// Checks the first `acknowledged` instances of `series` in the index of `storage` and on disk.
fn check_stored(
    storage: &Path,
    series: &crate::synth::series::WrittenSeries,
    acknowledged: usize,
) -> anyhow::Result<StoredCheck> {
    use crate::encoding::part10_data_set;
    let db = storage.join("jnsc.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let indexed: Vec<(String, String)> = runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options).await?;
        let rows = sqlx::query_as("SELECT sop_instance_uid, path FROM instances")
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        anyhow::Ok(rows)
    })?;
    let paths: std::collections::HashMap<String, String> = indexed.into_iter().collect();
    let data_set = |bytes: &[u8]| part10_data_set(bytes).map(|(start, _)| bytes[start..].to_vec());
    let mut check = StoredCheck {
        identical: 0,
        missing: 0,
        differing: 0,
        beyond: 0,
        quarantined: 0,
    };
    for (i, (uid, file)) in series
        .sop_instance_uids
        .iter()
        .zip(&series.files)
        .enumerate()
    {
        let stored = paths
            .get(uid)
            .and_then(|p| std::fs::read(storage.join(p)).ok());
        match (i < acknowledged, stored) {
            (true, None) => check.missing += 1,
            (true, Some(stored)) => {
                if data_set(&stored).is_some()
                    && data_set(&stored) == data_set(&std::fs::read(file)?)
                {
                    check.identical += 1;
                } else {
                    check.differing += 1;
                }
            }
            (false, Some(_)) => check.beyond += 1,
            (false, None) => {}
        }
    }
    check.quarantined = std::fs::read_dir(storage.join("quarantine"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(check)
}

/// Times DCMTK's `storescp` receiving the series into `dir`: one association at a time, as it
/// runs by default, or with `fork` a process per association (whose CPU time is the children's,
/// not read: the round's `cpu_ms` is then the parent's alone).
fn run_storescp_round(dir: &Path, sending: &Sending, fork: bool) -> anyhow::Result<Round> {
    std::fs::create_dir_all(dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(STORESCP)
        .env("TCP_NODELAY", if sending.nodelay { "1" } else { "0" })
        .args(fork.then_some("--fork"))
        .arg("--output-directory")
        .arg(dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start storescp")?;
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new(ECHOSCU)
        .args(["127.0.0.1", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success()
    {
        if Instant::now() > deadline {
            bail!("storescp did not come up on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Round::measure(sending, "STORESCP", port, &guard)
}

/// Sends every file of the series, over `sending.associations` associations at once (the
/// files dealt round-robin, the associations dealt round-robin to `ports`); returns instances
/// per second.
fn send(sending: &Sending, called_ae: &str, ports: &[u16]) -> anyhow::Result<f64> {
    // Flush what earlier rounds left dirty, so it does not slow this round's fsyncs.
    Command::new("sync").status()?;
    let start = Instant::now();
    let senders: Vec<Child> = (0..sending.associations)
        .map(|part| {
            Command::new(STORESCU)
                .env("TCP_NODELAY", if sending.nodelay { "1" } else { "0" })
                .args(["-aec", called_ae, "127.0.0.1"])
                .arg(ports[part % ports.len()].to_string())
                .args(
                    sending
                        .files
                        .iter()
                        .skip(part)
                        .step_by(sending.associations),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start storescu")
        })
        .collect::<anyhow::Result<_>>()?;
    for mut sender in senders {
        let status = sender.wait()?;
        if !status.success() {
            bail!("storescu to {called_ae} on ports {ports:?} failed: {status}");
        }
    }
    Ok(sending.files.len() as f64 / start.elapsed().as_secs_f64())
}

/// The SimpleITK reference script (read + B-spline resample).
const SITK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sitk_resample.py");

/// Times series -> HU volume -> 1 mm (B-spline) for a synthetic series, here and with
/// SimpleITK in the same run, and prints both and the ratio.
pub fn volume(slices: usize, size: u16, rounds: usize) -> anyhow::Result<()> {
    use crate::volume::resample::{Interpolation, resample_isotropic};
    use crate::volume::series::{files_in, load_series};
    let (work, data) = bench_series("volume", slices, size)?;
    let files = files_in(&data)?;
    println!(
        "series: {slices} slices of {size}x{size} (0.7 mm pixels, 1.25 mm slices) -> 1 mm, cubic B-spline"
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..rounds {
        let start = Instant::now();
        let series = load_series(&files)?;
        let loaded = start.elapsed().as_secs_f64();
        let volume = resample_isotropic(&series, 1.0, Interpolation::BSpline);
        let total = start.elapsed().as_secs_f64();
        drop((series, volume));
        let out = Command::new("python3")
            .arg(SITK_SCRIPT)
            .arg(&data)
            .args(["--time", "--rounds", "1"])
            .output()
            .context("cannot run python3 (install SimpleITK: pip install SimpleITK)")?;
        if !out.status.success() {
            bail!(
                "SimpleITK reference failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let sitk: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        println!(
            "round {}: jnsc {total:.2} s (load {loaded:.2} s, resample {:.2} s), SimpleITK {sitk:.2} s",
            round + 1,
            total - loaded
        );
        ours.push(total);
        theirs.push(sitk);
    }
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    println!("median: jnsc {ours:.2} s, SimpleITK {theirs:.2} s");
    println!(
        "speed-up over SimpleITK: {:.2}x (target > 1)",
        theirs / ours
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The PyTorch peer of the network benchmark (same architecture and weights).
const TORCH_REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/jnsc_reference.py");

/// Times the network's forward pass and a forward+backward (training) step on one 64^3 patch,
/// and a larger forward tile, for both presets, and prints GFLOP/s of the convolutions; then
/// PyTorch (CPU, 2 threads) on the same architecture and weights, and the ratios.
pub fn network(rounds: usize, device: DeviceSpec) -> anyhow::Result<()> {
    use crate::jnsc::model_file::{ModelInfo, save};
    use crate::jnsc::network::{Config, Jnsc};
    use candle_core::{DType, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    let device = device.open()?;
    if device.is_cpu() {
        println!(
            "CPU {}, {} rayon threads (set RAYON_NUM_THREADS to change); gemm kernels: {}",
            cpu_model(),
            rayon::current_num_threads(),
            crate::jnsc::ops3d::GemmKernels::here()
        );
    } else {
        println!("{device:?}; the first round of each case is a warm-up and not counted");
    }
    let torch_device = if device.is_cpu() { "cpu" } else { "cuda" };
    // Issue 19's targets for the training step against PyTorch (the forward: 1.0 for both).
    for (name, config, training_target) in
        [("cpu", Config::cpu(), 1.0), ("paper", Config::paper(), 1.2)]
    {
        let map = VarMap::new();
        let net = Jnsc::new(&config, VarBuilder::from_varmap(&map, DType::F32, &device))?;
        let flops = conv_flops(&config, 64);
        let mut ours_64 = [0.0; 2];
        for (size, backward) in [(64usize, false), (64, true), (128, false)] {
            let x = Tensor::randn(0f32, 1.0, (1, 1, size, size, size), &device)?;
            let mut times = Vec::new();
            let warm_up = usize::from(!device.is_cpu());
            let mut dropout = crate::random::Rng::new(1);
            for round in 0..rounds + warm_up {
                let start = Instant::now();
                let out = net.segment(&x, backward.then_some(&mut dropout))?;
                if backward {
                    let _ = out.logits.sqr()?.mean_all()?.backward()?;
                } else {
                    let _ = out.logits.flatten_all()?.to_vec1::<f32>()?;
                }
                device.synchronize()?;
                if round >= warm_up {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
            let t = median(&mut times);
            if size == 64 {
                ours_64[usize::from(backward)] = t;
            }
            let work = flops * (size as f64 / 64.0).powi(3) * if backward { 3.0 } else { 1.0 };
            println!(
                "{name:>5} {size}^3 {:<16} {t:.3} s  ({:.1} GFLOP/s of convolution)",
                if backward {
                    "forward+backward"
                } else {
                    "forward"
                },
                work / t / 1e9
            );
        }
        let file = std::env::temp_dir().join(format!(
            "jnsc-bench-{name}-{}.safetensors",
            std::process::id()
        ));
        let info = ModelInfo {
            malignancy_calibration: None,
            malignancy_network: None,
            measure_fraction: None,
            operating_points: Vec::new(),
            name: format!("bench-{name}"),
            version: "0".into(),
            config: config.clone(),
            normalization: crate::volume::Normalization::default(),
            provenance: serde_json::json!({"bench": true}),
        };
        save(&file, &map, &info)?;
        let out = Command::new("python3")
            .arg(TORCH_REFERENCE)
            .arg(&file)
            .args(["--bench", "--size", "64", "--rounds", &rounds.to_string()])
            .args(["--device", torch_device])
            .output();
        let _ = std::fs::remove_file(&file);
        match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let time_of = |label: &str| -> Option<f64> {
                    text.lines()
                        .find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
                };
                if let (Some(f), Some(fb)) = (time_of("forward "), time_of("forward+backward ")) {
                    println!(
                        "{name:>5} 64^3 PyTorch forward {f:.3} s, forward+backward {fb:.3} s; \
                         jnsc/PyTorch time: forward {:.2}x (target <= 1.0), training step {:.2}x \
                         (target <= {training_target:.1})",
                        ours_64[0] / f,
                        ours_64[1] / fb
                    );
                }
            }
            _ => println!("{name:>5} PyTorch peer not run (pip install torch safetensors)"),
        }
    }
    Ok(())
}

/// The CPU's model name, from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "(model unknown)".into())
}

/// Multiply-adds x 2 of the network's k^3 convolutions for one cubic input of `size`.
fn conv_flops(config: &crate::jnsc::network::Config, size: usize) -> f64 {
    let k3 = config.kernel.pow(3) as f64;
    let mut total = 0.0;
    for level in 0..crate::jnsc::network::LEVELS {
        let voxels = ((size >> level) as f64).powi(3);
        let w = config.widths[level] as f64;
        let convs = config.convs_per_block[level] as f64;
        let input = if level == 0 { 1.0 } else { w };
        // Encoder block: first conv from `input`, the rest w -> w.
        total += 2.0 * voxels * k3 * w * (input + (convs - 1.0) * w);
        if level < crate::jnsc::network::LEVELS - 1 {
            // Decoder block: first conv 2w -> w, the rest w -> w.
            total += 2.0 * voxels * k3 * w * (2.0 * w + (convs - 1.0) * w);
        }
    }
    total
}

/// `bench analyze`: writes a synthetic chest study (3 nodules), or takes a real series, and runs
/// `jnsc analyze` on it in a fresh process per setting (so each peak memory is its own): the
/// paper's sliding window and the fast one, each classifying every finding, and the fast one
/// classifying only the findings that can be reported (the node's setting). Prints each stage's
/// time, the peak memory, the findings, those reported at the default threshold, and whether the
/// node's setting reports exactly what classifying every finding reports.
pub fn analyze(
    slices: usize,
    size: u16,
    model: Option<&Path>,
    device: DeviceSpec,
    batch: usize,
    series: Option<&Path>,
) -> anyhow::Result<()> {
    use crate::synth::calibration::Calibration;
    use crate::synth::render::Physics;
    use crate::synth::study::{StudyOptions, write_study};
    let work = std::env::temp_dir().join(format!("jnsc-bench-analyze-{}", std::process::id()));
    let options = StudyOptions {
        series: SeriesSpec {
            slices,
            rows: size,
            columns: size,
            seed: 11,
            ..SeriesSpec::default()
        },
        nodules: Some(3),
        physics: Physics::default(),
    };
    let dicom = match series {
        Some(dir) => dir.to_owned(),
        None => {
            write_study(&options, &Calibration::lidc(), &work)?;
            work.join("dicom")
        }
    };
    std::fs::create_dir_all(&work)?;
    let source = crate::jnsc::model_file::ModelSource::from_option(model.map(Path::to_owned));
    let what = match series {
        Some(dir) => dir.display().to_string(),
        None => format!(
            "synthetic study, {slices} slices of {size}x{size} (0.7 mm pixels, 1.25 mm slices), \
             3 nodules"
        ),
    };
    // What the node reports with this model: findings at or above the operating point the file
    // carries for the node's default analysis (fast tiling, the default mirrors), looked up as
    // the node looks it up; used for every setting below.
    let mut default_analysis = crate::inference::Analyzer::new(
        &source,
        candle_core::Device::Cpu,
        crate::jnsc::device::Precision::F32,
        crate::inference::tiles::Tiling::fast(),
    )
    .map_err(|e| anyhow::anyhow!("cannot load the model {source}: {e}"))?;
    default_analysis.classify_mirrors = crate::inference::DEFAULT_CLASSIFY_MIRRORS;
    default_analysis.classify_mirrors_from = crate::inference::DEFAULT_CLASSIFY_MIRRORS_FROM;
    let min_p_nodule = default_analysis
        .model_info()
        .operating_point(default_analysis.setting())
        .map(|o| o.min_p_nodule)
        .with_context(|| format!("{source} carries no operating point for the default analysis"))?;
    drop(default_analysis);
    println!(
        "{what}; model {}; device {device}; {} rayon threads; reported: p(nodule) >= \
         {min_p_nodule}",
        source,
        rayon::current_num_threads()
    );
    // The analysis' stages (writing results is the worker's, not `analyze`'s).
    let stages: Vec<&str> = crate::metrics::Stage::ALL
        .iter()
        .filter(|s| **s != crate::metrics::Stage::Results)
        .map(|s| s.name())
        .collect();
    println!(
        "{:<14} {}  {:>9} {:>8} {:>8}",
        "setting",
        stages
            .iter()
            .map(|s| format!("{s:>16}"))
            .collect::<String>(),
        "peak MiB",
        "findings",
        "reported"
    );
    let mut reported_sets = Vec::new();
    for (tiling, classify_all) in [("paper", true), ("fast", true), ("fast", false)] {
        let name = format!("{tiling}-{}", if classify_all { "all" } else { "node" });
        let json = work.join(format!("{name}.json"));
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("analyze")
            .arg(&dicom)
            .args(
                model
                    .map(|m| ["--model".as_ref(), m.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .args(["--device", &device.to_string(), "--tiling", tiling])
            .args(["--batch", &batch.to_string()])
            .arg("--json")
            .arg(&json);
        if classify_all {
            command.arg("--classify-all");
        }
        if !command.status()?.success() {
            bail!("jnsc analyze ({name}) failed");
        }
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        let t = &report["timings_ms"];
        let findings = report["findings"].as_array().cloned().unwrap_or_default();
        let reported: Vec<String> = findings
            .iter()
            .filter(|f| f["p_nodule"].as_f64().is_some_and(|p| p >= min_p_nodule))
            .map(|f| format!("{} {}", f["center_mm"], f["p_nodule"]))
            .collect();
        println!(
            "{name:<14} {}  {:>9.0} {:>8} {:>8}",
            stages
                .iter()
                .map(|s| format!("{:>14.2} s", t[*s].as_f64().unwrap_or(f64::NAN) / 1000.0))
                .collect::<String>(),
            report["peak_memory_mib"].as_f64().unwrap_or(f64::NAN),
            findings.len(),
            reported.len()
        );
        if tiling == "fast" {
            reported_sets.push(reported);
        }
    }
    println!(
        "fast tiling: the node's setting reports {} what classifying every finding reports",
        if reported_sets[0] == reported_sets[1] {
            "exactly"
        } else {
            "NOT"
        }
    );
    println!(
        "targets: the node's setting under 20 s on 2 CPU cores for a 300-slice chest, under 2 s \
         on a GPU; peak under 4096 MiB"
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU time read from `/proc` is the process's own: a shell counts (a few hundred ms of
    /// CPU), prints its own user and system time (`times`), closes its output and sleeps; what
    /// `cpu_time` reads then agrees with what the shell printed, to within a few clock ticks.
    #[test]
    fn cpu_time_is_what_the_process_itself_reports() {
        use std::io::Read;
        let mut child = Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; times; exec >&-; sleep 5",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut printed = String::new();
        // Until the shell closes its output: it has counted and printed its times.
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut printed)
            .unwrap();
        let guard = Guard(child);
        let read = cpu_time(guard.0.id()).unwrap();
        // The first line: the shell's own user and system time, as "0m0.250000s 0m0.000000s".
        let seconds = |field: &str| {
            let (minutes, seconds) = field.trim_end_matches('s').split_once('m').unwrap();
            minutes.parse::<f64>().unwrap() * 60.0 + seconds.parse::<f64>().unwrap()
        };
        let own: f64 = printed
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .map(seconds)
            .sum();
        assert!(
            own > 0.05,
            "the shell counted with {own} s of CPU: {printed:?}"
        );
        assert!(
            (read.as_secs_f64() - own).abs() < 0.03,
            "read {read:?} for a shell that reported {own} s of its own CPU"
        );
    }

    /// The final-sync measurement writes every data set whole (a short one, under one PDU, as
    /// well as ones of several PDUs), and reports a time.
    #[test]
    fn the_final_sync_measurement_writes_each_data_set_whole() {
        use crate::store::files::FileStore;
        let (work, data) = bench_series("final-sync-test", 3, 256).unwrap();
        let mut files = crate::volume::series::files_in(&data).unwrap();
        let (small_work, small_data) = bench_series("final-sync-test-small", 1, 64).unwrap();
        files.extend(crate::volume::series::files_in(&small_data).unwrap());
        let out = work.join("synced");
        let ms = last_pdu_sync_ms(&out, &files).unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{ms}");
        for (i, source) in files.iter().enumerate() {
            let expected = FileStore::read_data_set(source).unwrap();
            let written = std::fs::read(out.join(format!("{i}.dcm"))).unwrap();
            assert_eq!(written, expected, "file {i} ({} bytes)", expected.len());
        }
        assert!(FileStore::read_data_set(&files[0]).unwrap().len() > 2 * LAST_PDU_BYTES);
        assert!(FileStore::read_data_set(&files[3]).unwrap().len() < LAST_PDU_BYTES);
        let _ = std::fs::remove_dir_all(work);
        let _ = std::fs::remove_dir_all(small_work);
    }
}
