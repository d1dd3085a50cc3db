//! Mutation fuzzing, on stable Rust, of everything the node parses from the network.
//!
//! Targets ([`Target`]):
//! - `stream`: bytes as they arrive on an association. PDUs are read as the association reads
//!   them (`net::pdu::take_pdu`: P-DATA-TF by the node, the others by dicom-ul's reader); an
//!   A-ASSOCIATE-RQ's presentation contexts are checked as the listener checks them; P-DATA
//!   values are reassembled into messages
//!   (`association::Reassembly`), their command sets parsed and their data sets checked and
//!   parsed as C-STORE does (`store::instance::parse_data_set`).
//! - `command`: command sets alone (`dimse::Command::parse`).
//! - `data-set`: data sets alone, each with its transfer syntax (`parse_data_set`).
//! - `series`: the volume stage (`volume::prepare`: series -> HU -> 1 mm grid -> lung mask) on
//!   series that parse but whose geometry and pixel attributes are changed: rows, columns,
//!   frames, bits, pixel representation, photometric interpretation, spacing, position,
//!   orientation, rescale, padding and modality, set to boundary, negative, huge, NaN, wrong
//!   multiplicity or empty values in one slice or in all of them.
//!
//! Seeds: a synthetic CT slice and the messages the node exchanges, plus every DICOM file of
//! `../shared/data/ct` (the WG04 set: JPEG 2000, JPEG-LS, JPEG lossless, RLE, native) when it is
//! there. Each input is a seed changed by one to eight mutations: bit flips, interesting bytes,
//! 16- and 32-bit length fields overwritten with boundary values, truncation, deleted,
//! duplicated and inserted chunks, inserted item, delimiter and undefined-length sequence
//! headers, and splices of two seeds. The mutator knows DICOM's shapes but is not guided by
//! coverage, so a crash it does not reach in N executions may still exist.
//!
//! Every input must end in an answer (accepted or refused), never a panic. A panic is caught,
//! counted, and its input written to the crash folder. An abort (a stack overflow) cannot be
//! caught: with a crash folder, each input is first written there as `current-<target>.bin`.
//! `cargo test` runs a bounded number of executions per target; `jnsc bench fuzz` runs longer.

use crate::encoding::MAX_SEQUENCE_DEPTH;
use crate::net::association::Reassembly;
use crate::net::dimse::{Command, StoreRequest};
use crate::net::pdu::Incoming;
use crate::random::Rng;
use crate::store::instance::parse_data_set;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::DefaultDicomObject;
use dicom_ul::Pdu;
use dicom_ul::pdu::PDataValueType;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest PDU the stream target reads (the node's default `dicom.max_pdu`).
const MAX_PDU: u32 = 65536;
/// Inputs grow no larger than this.
const MAX_INPUT: usize = 4 << 20;
/// Presentation context of each transfer syntax in the stream target's seeds.
const STREAM_CONTEXTS: [(u8, &str); 2] = [
    (1, uids::EXPLICIT_VR_LITTLE_ENDIAN),
    (3, uids::IMPLICIT_VR_LITTLE_ENDIAN),
];

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Stream,
    Command,
    DataSet,
    Series,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Stream,
        Target::Command,
        Target::DataSet,
        Target::Series,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Stream => "stream",
            Target::Command => "command",
            Target::DataSet => "data-set",
            Target::Series => "series",
        }
    }
}

/// One seed: bytes and, for data sets, their transfer syntax.
#[derive(Debug, Clone)]
pub struct Seed {
    pub bytes: Vec<u8>,
    pub transfer_syntax: &'static str,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub executions: u64,
    /// Inputs the target accepted (parsed, or a complete association stream).
    pub accepted: u64,
    /// Inputs refused with an error (the node's answer: a failure status or an abort).
    pub refused: u64,
    /// Inputs that panicked (each written to the crash folder when there is one).
    pub panics: Vec<Vec<u8>>,
}

