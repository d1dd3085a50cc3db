//! Bad input gets the proper DIMSE status or association reject/abort, is logged with its reason,
//! loses nothing already acknowledged, and never takes the process down.

mod common;

use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::pdu::PDataValueType;
use std::path::Path;
use std::time::Duration;

const SUCCESS: u16 = 0x0000;
const OUT_OF_RESOURCES: u16 = 0xA700;
const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
const CANNOT_UNDERSTAND: u16 = 0xC000;

/// A valid CT data set (explicit VR LE) and its SOP Instance UID, plus the object to alter.
fn valid_instance(dir: &Path, seed: u64) -> (Vec<u8>, String, InMemDicomObject) {
    let series = synth_series(dir, 1, 32, seed);
    let (bytes, ts) = data_set_of(&series.files[0]);
    assert_eq!(ts, EXPLICIT_VR_LE);
    let object = dicom_object::open_file(&series.files[0])
        .unwrap()
        .into_inner();
    (bytes, series.sop_instance_uids[0].clone(), object)
}

fn encode(object: &InMemDicomObject) -> Vec<u8> {
    let mut bytes = Vec::new();
    object
        .write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
    bytes
}

async fn failures(node: &Node) -> Vec<(Option<String>, i64, String)> {
    sqlx::query_as("SELECT sop_instance_uid, status, reason FROM store_failures ORDER BY id")
        .fetch_all(&node.db().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_data_sets_get_failure_statuses_and_the_association_goes_on() {
    let mut node = Node::process("");
    let (valid, sop_uid, object) = valid_instance(&node.dir.join("a"), 1);
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);

    // Bytes that are not DICOM at all.
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &garbage, 1000);
    assert_eq!(response.status, CANNOT_UNDERSTAND, "{response:?}");

    // A truncated data set: cut in the middle of the pixel data. (In fragments of 1000 bytes,
    // so that its file is begun from the first, before the data set is found short.)
    let response = scu.store(
        CT_IMAGE_STORAGE,
        &sop_uid,
        &valid[..valid.len() - 777],
        1000,
    );
    assert_eq!(response.status, CANNOT_UNDERSTAND, "{response:?}");

    // The data set is an MR image, sent on a CT presentation context (its file begun too).
    let mut mr = object.clone();
    mr.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(uids::MR_IMAGE_STORAGE),
    ));
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &encode(&mr), 1000);
    assert_eq!(
        response.status, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "{response:?}"
    );

    // The command announces another SOP class than the presentation context's.
    let response = scu.store(uids::MR_IMAGE_STORAGE, &sop_uid, &encode(&mr), 4000);
    assert_eq!(
        response.status, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "{response:?}"
    );

    // Required UIDs missing.
    let mut no_series = object.clone();
    no_series.remove_element(tags::SERIES_INSTANCE_UID);
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &encode(&no_series), 4000);
    assert_eq!(
        response.status, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "{response:?}"
    );
    assert!(
        response
            .error_comment
            .as_deref()
            .unwrap_or("")
            .contains("Series Instance UID"),
        "{response:?}"
    );

    // A UID that would escape the storage directory.
    let mut traversal = object.clone();
    traversal.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("../../../../tmp/evil"),
    ));
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &encode(&traversal), 4000);
    assert_eq!(
        response.status, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "{response:?}"
    );

    // The request and the data set disagree on the SOP Instance UID.
    let response = scu.store(CT_IMAGE_STORAGE, "1.2.3.4", &valid, 4000);
    assert_eq!(
        response.status, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "{response:?}"
    );

    // The association goes on: the valid instance is stored, with the message ID echoed back.
    scu.send_request(CT_IMAGE_STORAGE, &sop_uid, &valid, 3000, 777);
    let response = scu.read_response();
    assert_eq!(response.status, SUCCESS, "{response:?}");
    assert_eq!(response.message_id_being_responded_to, 777);
    scu.release();

    let logged = failures(&node).await;
    assert_eq!(logged.len(), 7, "{logged:?}");
    assert!(logged.iter().all(|(_, _, reason)| !reason.is_empty()));
    assert_eq!(
        logged.iter().map(|(_, s, _)| *s as u16).collect::<Vec<_>>(),
        [
            CANNOT_UNDERSTAND,
            CANNOT_UNDERSTAND,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        ]
    );
    let (ok, failed): (i64, i64) = sqlx::query_as(
        "SELECT instances_ok, failures FROM associations WHERE calling_ae = 'RAWSCU'",
    )
    .fetch_one(&node.db().await)
    .await
    .unwrap();
    assert_eq!((ok, failed), (1, 7));
    // Refused data sets whose files were begun while they arrived (the truncated one and the MR
    // image: their heads name a new CT instance) leave nothing behind.
    let instances = node.storage().join("instances");
    let left = eventually(Duration::from_secs(5), "the refused files removed", || {
        let files = files_under(&instances);
        async move { (files.len() == 1).then_some(files) }
    })
    .await;
    assert!(left[0].ends_with(format!("{sop_uid}.dcm")), "{left:?}");
    assert!(!node.storage().join("tmp/evil").exists());
    assert!(!Path::new("/tmp/evil").exists());
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn same_instance_twice_is_idempotent_and_a_different_object_is_kept_as_a_version() {
    let node = Node::start("");
    let (valid, sop_uid, object) = valid_instance(&node.dir.join("a"), 2);
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    // In fragments of 1000 bytes: each file is begun while its data set arrives, and for a
    // known SOP Instance UID the early writer declines, leaving it to the whole comparison.
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 1000).status,
        SUCCESS
    );
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 1000).status,
        SUCCESS
    );
    let mut changed = object.clone();
    changed.put(DataElement::new(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        PrimitiveValue::from("CORRECTED"),
    ));
    let changed = encode(&changed);
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &sop_uid, &changed, 1000).status,
        SUCCESS
    );
    scu.release();

    let db = node.db().await;
    let versions: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, path FROM instance_versions WHERE sop_instance_uid = ? ORDER BY version",
    )
    .bind(&sop_uid)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    let (current, version): (String, i64) =
        sqlx::query_as("SELECT path, version FROM instances WHERE sop_instance_uid = ?")
            .bind(&sop_uid)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((current.as_str(), version), (versions[1].1.as_str(), 2));
    // Both versions are on disk with their own content.
    let first = data_set_of(&node.storage().join(&versions[0].1)).0;
    let second = data_set_of(&node.storage().join(&versions[1].1)).0;
    assert_eq!(first, valid);
    assert_eq!(second, changed);
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_write_failure_gets_out_of_resources_and_loses_nothing() {
    let mut node = Node::process("");
    let (valid, sop_uid, object) = valid_instance(&node.dir.join("a"), 3);
    let study_uid = object
        .element(tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned();
    // A regular file where the study directory must go: the OS refuses to create it.
    let blocker = node.storage().join("instances").join(&study_uid);
    std::fs::write(&blocker, b"not a directory").unwrap();

    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 8000);
    assert_eq!(response.status, OUT_OF_RESOURCES, "{response:?}");
    let logged = failures(&node).await;
    assert_eq!(logged.len(), 1);
    assert!(logged[0].2.contains("cannot write"), "{logged:?}");
    let leftovers = std::process::Command::new("find")
        .arg(node.storage().join("instances"))
        .args(["-name", &format!("{sop_uid}*")])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "partial file left behind");

    // Once the disk is fixed, the retry succeeds on the same association.
    std::fs::remove_file(&blocker).unwrap();
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 8000);
    assert_eq!(response.status, SUCCESS, "{response:?}");
    scu.release();
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_list_rejects_unknown_callers_and_wrong_called_titles() {
    let node = Node::start(
        "allow_unknown_callers = false\n\
         [[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 11113",
    );
    let known = node.echoscu("PACS", "JNSC");
    assert!(known.status.success(), "{known:?}");
    let unknown = node.echoscu("INTRUDER", "JNSC");
    assert!(!unknown.status.success());
    let text = String::from_utf8_lossy(&unknown.stderr).to_lowercase()
        + &String::from_utf8_lossy(&unknown.stdout).to_lowercase();
    assert!(text.contains("calling ae title not recognized"), "{text}");
    let wrong_called = node.echoscu("PACS", "OTHER");
    assert!(!wrong_called.status.success());
    let text = String::from_utf8_lossy(&wrong_called.stderr).to_lowercase()
        + &String::from_utf8_lossy(&wrong_called.stdout).to_lowercase();
    assert!(text.contains("called ae title not recognized"), "{text}");

    // The rejection is logged right after the A-ASSOCIATE-RJ is sent: poll for it.
    let db = node.db().await;
    let rejected: Vec<(Option<String>, Option<String>, String)> =
        eventually(Duration::from_secs(10), "two logged rejections", || {
            let db = db.clone();
            async move {
                let rows: Vec<(Option<String>, Option<String>, String)> = sqlx::query_as(
                    "SELECT calling_ae, called_ae, reason FROM rejected_associations ORDER BY id",
                )
                .fetch_all(&db)
                .await
                .unwrap();
                (rows.len() >= 2).then_some(rows)
            }
        })
        .await;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].0.as_deref(), Some("INTRUDER"));
    assert!(rejected[0].2.contains("calling AE title not recognized"));
    assert_eq!(rejected[1].1.as_deref(), Some("OTHER"));
    assert!(rejected[1].2.contains("called AE title not recognized"));
}

