//! A measurement prototype, not the node: how fast could a receive path with a thread per
//! association go on this machine, if it still made every instance durable before answering?
//!
//! Each association gets its own thread doing blocking reads (dicom-ul's synchronous server),
//! as `storescp` does. Each data fragment is appended to the instance's file as it arrives (the
//! node's `IncomingFile`: its directory synced at creation, its write-back started every 256
//! KiB), the data set is parsed as the node parses it, and the file is committed (sealed and
//! synced) before the C-STORE-RSP. There is no index, no validation beyond the parse, no access
//! policy, and any failure ends the association: an upper bound for the node's design, run by
//! `scripts/blocking-scp-ceiling.sh` beside `storescp` and the node.
//!
//!     cargo run --release --example blocking_scp -- PORT STORAGE_DIR

use dicom_dictionary_std::uids::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_ul::association::server::ServerAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use jnsc::net::dimse::{Command, Response, command_field, status};
use jnsc::store::files::{FileStore, IncomingFile};
use jnsc::store::instance::parse_data_set;
use std::error::Error;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, storage] = args.as_slice() else {
        return Err("usage: blocking_scp PORT STORAGE_DIR".into());
    };
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))?;
    let files = Arc::new(FileStore::open(Path::new(storage), Path::new(""))?);
    println!("listening on {port}");
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("cannot accept a connection: {e}");
                continue;
            }
        };
        let files = Arc::clone(&files);
        std::thread::spawn(move || match serve(stream, &files) {
            Ok(stored) => eprintln!("association released: {stored} instances"),
            Err(e) => eprintln!("association ended: {e}"),
        });
    }
    Ok(())
}

/// Serves one association until its release; returns how many instances it stored.
fn serve(stream: TcpStream, files: &FileStore) -> Result<u64, Box<dyn Error>> {
    stream.set_nodelay(true)?;
    let mut association = ServerAssociationOptions::new()
        .accept_any()
        .ae_title("JNSC")
        .max_pdu_length(65_536)
        .promiscuous(true)
        .with_transfer_syntax(IMPLICIT_VR_LITTLE_ENDIAN)
        .with_transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
        .establish(stream)?;
    let contexts: Vec<(u8, String, String)> = association
        .presentation_contexts()
        .iter()
        .map(|pc| {
            let uid = |s: &str| s.trim_end_matches('\0').to_owned();
            (pc.id, uid(&pc.abstract_syntax), uid(&pc.transfer_syntax))
        })
        .collect();
    let mut command_bytes = Vec::new();
    let mut command: Option<Command> = None;
    let mut data_set = Vec::new();
    let mut file: Option<IncomingFile> = None;
    let mut stored = 0;
    loop {
        let values = match association.receive()? {
            Pdu::PData { data } => data,
            Pdu::ReleaseRQ => {
                association.send(&Pdu::ReleaseRP)?;
                return Ok(stored);
            }
            other => return Err(format!("unexpected PDU {other:?}").into()),
        };
        for value in values {
            if value.value_type == PDataValueType::Command {
                command_bytes.extend_from_slice(&value.data);
                if value.is_last {
                    command = Some(Command::parse(&command_bytes)?);
                    command_bytes.clear();
                }
                continue;
            }
            let request = command.as_ref().ok_or("a data set before its command")?;
            let (_, sop_class, transfer_syntax) = contexts
                .iter()
                .find(|(id, ..)| *id == value.presentation_context_id)
                .ok_or("an unknown presentation context")?;
            let sop_instance = request
                .affected_sop_instance_uid
                .as_deref()
                .ok_or("no Affected SOP Instance UID")?;
            let open = match file.as_mut() {
                Some(open) => open,
                None => {
                    let meta = FileMetaTableBuilder::new()
                        .media_storage_sop_class_uid(sop_class.as_str())
                        .media_storage_sop_instance_uid(sop_instance)
                        .transfer_syntax(transfer_syntax.as_str())
                        .build()?;
                    let relative = PathBuf::from(format!("instances/{sop_instance}.dcm"));
                    let mut created = files.create_incoming(&relative, &meta)?;
                    created.sync_directory()?;
                    file.insert(created)
                }
            };
            open.append(&value.data)?;
            data_set.extend_from_slice(&value.data);
            if !value.is_last {
                continue;
            }
            parse_data_set(&data_set, transfer_syntax)?;
            file.take().ok_or("no file")?.commit()?;
            data_set.clear();
            stored += 1;
            let response = Response {
                command_field: command_field::C_STORE_RSP,
                message_id_being_responded_to: request.message_id,
                affected_sop_class_uid: sop_class,
                affected_sop_instance_uid: Some(sop_instance),
                status: status::SUCCESS,
                error_comment: None,
            };
            association.send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: value.presentation_context_id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: response.encode(),
                }],
            })?;
            command = None;
        }
    }
}
