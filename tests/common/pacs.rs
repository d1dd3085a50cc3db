//! Peers that receive the node's results in tests: DCMTK `storescp` writing what it receives
//! into a folder, or a pynetdicom SCP that accepts CT Image Storage only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A peer that receives results: DCMTK storescp or a pynetdicom SCP.
pub struct Pacs {
    child: Child,
    dir: PathBuf,
    /// A marker per complete file of `dir` (storescp only).
    done: PathBuf,
    _keep: Option<tempfile::TempDir>,
}

impl Pacs {
    /// DCMTK storescp on `port`, writing what it receives into a fresh directory.
    pub fn dcmtk(port: u16) -> Pacs {
        let temporary = tempfile::Builder::new()
            .prefix("jnsc-pacs-")
            .tempdir()
            .unwrap();
        let dir = temporary.path().join("received");
        let done = temporary.path().join("done");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&done).unwrap();
        // storescp writes each file under its final name as the data arrive, so a file listed
        // in `dir` may be half written; once it is complete (saved and closed), storescp runs
        // the command, which leaves a marker of the same name in `done`.
        let child = Command::new("/usr/bin/storescp")
            .args(["-aet", "PACS", "-od"])
            .arg(&dir)
            .arg("--exec-sync")
            .arg("--exec-on-reception")
            .arg(format!("touch {}/#f", done.display()))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp runs");
        wait_listening(port);
        Pacs {
            child,
            dir,
            done,
            _keep: Some(temporary),
        }
    }

    /// A pynetdicom SCP that accepts CT Image Storage only.
    pub fn ct_only(port: u16) -> Pacs {
        let child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ct_only_scp.py"))
            .args([&port.to_string(), "PACS"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        wait_listening(port);
        Pacs {
            child,
            dir: PathBuf::new(),
            done: PathBuf::new(),
            _keep: None,
        }
    }

    /// The files it stored completely, sorted.
    pub fn received(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|file| {
            file.file_name()
                .is_some_and(|name| self.done.join(name).exists())
        });
        files.sort();
        files
    }
}

impl Drop for Pacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on loopback `port`.
pub fn wait_listening(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on port {port}");
}