#[tokio::test(flavor = "multi_thread")]
async fn associations_beyond_the_limit_are_rejected_as_transient() {
    let node = Node::start("max_associations = 1");
    let holder = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let refused = node.echoscu("TESTSCU", "JNSC");
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr).to_lowercase()
        + &String::from_utf8_lossy(&refused.stdout).to_lowercase();
    assert!(text.contains("local limit exceeded"), "{text}");
    holder.release();
    let accepted = eventually(Duration::from_secs(5), "a free slot", || async {
        node.echoscu("TESTSCU", "JNSC")
            .status
            .success()
            .then_some(())
    })
    .await;
    assert_eq!(accepted, ());
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_that_stops_mid_transfer_loses_nothing_acknowledged() {
    let mut node = Node::process("");
    let (valid, sop_uid, _) = valid_instance(&node.dir.join("a"), 4);
    let (second, second_uid, _) = valid_instance(&node.dir.join("b"), 5);
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 8000).status,
        SUCCESS
    );
    // Command and half of the data set, then the connection goes away.
    let command = jnsc::net::dimse::StoreRequest {
        message_id: 50,
        affected_sop_class_uid: CT_IMAGE_STORAGE,
        affected_sop_instance_uid: &second_uid,
    }
    .encode();
    scu.send_pdv(PDataValueType::Command, &command, true);
    scu.send_pdv(PDataValueType::Data, &second[..second.len() / 2], false);
    scu.drop_connection();

    let db = node.db().await;
    let (state, reason): (String, Option<String>) =
        eventually(Duration::from_secs(10), "the association to end", || {
            let db = db.clone();
            async move {
                sqlx::query_as(
                    "SELECT end_state, end_reason FROM associations
                     WHERE calling_ae = 'RAWSCU' AND end_state != 'open'",
                )
                .fetch_optional(&db)
                .await
                .unwrap()
            }
        })
        .await;
    assert_eq!(state, "connection_lost");
    assert!(reason.unwrap().contains("middle of a message"));
    let stored: Vec<String> = sqlx::query_scalar("SELECT sop_instance_uid FROM instances")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(stored, [sop_uid]);
    assert!(node.is_running());
    assert!(node.echoscu("TESTSCU", "JNSC").status.success());

    // The file begun for the half-sent data set is gone; sent again whole, the instance is
    // stored as new (its first version), not as a version of the half.
    let instances = node.storage().join("instances");
    eventually(Duration::from_secs(5), "the half-sent file removed", || {
        let files = files_under(&instances);
        async move { (files.len() == 1).then_some(()) }
    })
    .await;
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &second_uid, &second, 8000)
            .status,
        SUCCESS
    );
    scu.release();
    let (path, version): (String, i64) =
        sqlx::query_as("SELECT path, version FROM instances WHERE sop_instance_uid = ?")
            .bind(&second_uid)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(path.ends_with(&format!("{second_uid}.dcm")), "{path}");
    assert_eq!(version, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_configuration_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[dicom]\nmax_pdu = 10\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dicom.max_pdu"), "{stderr}");
}

