//! DICOM TLS end to end, against DCMTK built with OpenSSL. Certificates are made by the
//! `openssl` command for each run: a test CA, the node's certificate, a PACS's, a modality's
//! (client) and a rogue one signed by no trusted CA.
//! - Receiving: `storescu +tls` with a client certificate stores over the TLS listener (DCMTK's
//!   default profile, the non-downgrading BCP 195 one); an untrusted client certificate, a
//!   plain connection and a TLS 1.1 handshake are refused, and the refusals are logged.
//! - Delivering: results go to `storescp +tls` (which requires the node's client certificate);
//!   a destination with an untrusted certificate gets nothing, and the outbox says why.

mod common;

use common::{Node, STORESCU, eventually, free_port, small_study};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The files of a test PKI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("jnsc-pki-")
            .tempdir()
            .unwrap();
        let pki = Pki { dir };
        pki.ca("ca", "JNSC test CA");
        for name in ["node", "pacs", "modality"] {
            pki.leaf(name, "ca");
        }
        // A rogue CA nobody trusts, and a certificate it signed.
        pki.ca("rogue-ca", "Rogue CA");
        pki.leaf("rogue", "rogue-ca");
        pki
    }

    /// A self-signed CA: NAME.key and NAME.crt, with common name `cn`.
    fn ca(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// NAME.key and NAME.crt for localhost and 127.0.0.1, for servers and clients, signed by
    /// the CA `ca`.
    fn leaf(&self, name: &str, ca: &str) {
        std::fs::write(
            self.path("leaf.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `[dicom.tls]` with the node's certificate, trusting the test CA.
    fn node_section(&self, extra: &str) -> String {
        format!(
            "[dicom.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca = \"{}\"\n{extra}\n",
            self.arg("node.crt"),
            self.arg("node.key"),
            self.arg("ca.crt")
        )
    }
}

/// `storescu +tls` with the certificate NAME, trusting the test CA, to `port`.
fn storescu_tls(pki: &Pki, name: &str, port: u16, file: &Path) -> std::process::Output {
    Command::new(STORESCU)
        .args(["-aec", "JNSC", "-aet", "TESTSCU", "+tls"])
        .args([
            pki.arg(&format!("{name}.key")),
            pki.arg(&format!("{name}.crt")),
        ])
        .args(["+cf", &pki.arg("ca.crt")])
        .args(["127.0.0.1", &port.to_string()])
        .arg(file)
        .output()
        .expect("storescu runs")
}

fn one_ct_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    common::synth_series(dir.path(), 1, 64, 7);
    let mut files = jnsc::volume::series::files_in(dir.path()).unwrap();
    files.sort();
    let file = files.remove(0);
    (dir, file)
}

async fn stored_count(node: &Node) -> i64 {
    let db = node.db().await;
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM instances")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    n
}

async fn rejection_reasons(node: &Node) -> Vec<String> {
    let db = node.db().await;
    let reasons = sqlx::query_scalar("SELECT reason FROM rejected_associations")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    reasons
}

#[tokio::test]
async fn storescu_over_tls_with_client_certificates() {
    let pki = Pki::new();
    let node = Node::process(&format!(
        "[pipeline]\nanalyze = false\n{}",
        pki.node_section("listen = \"127.0.0.1:0\"\nrequire_client_certificate = true")
    ));
    let tls_port = node.tls_port.expect("the TLS listener's port");
    let (_keep, file) = one_ct_file();

    let out = storescu_tls(&pki, "modality", tls_port, &file);
    assert!(
        out.status.success(),
        "storescu +tls: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    assert_eq!(stored_count(&node).await, 1, "stored over TLS");

    // A client certificate no trusted CA signed: the handshake fails, nothing is stored.
    let out = storescu_tls(&pki, "rogue", tls_port, &file);
    assert!(!out.status.success(), "a rogue certificate was accepted");
    // Plain DICOM on the TLS port.
    let out = node.storescu(&["-to", "5"], &[&file]);
    assert!(out.status.success(), "the plain port still works");
    let plain_on_tls = Command::new(STORESCU)
        .args(["-aec", "JNSC", "-aet", "TESTSCU", "-to", "5", "-ta", "5"])
        .args(["127.0.0.1", &tls_port.to_string()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !plain_on_tls.status.success(),
        "plain DICOM on the TLS port"
    );

    // BCP 195: TLS 1.2 is spoken, TLS 1.1 is not (the client allows it at security level 0,
    // so only the node can be refusing it).
    let handshake = |version: &str| {
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{tls_port}")])
            .args([version, "-cipher", "DEFAULT@SECLEVEL=0"])
            .args([
                "-cert",
                &pki.arg("modality.crt"),
                "-key",
                &pki.arg("modality.key"),
            ])
            .args(["-CAfile", &pki.arg("ca.crt")])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let tls12 = handshake("-tls1_2");
    let text = String::from_utf8_lossy(&tls12.stdout);
    assert!(
        text.contains("Protocol: TLSv1.2") || text.contains("Protocol  : TLSv1.2"),
        "TLS 1.2 handshake:\n{text}"
    );
    let tls11 = handshake("-tls1_1");
    let text = String::from_utf8_lossy(&tls11.stdout);
    assert!(
        !tls11.status.success() && text.contains("Cipher is (NONE)"),
        "TLS 1.1 was negotiated:\n{text}"
    );

    let reasons = rejection_reasons(&node).await;
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("TLS handshake failed")),
        "refused handshakes are logged: {reasons:?}"
    );
    assert_eq!(stored_count(&node).await, 1, "nothing more stored over TLS");
    let log = node.log();
    assert!(!log.contains("panic"), "{log}");
    node.stop();
}

/// DCMTK storescp with TLS (requiring a client certificate by default) writing into a folder.
struct TlsPacs {
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsPacs {
    fn start(pki: &Pki, name: &str, port: u16) -> TlsPacs {
        let dir = tempfile::Builder::new()
            .prefix("jnsc-tls-pacs-")
            .tempdir()
            .unwrap();
        let child = Command::new("/usr/bin/storescp")
            .args(["-aet", "PACS", "+tls"])
            .args([
                pki.arg(&format!("{name}.key")),
                pki.arg(&format!("{name}.crt")),
            ])
            .args(["+cf", &pki.arg("ca.crt"), "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp runs");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        TlsPacs { child, dir }
    }

    fn received(&self) -> usize {
        std::fs::read_dir(self.dir.path()).unwrap().count()
    }
}

impl Drop for TlsPacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn results_are_delivered_over_tls_and_only_to_a_trusted_destination() {
    let pki = Pki::new();
    let (good_port, rogue_port) = (free_port(), free_port());
    let good = TlsPacs::start(&pki, "pacs", good_port);
    let rogue = TlsPacs::start(&pki, "rogue", rogue_port);
    let peer = |ae: &str, port: u16| {
        format!(
            "[[dicom.peers]]\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             dest_ae_title = \"PACS\"\ntls = true\ntls_server_name = \"localhost\"\n"
        )
    };
    let node = Node::process(&format!(
        "{}{}[pipeline]\nstable_age_secs = 1\n[sender]\nretry_base_secs = 1\n\
         retry_max_secs = 1\nmax_attempts = 2\n{}",
        peer("TESTSCU", good_port),
        peer("ROGUESCU", rogue_port),
        pki.node_section("")
    ));
    // Two studies: results of TESTSCU's go to the trusted PACS, ROGUESCU's to the rogue one.
    let mut studies = Vec::new();
    for (seed, calling) in [(11, "TESTSCU"), (12, "ROGUESCU")] {
        let (study, dicom) = small_study(seed, 1);
        let files = jnsc::volume::series::files_in(&dicom).unwrap();
        let out = Command::new(STORESCU)
            .args(["-aec", "JNSC", "-aet", calling])
            .args(["127.0.0.1", &node.port.to_string()])
            .args(&files)
            .output()
            .unwrap();
        assert!(out.status.success());
        studies.push(study);
    }

    // Both series are analysed; SEG and SR reach the trusted PACS over TLS.
    eventually(
        Duration::from_secs(600),
        "results at the TLS PACS",
        || async { (good.received() >= 2).then_some(()) },
    )
    .await;
    // The rogue destination fails its handshake twice, then the rows fail for good.
    let errors: Vec<String> = eventually(
        Duration::from_secs(600),
        "the rogue destination's rows failed",
        || async {
            let db = node.db().await;
            let rows: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT state, last_error FROM outbox WHERE source_ae = 'ROGUESCU'")
                    .fetch_all(&db)
                    .await
                    .unwrap();
            db.close().await;
            (!rows.is_empty() && rows.iter().all(|(state, _)| state == "failed"))
                .then(|| rows.into_iter().filter_map(|(_, e)| e).collect())
        },
    )
    .await;
    assert_eq!(
        rogue.received(),
        0,
        "nothing reached the untrusted destination"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.to_lowercase().contains("certificate")),
        "the outbox says why: {errors:?}"
    );
    let log = node.log();
    assert!(!log.contains("panic"), "{log}");
    node.stop();
}

#[test]
fn a_missing_certificate_stops_the_node_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jnsc.toml");
    std::fs::write(
        &config,
        format!(
            "[dicom]\nlisten = \"127.0.0.1:0\"\n[dicom.tls]\nlisten = \"127.0.0.1:0\"\n\
             certificate = \"{0}/none.crt\"\nprivate_key = \"{0}/none.key\"\n\
             [storage]\ndir = \"{0}/storage\"\n[status]\nlisten = \"127.0.0.1:0\"\n\
             [pipeline]\nanalyze = false\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("dicom.tls.certificate") && text.contains("none.crt"),
        "{text}"
    );
}
