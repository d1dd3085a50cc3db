//! A real PACS in the loop: Orthanc (Debian's `orthanc`) on loopback ports with the routing rule
//! the README tells a site to install (`deploy/orthanc/route-ct.lua`: forward stable CT series
//! to the node, nothing else). A CT study stored into Orthanc reaches the node through that rule;
//! the node's SEG and SR come back into the same study, read through Orthanc's REST API. A second,
//! changed analysis (the node restarted with another reporting limit, the series sent again from
//! Orthanc) adds a new revision that names the one it replaces, and nothing loops: the results
//! are never forwarded to the node, and each CT send gives one analysis.

mod common;

use common::{Node, STORESCU, eventually, free_port, http_request, small_study};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ORTHANC: &str = "/usr/sbin/Orthanc";
const ANALYSIS: Duration = Duration::from_secs(300);

/// An Orthanc server in a temporary directory, stopped when dropped.
struct Orthanc {
    http: u16,
    dicom: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Orthanc {
    /// Starts Orthanc with the routing rule; its modality "jnsc" is set by `point_at`.
    fn start() -> Orthanc {
        let dir = tempfile::Builder::new()
            .prefix("jnsc-orthanc-")
            .tempdir()
            .unwrap();
        let (http, dicom) = (free_port(), free_port());
        let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/orthanc/route-ct.lua");
        let config = json!({
            "Name": "ORTHANC",
            "StorageDirectory": dir.path().join("db"),
            "IndexDirectory": dir.path().join("db"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom,
            "DicomCheckCalledAet": false,
            "HttpPort": http,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomModalities": { "jnsc": ["JNSC", "127.0.0.1", 104] },
            "StableAge": 2,
            "LuaScripts": [lua],
            // Orthanc's default, and what most archives do: the first object under a UID stays.
            "OverwriteInstances": false,
            "Plugins": [],
        });
        let path = dir.path().join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("orthanc.log")).unwrap();
        let child = Command::new(ORTHANC)
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Orthanc runs (apt-get install orthanc)");
        let orthanc = Orthanc {
            http,
            dicom,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Orthanc did not start:\n{}",
                orthanc.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        orthanc
    }

    /// Points the modality "jnsc" at a node's DICOM port (as Orthanc Explorer's modality
    /// editor does).
    fn point_at(&self, node: &Node) {
        self.request(
            "PUT",
            "/modalities/jnsc",
            Some(&json!({ "AET": "JNSC", "Host": "127.0.0.1", "Port": node.port })),
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Vec<u8> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap());
        let (code, response) = http_request(self.http, method, path, body.as_deref(), None);
        assert!(
            (200..300).contains(&code),
            "{method} {path}: HTTP {code} {}",
            String::from_utf8_lossy(&response)
        );
        response
    }

    fn get(&self, path: &str) -> Value {
        serde_json::from_slice(&self.request("GET", path, None)).unwrap()
    }

    /// Every series Orthanc holds, expanded (MainDicomTags, Instances, ParentStudy).
    fn series(&self) -> Vec<Value> {
        self.get("/series?expand").as_array().unwrap().clone()
    }

    /// The series of `modality`, if Orthanc holds one.
    fn series_of(&self, modality: &str) -> Option<Value> {
        self.series()
            .into_iter()
            .find(|s| s["MainDicomTags"]["Modality"] == modality)
    }

    /// The Part 10 file of an instance (by Orthanc ID), saved into its directory.
    fn download(&self, id: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{id}.dcm"));
        std::fs::write(
            &path,
            self.request("GET", &format!("/instances/{id}/file"), None),
        )
        .unwrap();
        path
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SR instances Orthanc holds, with their SOP Instance UIDs, Instance Numbers and files.
fn srs(orthanc: &Orthanc) -> Vec<(String, i64, PathBuf)> {
    let Some(series) = orthanc.series_of("SR") else {
        return Vec::new();
    };
    series["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let id = id.as_str().unwrap();
            let tags = orthanc.get(&format!("/instances/{id}/simplified-tags"));
            let number = tags["InstanceNumber"].as_str().unwrap().parse().unwrap();
            let uid = tags["SOPInstanceUID"].as_str().unwrap().to_owned();
            (uid, number, orthanc.download(id))
        })
        .collect()
}

fn node_config(orthanc_dicom: u16, results: &str) -> String {
    format!(
        "[[dicom.peers]]\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {orthanc_dicom}\n\
         [pipeline]\nstable_age_secs = 2\n[results]\n{results}\n"
    )
}

/// The node's summary of the CT series' results.
fn summary(node: &Node, study_uid: &str, series_uid: &str) -> Value {
    let path = node
        .storage()
        .join("results")
        .join(study_uid)
        .join(series_uid)
        .join("results.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_routes_ct_to_the_node_and_holds_every_revision_of_its_results() {
    assert!(
        Path::new(ORTHANC).exists(),
        "{ORTHANC} missing: scripts/install-test-deps.sh installs Debian's orthanc"
    );
    let (_study_dir, study) = small_study(7, 3);
    let orthanc = Orthanc::start();
    let node = Node::start(&node_config(
        orthanc.dicom,
        "min_p_nodule = 0.3\nmax_findings = 4",
    ));
    orthanc.point_at(&node);

    // The scanner stores the CT into the PACS; the routing rule sends it to the node.
    let sent = Command::new(STORESCU)
        .args(["-aec", "ORTHANC", "-aet", "CT_SCANNER", "+sd", "127.0.0.1"])
        .arg(orthanc.dicom.to_string())
        .arg(&study)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let ct = orthanc.series_of("CT").expect("Orthanc holds the CT");
    let study_uid =
        orthanc.get(&format!("/studies/{}", ct["ParentStudy"].as_str().unwrap()))["MainDicomTags"]
            ["StudyInstanceUID"]
            .as_str()
            .unwrap()
            .to_owned();
    let series_uid = ct["MainDicomTags"]["SeriesInstanceUID"]
        .as_str()
        .unwrap()
        .to_owned();

    // SEG and SR come back into the same study.
    let first = eventually(ANALYSIS, "the SEG and SR in Orthanc", || {
        let both = orthanc.series_of("SEG").zip(orthanc.series_of("SR"));
        async move { both }
    })
    .await;
    for series in [&first.0, &first.1] {
        assert_eq!(
            series["ParentStudy"], ct["ParentStudy"],
            "results in another study"
        );
    }
    let one = srs(&orthanc);
    assert_eq!(one.len(), 1);
    let record = summary(&node, &study_uid, &series_uid);
    assert_eq!(one[0].0, record["sr"]["sop_instance_uid"].as_str().unwrap());
    assert_eq!(one[0].1, 1);
    let reported = record["findings"].as_array().unwrap().len();
    assert!(
        reported >= 2,
        "the first analysis reports several findings: {record}"
    );
    // What Orthanc holds is what the node wrote, and it passes the validators.
    let sr_file = &one[0].2;
    let object = dicom_object::open_file(sr_file).unwrap();
    assert_eq!(
        jnsc::attributes::text(&object, dicom_dictionary_std::tags::STUDY_INSTANCE_UID).as_deref(),
        Some(study_uid.as_str())
    );
    let dciodvfy = Command::new("/usr/bin/dciodvfy")
        .arg(sr_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dciodvfy.stderr).to_string()
        + &String::from_utf8_lossy(&dciodvfy.stdout);
    assert!(
        !text.lines().any(|l| l.starts_with("Error")),
        "dciodvfy on the SR in Orthanc:\n{text}"
    );

    // A changed analysis: the node now reports one finding at most, and the PACS administrator
    // sends the series again from Orthanc.
    let dir = node.stop();
    let node = Node::start_in(
        &dir,
        &node_config(orthanc.dicom, "min_p_nodule = 0.3\nmax_findings = 1"),
    );
    orthanc.point_at(&node);
    orthanc.request(
        "POST",
        "/modalities/jnsc/store",
        Some(&json!({ "Resources": [ct["ID"]], "Synchronous": true })),
    );
    let two = eventually(ANALYSIS, "the second SR in Orthanc", || {
        let all = srs(&orthanc);
        async move { (all.len() == 2).then_some(all) }
    })
    .await;
    let newest = two
        .iter()
        .find(|(_, number, _)| *number == 2)
        .expect("revision 2");
    let record = summary(&node, &study_uid, &series_uid);
    assert_eq!(newest.0, record["sr"]["sop_instance_uid"].as_str().unwrap());
    assert_eq!(record["findings"].as_array().unwrap().len(), 1);
    assert_eq!(record["predecessor"]["sop_instance_uid"], one[0].0.as_str());
    let object = dicom_object::open_file(&newest.2).unwrap();
    let predecessor = jnsc::attributes::first_item(
        &object,
        dicom_dictionary_std::tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
    )
    .and_then(|s| {
        jnsc::attributes::first_item(s, dicom_dictionary_std::tags::REFERENCED_SERIES_SEQUENCE)
    })
    .and_then(|s| {
        jnsc::attributes::first_item(s, dicom_dictionary_std::tags::REFERENCED_SOP_SEQUENCE)
    })
    .and_then(|s| {
        jnsc::attributes::text(s, dicom_dictionary_std::tags::REFERENCED_SOP_INSTANCE_UID)
    });
    assert_eq!(predecessor.as_deref(), Some(one[0].0.as_str()));
    // Both SEG revisions are there too, each referenced by its own SR.
    let segs = orthanc.series_of("SEG").unwrap();
    assert_eq!(segs["Instances"].as_array().unwrap().len(), 2);

    // Nothing loops: after well over Orthanc's and the node's stable ages, the node has
    // analysed the CT exactly twice and never received its own results.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let db = node.db().await;
    let jobs: Vec<(String, String)> = sqlx::query_as("SELECT series_uid, state FROM jobs")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter()
            .all(|(s, state)| s == &series_uid && state == "done"),
        "{jobs:?}"
    );
    let modalities: Vec<String> = sqlx::query_scalar("SELECT DISTINCT modality FROM series")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(modalities, ["CT"]);
    assert_eq!(srs(&orthanc).len(), 2, "a third SR appeared");
    assert!(
        orthanc.log().contains("route-ct: sending CT series"),
        "{}",
        orthanc.log()
    );
    node.stop();
}