/// An explicit VR little endian element header.
fn header(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN") {
        out.extend([0, 0]);
        out.extend(length.to_le_bytes());
    } else {
        out.extend((length as u16).to_le_bytes());
    }
    out
}

fn item(length: u32) -> Vec<u8> {
    let mut out = vec![0xFE, 0xFF, 0x00, 0xE0];
    out.extend(length.to_le_bytes());
    out
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM_END: [u8; 8] = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];
const SEQUENCE_END: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];

/// `depth` nested (0040,A730) sequences, of undefined or of defined lengths.
fn nested(depth: usize, defined: bool) -> Vec<u8> {
    if !defined {
        let mut out = Vec::new();
        for _ in 0..depth {
            out.extend(header(0x0040, 0xA730, b"SQ", UNDEFINED));
            out.extend(item(UNDEFINED));
        }
        for _ in 0..depth {
            out.extend(ITEM_END);
            out.extend(SEQUENCE_END);
        }
        return out;
    }
    let mut inner = Vec::new();
    for _ in 0..depth {
        let mut item_bytes = item(inner.len() as u32);
        item_bytes.extend(&inner);
        let mut sequence = header(0x0040, 0xA730, b"SQ", item_bytes.len() as u32);
        sequence.extend(item_bytes);
        inner = sequence;
    }
    inner
}