impl Tally {
    /// Counts one execution; for a panic, `keep(n)` (n: the execution's number) saves the input
    /// where it belongs and returns what the tally keeps of it.
    fn count(
        &mut self,
        outcome: std::thread::Result<bool>,
        keep: impl FnOnce(u64) -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<()> {
        self.executions += 1;
        match outcome {
            Ok(true) => self.accepted += 1,
            Ok(false) => self.refused += 1,
            Err(_) => self.panics.push(keep(self.executions)?),
        }
        Ok(())
    }
}

/// Runs `target` on mutations of `seeds` (none for the series target) until `budget` is spent:
/// a number of executions or a time. `crashes`: where panicking inputs (and the current input)
/// are written.
pub fn run(
    target: Target,
    seeds: &[Seed],
    budget: Budget,
    seed: u64,
    crashes: Option<&Path>,
) -> std::io::Result<Tally> {
    if let Some(dir) = crashes {
        std::fs::create_dir_all(dir)?;
    }
    if target == Target::Series {
        return run_series(budget, seed, crashes);
    }
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    while !budget.spent(tally.executions, started.elapsed()) {
        let base = &seeds[rng.below(seeds.len())];
        let mut input = base.bytes.clone();
        // A few untouched seeds first: they must be accepted as they are.
        if tally.executions >= seeds.len() as u64 {
            mutate(&mut input, &mut rng, seeds);
        }
        let transfer_syntax = base.transfer_syntax;
        if let Some(dir) = crashes {
            std::fs::write(dir.join(format!("current-{}.bin", target.name())), &input)?;
        }
        let outcome = std::panic::catch_unwind(|| execute(target, &input, transfer_syntax));
        tally.count(outcome, |n| {
            if let Some(dir) = crashes {
                std::fs::write(dir.join(format!("crash-{}-{n}.bin", target.name())), &input)?;
            }
            Ok(input)
        })?;
    }
    Ok(tally)
}

/// `count` inputs as a run with `seed` makes them: each a mutation of one of `seeds`, with the
/// index of that seed (for sending them over a real association in tests).
pub fn mutations(seeds: &[Seed], count: usize, seed: u64) -> Vec<(usize, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let from = rng.below(seeds.len());
            let mut input = seeds[from].bytes.clone();
            mutate(&mut input, &mut rng, seeds);
            (from, input)
        })
        .collect()
}

/// How long a run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Executions(u64),
    Time(Duration),
}

impl Budget {
    fn spent(self, executions: u64, elapsed: Duration) -> bool {
        match self {
            Budget::Executions(n) => executions >= n,
            Budget::Time(t) => elapsed >= t,
        }
    }
}

/// Runs one input through `target`; true when accepted. (The series target's inputs are
/// series, not bytes: see [`run_series`].)
fn execute(target: Target, input: &[u8], transfer_syntax: &str) -> bool {
    match target {
        Target::Command => Command::parse(input).is_ok(),
        Target::DataSet => parse_data_set(input, transfer_syntax).is_ok(),
        Target::Stream => stream(input),
        Target::Series => false,
    }
}

/// Reads `bytes` as an association stream; true when every PDU in it was read and every
/// message in it accepted.
fn stream(bytes: &[u8]) -> bool {
    let mut buffer = bytes::BytesMut::from(bytes);
    let mut messages = Reassembly::default();
    let mut accepted = true;
    while !buffer.is_empty() {
        let pdu = match crate::net::pdu::take_pdu(&mut buffer, MAX_PDU) {
            Ok(Some(pdu)) => pdu,
            Ok(None) | Err(_) => return false,
        };
        match pdu {
            Incoming::Other(Pdu::AssociationRQ(rq)) => {
                accepted &= crate::net::server::check_contexts(&rq.presentation_contexts).is_ok()
            }
            Incoming::PData(values) => {
                for pdv in values {
                    let context = pdv.presentation_context_id;
                    match messages.accept(pdv) {
                        Ok(Some(message)) => {
                            if let Some(data_set) = message.data_set {
                                let ts = STREAM_CONTEXTS
                                    .iter()
                                    .find(|(id, _)| *id == context)
                                    .map_or(uids::EXPLICIT_VR_LITTLE_ENDIAN, |(_, ts)| ts);
                                accepted &= parse_data_set(&data_set, ts).is_ok();
                            }
                        }
                        Ok(None) => {}
                        // The association is aborted: the rest of the stream is never read.
                        Err(_) => return false,
                    }
                }
            }
            Incoming::Other(_) => {}
        }
    }
    accepted && !messages.is_mid_message()
}