/// Defects found by a hostile probe: each of these used to abort the process (stack overflow),
/// reserve gigabytes for a length that never arrived, or be acknowledged as Success and stored
/// unreadable. Each is now refused with 0xC000 before it is parsed, memory stays bounded, and the
/// association goes on.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_structures_are_refused_before_parsing() {
    let mut node = Node::process("");
    let (valid, sop_uid, object) = valid_instance(&node.dir.join("a"), 3);
    let rss_before = node.peak_rss_mib();
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);

    // 2,000 nested sequences, both encodings of their lengths (42 KB; 1,500 used to be stored).
    for defined in [false, true] {
        let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &nested(2000, defined), 16000);
        assert_eq!(
            response.status, CANNOT_UNDERSTAND,
            "defined {defined}: {response:?}"
        );
    }
    // 14 bytes declaring a 4 GB element.
    let mut huge = header(0x0008, 0x0016, b"UN", 0xFFFF_FFF0);
    huge.extend(b"12");
    assert_eq!(huge.len(), 14);
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &huge, 4000);
    assert_eq!(response.status, CANNOT_UNDERSTAND, "{response:?}");

    // Native pixel data far shorter than rows x columns x 16 bits.
    let mut short = object.clone();
    short.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(vec![0u8; 1000]),
    ));
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &encode(&short), 4000);
    assert_eq!(response.status, CANNOT_UNDERSTAND, "{response:?}");
    assert!(
        response
            .error_comment
            .as_deref()
            .unwrap_or("")
            .contains("pixel data"),
        "{response:?}"
    );
    scu.send_request(CT_IMAGE_STORAGE, &sop_uid, &valid, 4000, 900);
    assert_eq!(scu.read_response().status, SUCCESS);
    scu.release();

    // Broken encapsulated pixel data on a JPEG 2000 context.
    let mut without_pixels = object.clone();
    without_pixels.remove_element(tags::PIXEL_DATA);
    let head = encode(&without_pixels);
    let encapsulated = |tail: &[u8]| {
        let mut out = head.clone();
        out.extend(header(0x7FE0, 0x0010, b"OB", UNDEFINED));
        out.extend(tail);
        out
    };
    let fragment = |bytes: &[u8]| {
        let mut out = item(bytes.len() as u32);
        out.extend(bytes);
        out
    };
    let codestream = [0xFF, 0x4F, 0xFF, 0x51, 0, 0, 0, 0];
    let whole = [fragment(&[]), fragment(&codestream), SEQUENCE_END.to_vec()].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no items at all", encapsulated(&SEQUENCE_END)),
        (
            "no sequence delimiter",
            encapsulated(&whole[..whole.len() - 8]),
        ),
        ("cut mid-fragment", encapsulated(&whole[..12])),
        (
            "a fragment of 0x7FFFFFF0 bytes",
            encapsulated(&[fragment(&[]), item(0x7FFF_FFF0), codestream.to_vec()].concat()),
        ),
    ];
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, uids::JPEG2000_LOSSLESS);
    for (what, data_set) in &cases {
        let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, data_set, 4000);
        assert_eq!(response.status, CANNOT_UNDERSTAND, "{what}: {response:?}");
    }
    scu.release();

    // A command set declaring a 4 GB element: refused, and the node does not reserve it.
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let mut command = vec![0x00, 0x00, 0x02, 0x00];
    command.extend(0xFFFF_FFF0u32.to_le_bytes());
    command.extend(b"1.2");
    scu.send_pdv(PDataValueType::Command, &command, true);
    drop(scu);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(node.is_running(), "the node died:\n{}", node.log());
    let rss_after = node.peak_rss_mib();
    eprintln!("peak RSS of the node: {rss_before:.0} MiB before, {rss_after:.0} MiB after");
    assert!(
        rss_after - rss_before < 256.0,
        "peak RSS grew from {rss_before:.0} to {rss_after:.0} MiB"
    );
    let echo = node.echoscu("ECHOSCU", "JNSC");
    assert!(echo.status.success(), "{echo:?}");
    let log = node.log();
    // An association may be aborted (the command set is refused that way); the process never.
    for word in ["panic", "overflow", "fatal", "abort"] {
        assert!(
            !log.lines()
                .any(|l| l.contains(word) && !(word == "abort" && l.contains("association"))),
            "{word} in the log:\n{log}"
        );
    }
}

/// Connections that never send an A-ASSOCIATE-RQ are closed after `associate_timeout_secs`
/// instead of holding a slot for the read timeout, and one host cannot hold every slot.
#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_do_not_hold_slots_and_one_host_cannot_take_them_all() {
    use std::io::Read;
    // A read timeout of 60 s: only the 1 s A-ASSOCIATE-RQ timeout can close a silent socket
    // within the 10 s the test waits on it.
    let dir = tempfile::Builder::new()
        .prefix("jnsc-test-")
        .tempdir()
        .unwrap()
        .keep();
    let config = dir.join("jnsc.toml");
    std::fs::write(
        &config,
        format!(
            "[dicom]\nlisten = \"127.0.0.1:0\"\nread_timeout_secs = 60\nmax_associations = 4\n\
             max_associations_per_host = 2\nassociate_timeout_secs = 1\n\
             [storage]\ndir = \"{}\"\n[status]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let node = Node::start_with_config(&dir, &config);
    // Two silent sockets take this host's two slots...
    let silent: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = node.echoscu("ECHOSCU", "JNSC");
    assert!(
        !refused.status.success(),
        "a third association from the same host was accepted"
    );
    // ...until the node closes them: end of stream, not our read timing out.
    for mut socket in silent {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        match socket.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("the node sent something to a silent socket"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a silent socket still held after 10 s: {e}"),
        }
    }
    let echo = node.echoscu("ECHOSCU", "JNSC");
    assert!(echo.status.success(), "{echo:?}");
    // (The node gives a slot back just after the release.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two real associations from this host are allowed, a third is refused as transient.
    let first = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let second = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let third = node.echoscu("ECHOSCU", "JNSC");
    assert!(!third.status.success());
    let text = String::from_utf8_lossy(&third.stderr).to_string()
        + &String::from_utf8_lossy(&third.stdout);
    assert!(
        text.contains("Transient") || text.contains("transient"),
        "{text}"
    );
    first.release();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = node.echoscu("ECHOSCU", "JNSC");
    assert!(again.status.success(), "{again:?}");
    second.release();
}

/// A second node started on a storage directory in use stops before touching it: no recovery,
/// no quarantine, and the first node goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_on_the_same_storage_stops_before_touching_it() {
    let mut node = Node::process("");
    let config = node.dir.join("second.toml");
    std::fs::write(
        &config,
        format!(
            "[dicom]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = \"{}\"\n[status]\nlisten = \"127.0.0.1:0\"\n",
            node.storage().display()
        ),
    )
    .unwrap();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another jnsc node"), "{stderr}");
    assert!(!stderr.contains("recovery"), "{stderr}");
    assert!(!node.storage().join("quarantine").exists());
    assert!(node.is_running());
    let echo = node.echoscu("ECHOSCU", "JNSC");
    assert!(echo.status.success(), "{echo:?}");
}