/// Changes `input` by one to eight mutations.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng, seeds: &[Seed]) {
    const BYTES: [u8; 6] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF];
    const U16: [u16; 5] = [0, 1, 0x7FFF, 0xFFFE, 0xFFFF];
    const U32: [u32; 7] = [0, 1, 2, 0x7FFF_FFF0, 0xFFFF_FFF0, 0xFFFF_FFFE, 0xFFFF_FFFF];
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(10) {
            0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => input[at.min(len - 1)] = BYTES[rng.below(BYTES.len())],
            2 if len >= 2 => {
                let at = at.min(len - 2);
                let v = U16[rng.below(U16.len())];
                input[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 4 => {
                let at = at.min(len - 4);
                let v = if rng.below(4) == 0 {
                    rng.below(len * 2 + 1) as u32
                } else {
                    U32[rng.below(U32.len())]
                };
                input[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            4 => input.truncate(at),
            5 if at < len => {
                let end = (at + 1 + rng.below(64)).min(len);
                input.drain(at..end);
            }
            6 if at < len => {
                let end = (at + 1 + rng.below(256)).min(len);
                let chunk = input[at..end].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            7 => {
                let chunk: Vec<u8> = (0..1 + rng.below(16))
                    .map(|_| rng.below(256) as u8)
                    .collect();
                input.splice(at..at, chunk);
            }
            8 => {
                let header = structure_header(rng);
                input.splice(at..at, header);
            }
            9 => {
                let other = &seeds[rng.below(seeds.len())].bytes;
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    input.truncate(MAX_INPUT);
}

/// An item, item delimiter, sequence delimiter or undefined-length sequence header, repeated a
/// few times or far beyond the nesting limit.
fn structure_header(rng: &mut Rng) -> Vec<u8> {
    let one: Vec<u8> = match rng.below(4) {
        0 => [0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF].to_vec(),
        1 => [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0].to_vec(),
        2 => [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0].to_vec(),
        _ => {
            // (0040,A730) SQ, undefined length, then an undefined-length item.
            let mut h = vec![
                0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ];
            h.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
            h
        }
    };
    let times = if rng.below(8) == 0 {
        MAX_SEQUENCE_DEPTH * 4
    } else {
        1 + rng.below(3)
    };
    one.repeat(times)
}

/// The seeds of `target`: built-in ones, plus the DICOM files under `corpus` (recursively)
/// where it exists.
pub fn seeds(target: Target, corpus: Option<&Path>) -> Vec<Seed> {
    // Read only by the targets that take data sets.
    let data_sets = || {
        let mut all = vec![synthetic_data_set()];
        all.extend(corpus.map(corpus_data_sets).unwrap_or_default());
        all
    };
    let command = |sop: &str, id: u16| {
        StoreRequest {
            message_id: id,
            affected_sop_class_uid: uids::CT_IMAGE_STORAGE,
            affected_sop_instance_uid: sop,
        }
        .encode()
    };
    match target {
        Target::Series => vec![],
        Target::DataSet => data_sets(),
        Target::Command => vec![
            Seed {
                bytes: command("1.2.3.4", 1),
                transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN,
            },
            Seed {
                bytes: echo_command(),
                transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN,
            },
        ],
        Target::Stream => {
            let all = data_sets();
            let native: Vec<&Seed> = all
                .iter()
                .filter(|s| {
                    STREAM_CONTEXTS
                        .iter()
                        .any(|(_, ts)| *ts == s.transfer_syntax)
                })
                .take(4)
                .collect();
            native
                .iter()
                .map(|s| {
                    let context = STREAM_CONTEXTS
                        .iter()
                        .find(|(_, ts)| *ts == s.transfer_syntax)
                        .map_or(1, |(id, _)| *id);
                    let mut stream = association_rq();
                    for (value_type, bytes, max) in [
                        (PDataValueType::Command, echo_command(), 0),
                        (PDataValueType::Command, command("1.2.3.4.5", 2), 0),
                        (PDataValueType::Data, s.bytes.clone(), 16384),
                    ] {
                        for pdu in crate::net::dimse::pdata_pdus(context, value_type, &bytes, max) {
                            write_pdu(&mut stream, &pdu);
                        }
                    }
                    write_pdu(&mut stream, &Pdu::ReleaseRQ);
                    Seed {
                        bytes: stream,
                        transfer_syntax: s.transfer_syntax,
                    }
                })
                .collect()
        }
    }
}

fn write_pdu(out: &mut Vec<u8>, pdu: &Pdu) {
    dicom_ul::pdu::write_pdu(out, pdu).expect("writing a PDU to memory cannot fail");
}

/// A C-ECHO-RQ command set.
fn echo_command() -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let object = dicom_object::InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::VERIFICATION),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0030u16)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101u16),
        ),
    ]);
    let mut bytes = Vec::new();
    object
        .write_dataset_with_ts(
            &mut bytes,
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .expect("writing a command set to memory cannot fail");
    bytes
}