/// Text that is not what PS3.5 allows is refused: a UID with a leading-zero component gets
/// 0xA900, and an AE title with a control character (which could forge a log line) is rejected
/// at association time.
#[tokio::test(flavor = "multi_thread")]
async fn uids_and_ae_titles_follow_ps3_5() {
    let node = Node::process("");
    let (_valid, sop_uid, object) = valid_instance(&node.dir.join("a"), 5);
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let mut zero = object.clone();
    zero.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.03"),
    ));
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &encode(&zero), 4000);
    assert_eq!(
        response.status, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "{response:?}"
    );
    let logged = failures(&node).await;
    assert!(
        logged
            .iter()
            .any(|(_, _, reason)| reason.contains("leading zero")),
        "{logged:?}"
    );
    scu.release();

    let forged = "FORGED\nINFO";
    let attempt = dicom_ul::association::client::ClientAssociationOptions::new()
        .calling_ae_title(forged)
        .called_ae_title("JNSC")
        .with_presentation_context(uids::VERIFICATION, vec![EXPLICIT_VR_LE])
        .establish(("127.0.0.1", node.port));
    // Refused by the node (not by the client library): calling AE title not recognised.
    match attempt {
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => assert_eq!(
            association_rj.source,
            dicom_ul::pdu::AssociationRJSource::ServiceUser(
                dicom_ul::pdu::AssociationRJServiceUserReason::CallingAETitleNotRecognized
            )
        ),
        other => panic!("an AE title with a newline: {other:?}"),
    }
    let log = node.log();
    assert!(
        !log.lines().any(|l| l.starts_with("INFO")),
        "a forged log line:\n{log}"
    );
}

/// A stored file deleted by hand does not make its SOP Instance UID unstorable: the next send is
/// stored again (as the next version), and the index points at a file that exists.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_file_deleted_by_hand_can_be_stored_again() {
    let node = Node::start("");
    let (valid, sop_uid, _) = valid_instance(&node.dir.join("a"), 6);
    let mut scu = node.raw_scu(CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 8000).status,
        SUCCESS
    );
    // The index row follows the answer (and is in by the release).
    let path_of = |db: sqlx::SqlitePool| {
        let uid = sop_uid.clone();
        eventually(Duration::from_secs(10), "the instance indexed", move || {
            let (db, uid) = (db.clone(), uid.clone());
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT path FROM instances WHERE sop_instance_uid = ?",
                )
                .bind(uid)
                .fetch_optional(&db)
                .await
                .unwrap()
            }
        })
    };
    let first = path_of(node.db().await).await;
    std::fs::remove_file(node.storage().join(&first)).unwrap();
    let response = scu.store(CT_IMAGE_STORAGE, &sop_uid, &valid, 8000);
    assert_eq!(response.status, SUCCESS, "{response:?}");
    scu.release();
    let second = path_of(node.db().await).await;
    assert!(node.storage().join(&second).is_file(), "{second}");
    assert_eq!(
        jnsc::store::files::FileStore::read_data_set(&node.storage().join(&second)).unwrap(),
        valid
    );
}

/// A-ASSOCIATE-RQs that break PS3.8 9.3.2.2 (no presentation context, an even or a repeated
/// presentation context ID) are answered with A-ABORT (invalid PDU parameter value), not
/// negotiated; a valid one still gets its A-ASSOCIATE-AC.
#[tokio::test(flavor = "multi_thread")]
async fn presentation_contexts_follow_ps3_8() {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    use std::io::{Read, Write};
    let node = Node::start("");
    let request = |ids: &[u8]| {
        let rq = dicom_ul::Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "RAW".into(),
            called_ae_title: "JNSC".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: ids
                .iter()
                .map(|&id| PresentationContextProposed {
                    id,
                    abstract_syntax: uids::VERIFICATION.into(),
                    transfer_syntaxes: vec![uids::IMPLICIT_VR_LITTLE_ENDIAN.into()],
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        });
        let mut bytes = Vec::new();
        dicom_ul::write_pdu(&mut bytes, &rq).unwrap();
        bytes
    };
    let answer = |bytes: Vec<u8>| {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket.write_all(&bytes).unwrap();
        let mut first = [0u8; 1];
        socket.read_exact(&mut first).unwrap();
        first[0]
    };
    const ASSOCIATE_AC: u8 = 0x02;
    const ABORT: u8 = 0x07;
    assert_eq!(answer(request(&[1, 3])), ASSOCIATE_AC);
    for ids in [&[][..], &[2][..], &[1, 1][..], &[1, 3, 3][..]] {
        assert_eq!(answer(request(ids)), ABORT, "contexts {ids:?}");
    }
    // (Logged just after the A-ABORT is sent.)
    let db = node.db().await;
    eventually(Duration::from_secs(10), "4 refusals logged", || {
        let db = db.clone();
        async move {
            let refused: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM rejected_associations \
                 WHERE reason LIKE '%invalid A-ASSOCIATE-RQ%'",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (refused == 4).then_some(())
        }
    })
    .await;
    let echo = node.echoscu("ECHOSCU", "JNSC");
    assert!(echo.status.success(), "{echo:?}");
}

/// The fuzz harness's mutations of real data sets (WG04 in every accepted encoding, and the other
/// CT files of ../shared/data/ct), sent over real associations, one per transfer syntax: each is
/// answered with a documented status, the node stays up (C-ECHO after every 50), its peak RSS
/// stays bounded, and nothing in its log says panic.
#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_data_sets_over_real_associations_get_documented_statuses() {
    use jnsc::fuzz::{Target, mutations, seeds};
    use jnsc::net::presentation::TRANSFER_SYNTAXES;
    const PER_TRANSFER_SYNTAX: usize = 60;
    let corpus = shared_or_skip!("data/ct");
    let mut node = Node::process("");
    let all = seeds(Target::DataSet, Some(&corpus));
    let rss_before = node.peak_rss_mib();
    let mut statuses = std::collections::BTreeMap::new();
    let mut sent = 0;
    for (ts, _) in TRANSFER_SYNTAXES {
        let group: Vec<_> = all
            .iter()
            .filter(|s| s.transfer_syntax == *ts)
            .cloned()
            .collect();
        if group.is_empty() {
            continue;
        }
        let uid_of = |bytes: &[u8]| {
            jnsc::store::instance::parse_data_set(bytes, ts)
                .map(|a| a.sop_instance_uid.to_string())
                .unwrap_or_else(|_| "1.2.3.4".into())
        };
        let uids: Vec<String> = group.iter().map(|s| uid_of(&s.bytes)).collect();
        let mut scu = node.raw_scu(CT_IMAGE_STORAGE, ts);
        for (i, (from, data_set)) in mutations(&group, PER_TRANSFER_SYNTAX, 11)
            .into_iter()
            .enumerate()
        {
            let response = scu.store(CT_IMAGE_STORAGE, &uids[from], &data_set, 16000);
            assert!(
                [
                    SUCCESS,
                    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    CANNOT_UNDERSTAND
                ]
                .contains(&response.status),
                "{ts} input {i}: {response:?}"
            );
            *statuses.entry(response.status).or_insert(0) += 1;
            sent += 1;
            if sent % 50 == 0 {
                let echo = node.echoscu("ECHOSCU", "JNSC");
                assert!(echo.status.success(), "after {sent} inputs: {echo:?}");
            }
        }
        scu.release();
    }
    assert!(sent >= 4 * PER_TRANSFER_SYNTAX, "only {sent} inputs");
    assert!(node.is_running(), "the node died:\n{}", node.log());
    let echo = node.echoscu("ECHOSCU", "JNSC");
    assert!(echo.status.success(), "{echo:?}");
    let rss_after = node.peak_rss_mib();
    let answered: Vec<String> = statuses
        .iter()
        .map(|(status, n)| format!("{status:#06X} x {n}"))
        .collect();
    eprintln!(
        "{sent} fuzzed data sets over real associations: {}; peak RSS {rss_before:.0} MiB \
         before, {rss_after:.0} MiB after",
        answered.join(", ")
    );
    assert!(statuses.len() >= 2, "{statuses:?}");
    assert!(
        rss_after - rss_before < 512.0,
        "peak RSS grew from {rss_before:.0} to {rss_after:.0} MiB"
    );
    let log = node.log();
    for word in ["panic", "overflow", "fatal"] {
        assert!(!log.contains(word), "{word} in the log:\n{log}");
    }
}