/// An A-ASSOCIATE-RQ proposing CT Image Storage in both stream contexts and Verification.
fn association_rq() -> Vec<u8> {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    let mut contexts: Vec<PresentationContextProposed> = STREAM_CONTEXTS
        .iter()
        .map(|(id, ts)| PresentationContextProposed {
            id: *id,
            abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
            transfer_syntaxes: vec![(*ts).into()],
        })
        .collect();
    contexts.push(PresentationContextProposed {
        id: 5,
        abstract_syntax: uids::VERIFICATION.into(),
        transfer_syntaxes: vec![uids::IMPLICIT_VR_LITTLE_ENDIAN.into()],
    });
    let rq = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "FUZZ".into(),
        called_ae_title: "JNSC".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts,
        user_variables: vec![UserVariableItem::MaxLength(MAX_PDU)],
    };
    let mut out = Vec::new();
    write_pdu(&mut out, &Pdu::AssociationRQ(rq));
    out
}

/// One slice of a small synthetic CT series (explicit VR little endian).
fn synthetic_data_set() -> Seed {
    let dir = std::env::temp_dir().join(format!("jnsc-fuzz-seed-{}", std::process::id()));
    let spec = crate::synth::series::SeriesSpec {
        slices: 1,
        rows: 32,
        columns: 32,
        ..Default::default()
    };
    let written = crate::synth::series::write_ct_series(&spec, &dir)
        .expect("writing a synthetic slice to the temporary folder");
    let seed = file_data_set(&written.files[0]).expect("the synthetic slice reads back");
    let _ = std::fs::remove_dir_all(&dir);
    seed
}

/// The data set of a Part 10 file (the bytes after its file meta group) and its transfer syntax.
fn file_data_set(path: &Path) -> Option<Seed> {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let bytes = std::fs::read(path).ok()?;
    let (start, ts) = crate::encoding::part10_data_set(&bytes)?;
    let ts = TransferSyntaxRegistry.get(&ts)?.uid();
    Some(Seed {
        bytes: bytes[start..].to_vec(),
        transfer_syntax: ts,
    })
}

/// Every DICOM file's data set under `dir`, in a fixed order.
fn corpus_data_sets(dir: &Path) -> Vec<Seed> {
    crate::volume::series::files_under(dir)
        .iter()
        .filter_map(|f| file_data_set(f))
        .collect()
}

/// The attribute edits of the series target: a tag, its VR, and the values tried (`None`: the
/// attribute removed).
const SERIES_EDITS: &[(Tag, VR, &[Option<&str>])] = &[
    (
        tags::ROWS,
        VR::US,
        &[Some("0"), Some("1"), Some("31"), Some("65535"), None],
    ),
    (
        tags::COLUMNS,
        VR::US,
        &[Some("0"), Some("33"), Some("65535")],
    ),
    (
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &[
            Some("0"),
            Some("-1"),
            Some("2"),
            Some("99999999"),
            Some("2147483647"),
        ],
    ),
    (
        tags::BITS_ALLOCATED,
        VR::US,
        &[Some("0"), Some("1"), Some("8"), Some("12"), Some("32")],
    ),
    (
        tags::BITS_STORED,
        VR::US,
        &[Some("0"), Some("1"), Some("17"), Some("64")],
    ),
    (tags::HIGH_BIT, VR::US, &[Some("0"), Some("31")]),
    (
        tags::PIXEL_REPRESENTATION,
        VR::US,
        &[Some("0"), Some("1"), Some("2")],
    ),
    (tags::SAMPLES_PER_PIXEL, VR::US, &[Some("0"), Some("3")]),
    (
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        &[Some("MONOCHROME1"), Some("RGB"), Some("")],
    ),
    (
        tags::PIXEL_SPACING,
        VR::DS,
        &[
            Some("0\\0"),
            Some("-1\\1"),
            Some("1e-9\\1e-9"),
            Some("1e9\\1e9"),
            Some("NaN\\1"),
            Some("inf\\1"),
            Some("1"),
            None,
        ],
    ),
    (
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &[
            Some("0\\0\\0"),
            Some("NaN\\0\\0"),
            Some("1e300\\0\\0"),
            Some("0\\0\\1e9"),
            Some("0\\0"),
            None,
        ],
    ),
    (
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &[
            Some("0\\0\\0\\0\\0\\0"),
            Some("1\\0\\0\\1\\0\\0"),
            Some("NaN\\0\\0\\0\\1\\0"),
            Some("1\\0\\0\\0\\1\\0\\0"),
            Some("0.7071\\0\\0.7071\\0\\1\\0"),
        ],
    ),
    (
        tags::RESCALE_SLOPE,
        VR::DS,
        &[Some("0"), Some("NaN"), Some("1e38"), Some("-1e38")],
    ),
    (
        tags::RESCALE_INTERCEPT,
        VR::DS,
        &[Some("NaN"), Some("1e38"), Some("-1e38")],
    ),
    (
        tags::PIXEL_PADDING_VALUE,
        VR::US,
        &[Some("0"), Some("65535")],
    ),
    (tags::MODALITY, VR::CS, &[Some("MR"), Some(""), None]),
    // Pixel data cut to this many bytes.
    (
        tags::PIXEL_DATA,
        VR::OW,
        &[Some("0"), Some("2"), Some("1000")],
    ),
];

/// Slices of the series target's seed (the fewest a series may have).
const SERIES_SLICES: usize = crate::volume::series::MIN_SLICES;

/// Runs the volume stage on changed versions of a small synthetic series until `budget` is
/// spent. A panicking case's files are copied to `crashes/crash-series-N`, its edits written
/// beside them.
pub fn run_series(budget: Budget, seed: u64, crashes: Option<&Path>) -> std::io::Result<Tally> {
    use crate::volume::prepare::prepare;
    use crate::volume::resample::Interpolation;
    let work = std::env::temp_dir().join(format!("jnsc-fuzz-series-{}", std::process::id()));
    let spec = crate::synth::series::SeriesSpec {
        slices: SERIES_SLICES,
        rows: 32,
        columns: 32,
        ..Default::default()
    };
    let written = crate::synth::series::write_ct_series(&spec, &work.join("seed"))?;
    let originals: Vec<_> = written
        .files
        .iter()
        .map(|f| dicom_object::open_file(f).map_err(std::io::Error::other))
        .collect::<Result<_, _>>()?;
    let case = match crashes {
        Some(dir) => dir.join("current-series"),
        None => work.join("case"),
    };
    std::fs::create_dir_all(&case)?;
    let files: Vec<PathBuf> = (0..originals.len())
        .map(|i| case.join(format!("{i:02}.dcm")))
        .collect();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    while !budget.spent(tally.executions, started.elapsed()) {
        let mut objects = originals.clone();
        let mut edits = String::new();
        if tally.executions > 0 {
            for _ in 0..1 + rng.below(3) {
                let (tag, vr, values) = SERIES_EDITS[rng.below(SERIES_EDITS.len())];
                let value = values[rng.below(values.len())];
                let one = (rng.below(2) == 0).then(|| rng.below(objects.len()));
                for (i, object) in objects.iter_mut().enumerate() {
                    if one.is_none_or(|n| n == i) {
                        edit(object, tag, vr, value);
                    }
                }
                edits += &format!(
                    "{tag} = {value:?} in {}\n",
                    one.map_or("all".into(), |n| format!("slice {n}"))
                );
            }
        }
        for (object, file) in objects.iter().zip(&files) {
            object.write_to_file(file).map_err(std::io::Error::other)?;
        }
        if let Some(dir) = crashes {
            std::fs::write(dir.join("current-series.txt"), &edits)?;
        }
        let outcome = std::panic::catch_unwind(|| prepare(&files, Interpolation::BSpline).is_ok());
        tally.count(outcome, |n| {
            if let Some(dir) = crashes {
                let kept = dir.join(format!("crash-series-{n}"));
                std::fs::create_dir_all(&kept)?;
                for f in &files {
                    std::fs::copy(f, kept.join(f.file_name().unwrap_or_default()))?;
                }
                std::fs::write(kept.join("edits.txt"), &edits)?;
            }
            Ok(edits.into_bytes())
        })?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(tally)
}

/// Sets `tag` of `object` to `value` (removed when `None`; pixel data cut to `value` bytes).
fn edit(object: &mut DefaultDicomObject, tag: Tag, vr: VR, value: Option<&str>) {
    use dicom_core::{DataElement, PrimitiveValue};
    let Some(value) = value else {
        object.remove_element(tag);
        return;
    };
    let primitive = match vr {
        VR::US => PrimitiveValue::from(value.parse::<u16>().unwrap_or(0)),
        VR::OW => {
            let keep: usize = value.parse().unwrap_or(0);
            let mut bytes = object
                .element(tag)
                .ok()
                .and_then(|e| e.to_bytes().ok())
                .map(|b| b.into_owned())
                .unwrap_or_default();
            bytes.truncate(keep);
            PrimitiveValue::from(bytes)
        }
        _ => PrimitiveValue::from(value),
    };
    object.put(DataElement::new(tag, vr, primitive));
}

/// `jnsc bench fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Targets to fuzz (default: all).
    #[arg(long, value_enum)]
    pub target: Vec<Target>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seed of the mutations (a run is reproducible from it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Real DICOM files to add to the seeds.
    #[arg(long, default_value = "../shared/data/ct")]
    pub corpus: PathBuf,
    /// Where panicking inputs (and each current input) are written.
    #[arg(long, default_value = "target/fuzz-crashes")]
    pub crashes: PathBuf,
}

/// Runs each target for the time asked and prints executions, outcomes and crashes.
pub fn run_bench(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets = if args.target.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.target.clone()
    };
    println!(
        "{:<9} {:>6} {:>11} {:>9} {:>9} {:>9} {:>7}",
        "target", "seeds", "executions", "per s", "accepted", "refused", "panics"
    );
    let mut panics = 0;
    for target in targets {
        let budget = Budget::Time(Duration::from_secs(args.seconds));
        let started = Instant::now();
        let (seeds, tally) = if target == Target::Series {
            (1, run_series(budget, args.seed, Some(&args.crashes))?)
        } else {
            let seeds = seeds(target, Some(&args.corpus));
            let tally = run(target, &seeds, budget, args.seed, Some(&args.crashes))?;
            (seeds.len(), tally)
        };
        let rate = tally.executions as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:<9} {:>6} {:>11} {:>9.0} {:>9} {:>9} {:>7}",
            target.name(),
            seeds,
            tally.executions,
            rate,
            tally.accepted,
            tally.refused,
            tally.panics.len()
        );
        panics += tally.panics.len();
    }
    if panics > 0 {
        anyhow::bail!(
            "{panics} inputs panicked; they are in {}",
            args.crashes.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real files of the data-set seeds; without them the targets run on the synthetic
    /// seeds alone (a printed note; a failure under `CI=true`).
    fn corpus() -> Option<PathBuf> {
        crate::test_data::shared_data("data/ct")
    }

    const BYTE_TARGETS: [Target; 3] = [Target::Stream, Target::Command, Target::DataSet];

    #[test]
    fn every_seed_is_accepted_as_it_is() {
        for target in BYTE_TARGETS {
            let seeds = seeds(target, corpus().as_deref());
            assert!(!seeds.is_empty());
            for (i, s) in seeds.iter().enumerate() {
                assert!(
                    execute(target, &s.bytes, s.transfer_syntax),
                    "{target:?} seed {i} ({}) refused",
                    s.transfer_syntax
                );
            }
        }
    }

    /// The bounded run CI does: mutations of every target, no panic, and the mutations reach
    /// both answers.
    #[test]
    fn mutated_inputs_are_answered_never_panic() {
        for (target, executions) in [
            (Target::Command, 100_000),
            (Target::DataSet, 20_000),
            (Target::Stream, 20_000),
            (Target::Series, 300),
        ] {
            let seeds = seeds(target, corpus().as_deref());
            let tally = run(target, &seeds, Budget::Executions(executions), 7, None).unwrap();
            assert!(
                tally.panics.is_empty(),
                "{target:?}: {} inputs panicked, the first: {:?}",
                tally.panics.len(),
                &tally.panics[0][..tally.panics[0].len().min(256)]
            );
            assert!(
                tally.accepted > 0 && tally.refused > 0,
                "{target:?}: {tally:?}"
            );
        }
    }

    #[test]
    fn a_run_is_reproducible_from_its_seed() {
        let seeds = seeds(Target::Command, None);
        let a = run(Target::Command, &seeds, Budget::Executions(500), 3, None).unwrap();
        let b = run(Target::Command, &seeds, Budget::Executions(500), 3, None).unwrap();
        assert_eq!(a, b);
    }
}
