//! The model file: network weights in safetensors, with what is needed to use them in the
//! file's metadata: model name and version, the network `Config`, the input `Normalization`,
//! the training provenance (data, schedule, seed, code version...) and, where fitted, the
//! calibration of its malignancy output, the fraction at which findings are measured and the
//! operating points (the p(nodule) threshold of what is reported, one per analysis setting it
//! was chosen with), each chosen for these weights on validation data. Loading checks all of it
//! and fails with a message that names the file and what is wrong.
//!
//! A file may carry a second network, the *malignancy network* ([`MalignancyNetwork`], written by
//! [`combine`]): the first network then detects (location map and p(non-nodule)) and the second
//! one's classification path gives the benign and malignant classes, to which the file's
//! calibration applies. Both read the same input normalisation. Their tensors are under
//! `detection.` and `malignancy.`, so that a binary that does not know such files fails to load
//! one (it finds no tensor of its network) instead of reading the detector alone with a
//! calibration that is not its own.
//!
//! The shipped model (`models/jnsc.safetensors`) is compiled into the binary: [`ModelSource`]
//! is either that embedded copy, the default everywhere, or a file named by the user.

use crate::jnsc::network::{Config, Jnsc};
use crate::volume::Normalization;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Metadata keys.
const NAME: &str = "jnsc.model_name";
const VERSION: &str = "jnsc.model_version";
const CONFIG: &str = "jnsc.config";
const NORMALIZATION: &str = "jnsc.normalization";
const PROVENANCE: &str = "jnsc.provenance";
const MALIGNANCY_CALIBRATION: &str = "jnsc.malignancy_calibration";
const MALIGNANCY_NETWORK: &str = "jnsc.malignancy_network";
const MEASURE_FRACTION: &str = "jnsc.measure_fraction";
const OPERATING_POINT: &str = "jnsc.operating_point";

/// Prefixes of the two networks' tensor names in a file that carries a malignancy network.
const DETECTION_PREFIX: &str = "detection";
const MALIGNANCY_PREFIX: &str = "malignancy";

/// The shipped model's bytes, as they were in `models/jnsc.safetensors` when this binary was built.
pub static EMBEDDED: &[u8] = include_bytes!("../../models/jnsc.safetensors");

/// Where a model comes from: the copy compiled into the binary, or a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ModelSource {
    /// The shipped model embedded in this binary ([`EMBEDDED`]).
    #[default]
    Embedded,
    /// A model file (relative paths are from the working directory).
    File(PathBuf),
}

impl ModelSource {
    /// A file when one is named, the embedded model otherwise.
    pub fn from_option(path: Option<PathBuf>) -> Self {
        path.map_or(Self::Embedded, Self::File)
    }

    /// How error messages name it (the path of a file).
    pub fn label(&self) -> PathBuf {
        match self {
            Self::Embedded => PathBuf::from(format!("<embedded {}>", crate::DEFAULT_MODEL)),
            Self::File(path) => path.clone(),
        }
    }

    /// The file's bytes.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'static, [u8]>, ModelFileError> {
        match self {
            Self::Embedded => Ok(std::borrow::Cow::Borrowed(EMBEDDED)),
            Self::File(path) => std::fs::read(path)
                .map(std::borrow::Cow::Owned)
                .map_err(|error| ModelFileError::Read {
                    path: path.clone(),
                    error,
                }),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => write!(f, "the embedded shipped model ({})", crate::DEFAULT_MODEL),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What a model file says about its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub config: Config,
    pub normalization: Normalization,
    /// Free-form training provenance (JSON object).
    pub provenance: serde_json::Value,
    /// Calibration of p(malignant | nodule), where one was fitted (`jnsc eval calibrate`).
    pub malignancy_calibration: Option<MalignancyCalibration>,
    /// The second network whose classification path gives the benign and malignant classes,
    /// where the file carries one (`None`: this network's own classes).
    pub malignancy_network: Option<MalignancyNetwork>,
    /// The fraction of a finding's peak location probability at which its measured extent (its
    /// reported centre, size and segment) is cut, chosen for this model's map on validation
    /// data (`None`: the whole detected region is reported).
    pub measure_fraction: Option<f32>,
    /// The thresholds on p(nodule) at which findings are reported, chosen for this model on
    /// validation data (`jnsc eval operating-point`), at most one per analysis setting (p(nodule)
    /// depends on the setting); empty: the user must choose one.
    pub operating_points: Vec<OperatingPoint>,
}

impl ModelInfo {
    /// The operating point chosen with the analysis setting `setting`, if there is one.
    pub fn operating_point(&self, setting: AnalysisSetting) -> Option<&OperatingPoint> {
        self.operating_points.iter().find(|o| o.analysis == setting)
    }

    /// The training provenance of the network whose classes p(malignant | nodule) comes from.
    pub fn malignancy_provenance(&self) -> &serde_json::Value {
        self.malignancy_network
            .as_ref()
            .map_or(&self.provenance, |m| &m.provenance)
    }
}

/// Checks a measure fraction (`ModelInfo::measure_fraction`, wherever one is given): a fraction of
/// the peak, 0 (the whole region) to 1.
pub fn check_measure_fraction(f: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&f) {
        Ok(())
    } else {
        Err(format!("the measure fraction {f} is not between 0 and 1"))
    }
}

/// A model's operating point: the lowest p(nodule) reported, and how it was chosen.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperatingPoint {
    pub min_p_nodule: f64,
    /// The rule: the lowest threshold at which at most this many false positives per scan were
    /// reported on the validation studies.
    pub max_false_positives_per_scan: f64,
    /// The validation studies it was chosen on, in words.
    pub chosen_on: String,
    /// What was reported there at `min_p_nodule`: false positives per scan, and reference
    /// nodules hit of all.
    pub false_positives_per_scan: f64,
    pub nodules_reported: usize,
    pub nodules: usize,
    /// The analysis it was chosen with: p(nodule) depends on it, so the threshold holds for it
    /// alone.
    pub analysis: AnalysisSetting,
    /// The calibration of p(nodule) among the findings reported here, where one was fitted
    /// (`jnsc eval operating-point --calibrate-on`); files before node 0.2.0 carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_nodule_calibration: Option<NoduleCalibration>,
}

/// What of an analysis moves p(nodule) or where a finding is marked: the sliding window, the
/// test-time mirroring of the segmentation and of the classification path (and from which
/// one-pass p(nodule) on a finding's classification is mirrored), and the fraction at which
/// findings are measured (their reported centres).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnalysisSetting {
    pub window: usize,
    pub stride: usize,
    pub mirrors: usize,
    pub classify_mirrors: usize,
    /// Findings whose one-pass p(nodule) is below this keep their one-pass classes (0: every
    /// finding is mirrored; settings before node 0.3.0 have no other).
    #[serde(default, skip_serializing_if = "mirrors_every_finding")]
    pub classify_mirrors_from: f64,
    pub measure_fraction: f32,
}

/// Whether a setting mirrors the classification of every finding (`classify_mirrors_from` 0:
/// such a setting is written as before the field existed).
pub fn mirrors_every_finding(from: &f64) -> bool {
    *from == 0.0
}

impl std::fmt::Display for AnalysisSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}^3 windows every {} voxels, {} segmentation and {} classification mirror(s)",
            self.window, self.stride, self.mirrors, self.classify_mirrors
        )?;
        if self.classify_mirrors > 1 && !mirrors_every_finding(&self.classify_mirrors_from) {
            write!(
                f,
                " (for findings of one-pass p(nodule) {} or more)",
                self.classify_mirrors_from
            )?;
        }
        write!(
            f,
            ", findings measured at {} of their peak",
            self.measure_fraction
        )
    }
}

/// Checks a p(nodule) threshold (an operating point, wherever one is given): 0 to 1.
pub fn check_min_p_nodule(p: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!(
            "the p(nodule) threshold {p} is not between 0 and 1"
        ))
    }
}

/// What a model file says about its malignancy network (see the module documentation).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MalignancyNetwork {
    pub name: String,
    pub version: String,
    pub config: Config,
    /// Its own training provenance.
    pub provenance: serde_json::Value,
}

/// The networks of a model file, on a device.
pub struct Networks {
    /// The network itself: the location map, and every class where there is no malignancy
    /// network.
    pub detection: Jnsc,
    /// The malignancy network, where the file carries one.
    pub malignancy: Option<Jnsc>,
}

/// Platt scaling of the classification path's p(malignant | nodule) = p(malignant) /
/// (p(benign) + p(malignant)): calibrated p = sigmoid(a logit(p) + b), and the call
/// (malignant when the calibrated p is at least `threshold`), fitted on held-out nodules.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MalignancyCalibration {
    pub a: f64,
    pub b: f64,
    pub threshold: f64,
    /// What it was fitted on, in words.
    pub fitted_on: String,
}

impl MalignancyCalibration {
    /// The calibrated probability of a raw p(malignant | nodule).
    pub fn apply(&self, p: f64) -> f64 {
        platt(self.a, self.b, p)
    }
}

/// A Platt scaling of `p`: sigmoid(a logit(p) + b), p kept within 1e-6 of 0 and 1.
pub fn platt(a: f64, b: f64, p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    let z = a * (p / (1.0 - p)).ln() + b;
    1.0 / (1.0 + (-z).exp())
}

/// The calibration of p(nodule) among the findings reported at an operating point: a Platt
/// scaling fitted on validation findings at or above it, a finding that hits a reference nodule
/// counting as a nodule, so that p(nodule) x p(cancer | nodule) is a probability there.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoduleCalibration {
    pub a: f64,
    pub b: f64,
    /// What it was fitted on, in words.
    pub fitted_on: String,
}

impl NoduleCalibration {
    /// The calibrated probability of a p(nodule) at or above the operating point.
    pub fn apply(&self, p: f64) -> f64 {
        platt(self.a, self.b, p)
    }
}

/// A model file that cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    // The I/O error is part of the message, not a `source`: printed with its chain it would
    // otherwise appear twice.
    #[error("cannot read model file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a safetensors model file (wrong or truncated file?): {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("model file {path} lacks the metadata `{key}`: not a JNSC model file")]
    MissingMetadata { path: PathBuf, key: &'static str },
    #[error("model file {path} has invalid metadata `{key}`: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("model file {path} does not match its configuration: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("cannot write model file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot combine {detection} and {malignancy}: {reason}")]
    Combine {
        detection: PathBuf,
        malignancy: PathBuf,
        reason: String,
    },
    #[error("cannot average {first} and {second}: {reason}")]
    Average {
        first: PathBuf,
        second: PathBuf,
        reason: String,
    },
    #[error("cannot convert model {path} to {precision}: {reason}")]
    Convert {
        path: PathBuf,
        precision: crate::jnsc::device::Precision,
        reason: String,
    },
}

/// Writes the weights in `vars` and `info` to `path`.
pub fn save(path: &Path, vars: &VarMap, info: &ModelInfo) -> Result<(), ModelFileError> {
    let write_error = |reason: String| ModelFileError::Write {
        path: path.to_owned(),
        reason,
    };
    let metadata = metadata(info, path)?;
    let data = vars.data().lock().map_err(|e| write_error(e.to_string()))?;
    let tensors: Vec<(String, candle_core::Tensor)> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    safetensors::serialize_to_file(tensors, Some(metadata), path)
        .map_err(|e| write_error(e.to_string()))
}

/// The metadata entries of `info`, for the file `path`.
fn metadata(info: &ModelInfo, path: &Path) -> Result<HashMap<String, String>, ModelFileError> {
    let json = |v: &dyn erased::Json| {
        v.to_json().map_err(|e| ModelFileError::Write {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    let mut metadata = HashMap::from([
        (NAME.to_owned(), info.name.clone()),
        (VERSION.to_owned(), info.version.clone()),
        (CONFIG.to_owned(), json(&info.config)?),
        (NORMALIZATION.to_owned(), json(&info.normalization)?),
        (PROVENANCE.to_owned(), json(&info.provenance)?),
    ]);
    if let Some(c) = &info.malignancy_calibration {
        metadata.insert(MALIGNANCY_CALIBRATION.to_owned(), json(c)?);
    }
    if let Some(m) = &info.malignancy_network {
        metadata.insert(MALIGNANCY_NETWORK.to_owned(), json(m)?);
    }
    if let Some(f) = &info.measure_fraction {
        metadata.insert(MEASURE_FRACTION.to_owned(), json(f)?);
    }
    if !info.operating_points.is_empty() {
        metadata.insert(OPERATING_POINT.to_owned(), json(&info.operating_points)?);
    }
    Ok(metadata)
}

/// Loads a model file onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<(Jnsc, ModelInfo), ModelFileError> {
    load_from(&ModelSource::File(path.to_owned()), device)
}

/// Loads a model's network, embedded or from a file, onto `device` (its detector, where it also
/// carries a malignancy network: see [`load_networks`]).
pub fn load_from(
    source: &ModelSource,
    device: &Device,
) -> Result<(Jnsc, ModelInfo), ModelFileError> {
    let (networks, info) = load_networks(source, device)?;
    Ok((networks.detection, info))
}

/// Loads every network of a model, embedded or from a file, onto `device`.
pub fn load_networks(
    source: &ModelSource,
    device: &Device,
) -> Result<(Networks, ModelInfo), ModelFileError> {
    let (vb, info) = open(source, device)?;
    let path = source.label();
    let networks = match &info.malignancy_network {
        None => Networks {
            detection: build(&path, &info.config, vb)?,
            malignancy: None,
        },
        Some(m) => Networks {
            detection: build(&path, &info.config, vb.pp(DETECTION_PREFIX))?,
            malignancy: Some(build(&path, &m.config, vb.pp(MALIGNANCY_PREFIX))?),
        },
    };
    Ok((networks, info))
}

/// Sets the variables `vars` of a network of `config` (a training run's) to the weights of the
/// model file `path`: its network, or its detector where it carries a malignancy network too (as
/// [`load`] gives). The file's network must be of `config`, or of `config` without its refine
/// unit, whose variables are then left as they are.
pub fn init_vars(vars: &VarMap, path: &Path, config: &Config) -> Result<ModelInfo, ModelFileError> {
    let bytes = ModelSource::File(path.to_owned()).bytes()?;
    let info = read_info(path, &bytes)?;
    let weights = |reason: String| ModelFileError::Weights {
        path: path.to_owned(),
        reason,
    };
    let adds_refine = config.refine_width > 0
        && info.config
            == (Config {
                refine_width: 0,
                ..config.clone()
            });
    if info.config != *config && !adds_refine {
        return Err(weights(format!(
            "its network is {:?}, this training's {config:?}",
            info.config
        )));
    }
    let tensors = tensors_of(path, &bytes)?;
    let data = vars.data().lock().map_err(|e| weights(e.to_string()))?;
    for (name, var) in data.iter() {
        if adds_refine && name.starts_with("refine.") {
            continue;
        }
        let stored = match info.malignancy_network {
            None => name.clone(),
            Some(_) => format!("{DETECTION_PREFIX}.{name}"),
        };
        let tensor_error = |e: &dyn std::fmt::Display| weights(format!("tensor `{stored}`: {e}"));
        let view = tensors.tensor(&stored).map_err(|e| tensor_error(&e))?;
        candle_core::safetensors::Load::load(&view, var.device())
            .and_then(|t| t.to_dtype(var.dtype()))
            .and_then(|t| var.set(&t))
            .map_err(|e| tensor_error(&e))?;
    }
    Ok(info)
}

/// A model's metadata, checked, and its tensors on `device`.
fn open(
    source: &ModelSource,
    device: &Device,
) -> Result<(VarBuilder<'static>, ModelInfo), ModelFileError> {
    let bytes = source.bytes()?.into_owned();
    let path = &source.label();
    let info = read_info(path, &bytes)?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(|e| {
        ModelFileError::NotSafetensors {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok((vb, info))
}

/// The network of `config` from the tensors of `vb`.
fn build(path: &Path, config: &Config, vb: VarBuilder) -> Result<Jnsc, ModelFileError> {
    Jnsc::new(config, vb).map_err(|e| ModelFileError::Weights {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The tensors of the model file `path`'s bytes.
fn tensors_of<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<safetensors::SafeTensors<'a>, ModelFileError> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelFileError::NotSafetensors {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads and checks the metadata of a model file's bytes.
pub fn read_info(path: &Path, bytes: &[u8]) -> Result<ModelInfo, ModelFileError> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        ModelFileError::NotSafetensors {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    // The header parses; make sure the data it describes is all there.
    tensors_of(path, bytes)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let text = |key: &'static str| {
        metadata
            .get(key)
            .cloned()
            .ok_or_else(|| ModelFileError::MissingMetadata {
                path: path.to_owned(),
                key,
            })
    };
    let json = |key: &'static str| -> Result<serde_json::Value, ModelFileError> {
        serde_json::from_str(&text(key)?).map_err(|e| ModelFileError::BadMetadata {
            path: path.to_owned(),
            key,
            reason: e.to_string(),
        })
    };
    let typed = |key: &'static str, value: serde_json::Value| {
        move |e: serde_json::Error| ModelFileError::BadMetadata {
            path: path.to_owned(),
            key,
            reason: format!("{e} in {value}"),
        }
    };
    let config_json = json(CONFIG)?;
    let config: Config =
        serde_json::from_value(config_json.clone()).map_err(typed(CONFIG, config_json))?;
    let normalization_json = json(NORMALIZATION)?;
    let normalization: Normalization = serde_json::from_value(normalization_json.clone())
        .map_err(typed(NORMALIZATION, normalization_json))?;
    // An optional entry: absent, or JSON of its type.
    fn optional<T: serde::de::DeserializeOwned>(
        path: &Path,
        metadata: &HashMap<String, String>,
        key: &'static str,
    ) -> Result<Option<T>, ModelFileError> {
        metadata
            .get(key)
            .map(|text| {
                serde_json::from_str(text).map_err(|e| ModelFileError::BadMetadata {
                    path: path.to_owned(),
                    key,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }
    let malignancy_calibration = optional(path, &metadata, MALIGNANCY_CALIBRATION)?;
    let malignancy_network = optional(path, &metadata, MALIGNANCY_NETWORK)?;
    let measure_fraction: Option<f32> = optional(path, &metadata, MEASURE_FRACTION)?;
    if let Some(f) = measure_fraction {
        check_measure_fraction(f).map_err(|reason| ModelFileError::BadMetadata {
            path: path.to_owned(),
            key: MEASURE_FRACTION,
            reason,
        })?;
    }
    let operating_points = optional::<OperatingPoints>(path, &metadata, OPERATING_POINT)?
        .map_or_else(Vec::new, OperatingPoints::into_vec);
    check_operating_points(&operating_points).map_err(|reason| ModelFileError::BadMetadata {
        path: path.to_owned(),
        key: OPERATING_POINT,
        reason,
    })?;
    Ok(ModelInfo {
        name: text(NAME)?,
        version: text(VERSION)?,
        config,
        normalization,
        provenance: json(PROVENANCE)?,
        malignancy_calibration,
        malignancy_network,
        measure_fraction,
        operating_points,
    })
}

/// The operating point entry as written: a list, or the one object files before the list
/// (0.6.0 and earlier) carry.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OperatingPoints {
    Many(Vec<OperatingPoint>),
    One(OperatingPoint),
}

impl OperatingPoints {
    fn into_vec(self) -> Vec<OperatingPoint> {
        match self {
            Self::Many(points) => points,
            Self::One(point) => vec![point],
        }
    }
}

/// Checks a model's operating points: each threshold between 0 and 1, at most one per setting.
fn check_operating_points(points: &[OperatingPoint]) -> Result<(), String> {
    for (i, o) in points.iter().enumerate() {
        check_min_p_nodule(o.min_p_nodule)?;
        if points[..i].iter().any(|p| p.analysis == o.analysis) {
            return Err(format!("two operating points for {}", o.analysis));
        }
    }
    Ok(())
}

/// Copies the model file `from` to `to` with `calibration` in its metadata (weights and every
/// other entry unchanged).
pub fn write_calibrated(
    from: &Path,
    to: &Path,
    calibration: &MalignancyCalibration,
) -> Result<(), ModelFileError> {
    write_entry(from, to, MALIGNANCY_CALIBRATION, calibration)
}

/// Copies the model file `from` to `to` with `operating_point` among its operating points, in
/// place of the one of the same analysis setting if there is one (weights and every other entry
/// unchanged). `to` may be `from`.
pub fn write_operating_point(
    from: &Path,
    to: &Path,
    operating_point: &OperatingPoint,
) -> Result<(), ModelFileError> {
    check_min_p_nodule(operating_point.min_p_nodule).map_err(|reason| ModelFileError::Write {
        path: to.to_owned(),
        reason,
    })?;
    let bytes = ModelSource::File(from.to_owned()).bytes()?;
    let mut points = read_info(from, &bytes)?.operating_points;
    match points
        .iter_mut()
        .find(|o| o.analysis == operating_point.analysis)
    {
        Some(same) => *same = operating_point.clone(),
        None => points.push(operating_point.clone()),
    }
    write_entry(from, to, OPERATING_POINT, &points)
}

/// Copies the model file `from` to `to` with the metadata entry `key` set to `value` (JSON),
/// through a temporary file beside `to` renamed into place, so that `to` may be `from` and is
/// never left half-written. The copy is read back and checked before the rename.
fn write_entry(
    from: &Path,
    to: &Path,
    key: &str,
    value: &impl serde::Serialize,
) -> Result<(), ModelFileError> {
    let bytes = ModelSource::File(from.to_owned()).bytes()?;
    read_info(from, &bytes)?;
    let write_error = |reason: String| ModelFileError::Write {
        path: to.to_owned(),
        reason,
    };
    let not_safetensors = |e: safetensors::SafeTensorError| ModelFileError::NotSafetensors {
        path: from.to_owned(),
        reason: e.to_string(),
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(not_safetensors)?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    metadata.insert(
        key.to_owned(),
        serde_json::to_string(value).map_err(|e| write_error(e.to_string()))?,
    );
    let tensors = tensors_of(from, &bytes)?;
    let mut temporary = to.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    safetensors::serialize_to_file(tensors.tensors(), Some(metadata), &temporary)
        .map_err(|e| write_error(e.to_string()))?;
    let written = ModelSource::File(temporary.clone())
        .bytes()
        .and_then(|b| read_info(&temporary, &b).map(|_| ()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    std::fs::rename(&temporary, to).map_err(|e| write_error(e.to_string()))
}

/// Writes to `out` a model file whose detection is `detection`'s network and whose benign and
/// malignant classes come from `malignancy`'s (see the module documentation), named `name`
/// `version`. The metadata are `detection`'s (its provenance with the two files' names and
/// versions added) and `malignancy`'s calibration, if it has one; `detection`'s own calibration
/// no longer applies and is dropped. `measure_fraction`, where given, replaces the detector's
/// (it belongs to the detector's map); the operating point is the detector's (p(nodule) is the
/// detector's alone). Both must read the same normalisation, and neither may carry a malignancy
/// network already. The written file is loaded back before this returns.
pub fn combine(
    detection: &Path,
    malignancy: &Path,
    out: &Path,
    name: &str,
    version: &str,
    measure_fraction: Option<f32>,
) -> Result<ModelInfo, ModelFileError> {
    let refuse = |reason: String| ModelFileError::Combine {
        detection: detection.to_owned(),
        malignancy: malignancy.to_owned(),
        reason,
    };
    let detection_bytes = ModelSource::File(detection.to_owned()).bytes()?;
    let malignancy_bytes = ModelSource::File(malignancy.to_owned()).bytes()?;
    let detection_info = read_info(detection, &detection_bytes)?;
    let malignancy_info = read_info(malignancy, &malignancy_bytes)?;
    for (path, info) in [(detection, &detection_info), (malignancy, &malignancy_info)] {
        if info.malignancy_network.is_some() {
            return Err(refuse(format!(
                "{} carries a malignancy network already",
                path.display()
            )));
        }
    }
    if let Some(f) = measure_fraction {
        check_measure_fraction(f).map_err(refuse)?;
    }
    if detection_info.normalization != malignancy_info.normalization {
        return Err(refuse(format!(
            "their input normalisations differ ({:?} and {:?})",
            detection_info.normalization, malignancy_info.normalization
        )));
    }
    let mut provenance = detection_info.provenance.clone();
    let Some(fields) = provenance.as_object_mut() else {
        return Err(refuse(
            "the detection file's provenance is not an object".into(),
        ));
    };
    let named = |i: &ModelInfo| serde_json::json!({"name": i.name, "version": i.version});
    fields.insert("detection_network".into(), named(&detection_info));
    fields.insert("malignancy_network".into(), named(&malignancy_info));
    let info = ModelInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        provenance,
        malignancy_calibration: malignancy_info.malignancy_calibration.clone(),
        malignancy_network: Some(MalignancyNetwork {
            name: malignancy_info.name.clone(),
            version: malignancy_info.version.clone(),
            config: malignancy_info.config.clone(),
            provenance: malignancy_info.provenance.clone(),
        }),
        measure_fraction: measure_fraction.or(detection_info.measure_fraction),
        ..detection_info
    };
    let metadata = metadata(&info, out)?;
    let detection_tensors = tensors_of(detection, &detection_bytes)?;
    let malignancy_tensors = tensors_of(malignancy, &malignancy_bytes)?;
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    for (prefix, tensors) in [
        (DETECTION_PREFIX, &detection_tensors),
        (MALIGNANCY_PREFIX, &malignancy_tensors),
    ] {
        views.extend(
            tensors
                .tensors()
                .into_iter()
                .map(|(name, view)| (format!("{prefix}.{name}"), view)),
        );
    }
    safetensors::serialize_to_file(views, Some(metadata), out).map_err(|e| {
        ModelFileError::Write {
            path: out.to_owned(),
            reason: e.to_string(),
        }
    })?;
    load_networks(&ModelSource::File(out.to_owned()), &Device::Cpu)?;
    Ok(info)
}

/// Writes to `out` the element-wise mean of two model files' weights (1/2 each), named `name`
/// `version`: two networks of one configuration, one trained on from the other, averaged as a
/// "model soup" (Wortsman et al. 2022; JNSC's instance norms keep no statistics to recompute).
/// Both must be single-network files of the same network and normalisation. The metadata are
/// `first`'s configuration, normalisation and provenance, with the two files' names, versions and
/// `second`'s provenance under `average_of`; calibration, measure fraction and operating point are
/// dropped (each was chosen for other weights). The written file is loaded back before this
/// returns.
pub fn average(
    first: &Path,
    second: &Path,
    out: &Path,
    name: &str,
    version: &str,
) -> Result<ModelInfo, ModelFileError> {
    let refuse = |reason: String| ModelFileError::Average {
        first: first.to_owned(),
        second: second.to_owned(),
        reason,
    };
    let infos = [first, second].map(|path| {
        ModelSource::File(path.to_owned())
            .bytes()
            .and_then(|bytes| read_info(path, &bytes))
    });
    let [first_info, second_info] = infos;
    let (first_info, second_info) = (first_info?, second_info?);
    for (path, info) in [(first, &first_info), (second, &second_info)] {
        if info.malignancy_network.is_some() {
            return Err(refuse(format!(
                "{} carries two networks; average detectors before combining",
                path.display()
            )));
        }
    }
    if first_info.config != second_info.config {
        return Err(refuse(format!(
            "their networks differ ({:?} and {:?})",
            first_info.config, second_info.config
        )));
    }
    if first_info.normalization != second_info.normalization {
        return Err(refuse(format!(
            "their input normalisations differ ({:?} and {:?})",
            first_info.normalization, second_info.normalization
        )));
    }
    let config = &first_info.config;
    let weights_of = |path: &Path| -> Result<VarMap, ModelFileError> {
        let vars = VarMap::new();
        Jnsc::new(
            config,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .map_err(|e| ModelFileError::Weights {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        init_vars(&vars, path, config)?;
        Ok(vars)
    };
    let (mean, other) = (weights_of(first)?, weights_of(second)?);
    {
        let other = other.data().lock().map_err(|e| refuse(e.to_string()))?;
        let mean = mean.data().lock().map_err(|e| refuse(e.to_string()))?;
        for (tensor, var) in mean.iter() {
            let other = other
                .get(tensor)
                .ok_or_else(|| refuse(format!("tensor `{tensor}` is missing from the second")))?;
            (var.as_tensor() + other.as_tensor())
                .and_then(|sum| sum.affine(0.5, 0.0))
                .and_then(|m| var.set(&m))
                .map_err(|e| refuse(format!("tensor `{tensor}`: {e}")))?;
        }
    }
    let mut provenance = first_info.provenance.clone();
    let Some(fields) = provenance.as_object_mut() else {
        return Err(refuse(
            "the first file's provenance is not an object".into(),
        ));
    };
    let named = |i: &ModelInfo| serde_json::json!({"name": i.name, "version": i.version});
    let mut average_of = serde_json::json!({
        "weights": [0.5, 0.5],
        "first": named(&first_info),
        "second": named(&second_info),
        "second_provenance": second_info.provenance,
    });
    // A first file that is itself a mean keeps its own record, one level down.
    if let Some(earlier) = fields.remove("average_of") {
        average_of["first_average_of"] = earlier;
    }
    fields.insert("average_of".into(), average_of);
    let info = ModelInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        provenance,
        malignancy_calibration: None,
        measure_fraction: None,
        operating_points: Vec::new(),
        ..first_info
    };
    save(out, &mean, &info)?;
    load_networks(&ModelSource::File(out.to_owned()), &Device::Cpu)?;
    Ok(info)
}

/// JSON encoding of the metadata values behind one object-safe trait.
mod erased {
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

/// `jnsc model init`: writes a freshly initialised (untrained) model of `preset` (encoder widths
/// overridden by `widths`) to `out`.
pub fn write_untrained(
    out: &std::path::Path,
    preset: crate::jnsc::network::Preset,
    widths: Option<Vec<usize>>,
) -> anyhow::Result<()> {
    use crate::jnsc::network::{Config, Jnsc};
    let mut config = Config::preset(preset);
    if let Some(w) = widths {
        config.widths = w
            .try_into()
            .map_err(|_| anyhow::anyhow!("--widths needs 5 values"))?;
    }
    let device = candle_core::Device::Cpu;
    let vars = candle_nn::VarMap::new();
    Jnsc::new(
        &config,
        candle_nn::VarBuilder::from_varmap(&vars, candle_core::DType::F32, &device),
    )?;
    crate::jnsc::network::seeded_init(&vars, 1)?;
    let info = ModelInfo {
        malignancy_calibration: None,
        malignancy_network: None,
        measure_fraction: None,
        operating_points: Vec::new(),
        name: format!("jnsc-{preset}"),
        version: "0.0.0-untrained".into(),
        config,
        normalization: crate::volume::Normalization::default(),
        provenance: serde_json::json!({"trained": false, "init": "kaiming normal", "jnsc": env!("CARGO_PKG_VERSION")}),
    };
    save(out, &vars, &info)?;
    println!("wrote untrained model {} to {}", info.name, out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn info() -> ModelInfo {
        ModelInfo {
            malignancy_calibration: None,
            malignancy_network: None,
            measure_fraction: None,
            operating_points: Vec::new(),
            name: "jnsc-test".into(),
            version: "0.0.1".into(),
            config: Config {
                widths: [4, 4, 8, 8, 8],
                ..Config::cpu()
            },
            normalization: Normalization::default(),
            provenance: serde_json::json!({"data": "none", "seed": 1}),
        }
    }

    #[test]
    fn saved_model_loads_with_its_metadata_and_the_same_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let vars = VarMap::new();
        let net = Jnsc::new(
            &info().config,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        save(&path, &vars, &info()).unwrap();
        let (loaded, read) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(read, info());
        let x = Tensor::randn(0f32, 1.0, (1, 1, 16, 16, 16), &Device::Cpu).unwrap();
        let a = net.segment(&x, None).unwrap().logits;
        let b = loaded.segment(&x, None).unwrap().logits;
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn wrong_truncated_or_mismatched_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let vars = VarMap::new();
        Jnsc::new(
            &info().config,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        save(&path, &vars, &info()).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let truncated = dir.path().join("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
        let e = load(&truncated, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a safetensors model file"), "{e}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"hello").unwrap();
        assert!(matches!(
            load(&text, &Device::Cpu),
            Err(ModelFileError::NotSafetensors { .. })
        ));

        assert!(matches!(
            load(&dir.path().join("absent"), &Device::Cpu),
            Err(ModelFileError::Read { .. })
        ));

        // Weights of another configuration.
        let other = dir.path().join("other.safetensors");
        let mut wrong = info();
        wrong.config.widths = [8, 8, 8, 8, 8];
        save(&other, &vars, &wrong).unwrap();
        let e = load(&other, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("does not match its configuration"), "{e}");

        // A safetensors file without our metadata.
        let bare = dir.path().join("bare.safetensors");
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        safetensors::serialize_to_file([("x", &t)], None, &bare).unwrap();
        let e = load(&bare, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a JNSC model file"), "{e}");
    }

    /// A small model of `info()` with weights from `seed`, saved as `name` in `dir`.
    fn saved(dir: &Path, name: &str, seed: u64, info: &ModelInfo) -> PathBuf {
        let vars = VarMap::new();
        Jnsc::new(
            &info.config,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        crate::jnsc::network::seeded_init(&vars, seed).unwrap();
        let path = dir.join(name);
        save(&path, &vars, info).unwrap();
        path
    }

    /// The segmentation logits and class logits of `net` on a fixed input.
    fn outputs(net: &Jnsc) -> Vec<f32> {
        let values = crate::jnsc::testing::values(32 * 32 * 32, 5);
        let x = Tensor::from_vec(values, (1, 1, 32, 32, 32), &Device::Cpu).unwrap();
        let out = net.segment(&x, None).unwrap();
        let boxes = [crate::jnsc::network::Candidate {
            batch: 0,
            min: [10, 12, 9],
            max: [18, 19, 20],
            voxels: 200,
        }];
        let classes = net.classify(&out.encoder, &boxes).unwrap();
        [out.logits, classes]
            .iter()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn a_combined_file_holds_both_networks_with_the_malignancy_calibration() {
        let dir = tempfile::tempdir().unwrap();
        let calibration = MalignancyCalibration {
            a: 0.7,
            b: -0.4,
            threshold: 0.3,
            fitted_on: "test".into(),
        };
        let detector_info = ModelInfo {
            // Its own calibration is of classes the combined file no longer reports.
            malignancy_calibration: Some(MalignancyCalibration {
                a: 2.0,
                ..calibration.clone()
            }),
            operating_points: vec![operating_point(0.5)],
            ..info()
        };
        let detector = saved(dir.path(), "detector.safetensors", 1, &detector_info);
        let classifier_info = ModelInfo {
            name: "jnsc-classifier".into(),
            provenance: serde_json::json!({"data": "other", "seed": 2}),
            malignancy_calibration: Some(calibration.clone()),
            operating_points: vec![operating_point(0.3)],
            ..info()
        };
        let classifier = saved(dir.path(), "classifier.safetensors", 2, &classifier_info);
        let out = dir.path().join("combined.safetensors");
        let written = combine(
            &detector,
            &classifier,
            &out,
            "jnsc-both",
            "0.4.0",
            Some(0.8),
        )
        .unwrap();

        let (networks, read) =
            load_networks(&ModelSource::File(out.clone()), &Device::Cpu).unwrap();
        assert_eq!(read, written);
        assert_eq!(
            (read.name.as_str(), read.version.as_str()),
            ("jnsc-both", "0.4.0")
        );
        assert_eq!(read.malignancy_calibration, Some(calibration));
        assert_eq!(read.measure_fraction, Some(0.8));
        // p(nodule) is the detector's, and so is its operating point.
        assert_eq!(read.operating_points, vec![operating_point(0.5)]);
        assert_eq!(read.provenance["seed"], 1);
        assert_eq!(
            read.provenance["malignancy_network"]["name"],
            "jnsc-classifier"
        );
        let m = read.malignancy_network.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), &m.config),
            ("jnsc-classifier", &info().config)
        );
        assert_eq!(read.malignancy_provenance()["seed"], 2);

        // Each network is its file's, exactly; the two differ.
        let (d, _) = load(&detector, &Device::Cpu).unwrap();
        let (c, _) = load(&classifier, &Device::Cpu).unwrap();
        assert_eq!(outputs(&networks.detection), outputs(&d));
        assert_eq!(outputs(networks.malignancy.as_ref().unwrap()), outputs(&c));
        assert_ne!(outputs(&d), outputs(&c));
        // Loading the network alone (training's --init-from) gives the detector.
        let (alone, _) = load(&out, &Device::Cpu).unwrap();
        assert_eq!(outputs(&alone), outputs(&d));
        // A reader that knows nothing of combined files (the loading of single-network files)
        // finds no tensor of its network in one, rather than misreading it.
        let bytes = std::fs::read(&out).unwrap();
        let plain = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
        assert!(Jnsc::new(&info().config, plain).is_err());
        // A single-network file has no malignancy network.
        let (single, _) =
            load_networks(&ModelSource::File(detector.clone()), &Device::Cpu).unwrap();
        assert!(single.malignancy.is_none());
    }

    fn operating_point(min_p_nodule: f64) -> OperatingPoint {
        OperatingPoint {
            min_p_nodule,
            max_false_positives_per_scan: 1.0,
            chosen_on: "test studies".into(),
            false_positives_per_scan: 0.5,
            nodules_reported: 3,
            nodules: 4,
            analysis: AnalysisSetting {
                window: 128,
                stride: 96,
                mirrors: 1,
                classify_mirrors: 1,
                classify_mirrors_from: 0.0,
                measure_fraction: 0.8,
            },
            p_nodule_calibration: None,
        }
    }

    #[test]
    fn an_operating_point_is_written_in_place_and_checked_on_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved(dir.path(), "model.safetensors", 1, &info());
        let before = std::fs::read(&path).unwrap();
        write_operating_point(&path, &path, &operating_point(0.511)).unwrap();
        let (network, read) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(
            read,
            ModelInfo {
                operating_points: vec![operating_point(0.511)],
                ..info()
            }
        );
        // The weights are the file's as before.
        let original = dir.path().join("original.safetensors");
        std::fs::write(&original, &before).unwrap();
        let (unchanged, _) = load(&original, &Device::Cpu).unwrap();
        assert_eq!(outputs(&network), outputs(&unchanged));
        assert!(!dir.path().join("model.safetensors.partial").exists());

        // A threshold outside 0-1 is refused when written and when read.
        let out = dir.path().join("out.safetensors");
        let e = write_operating_point(&path, &out, &operating_point(1.5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not between 0 and 1"), "{e}");
        assert!(!out.exists());
        write_entry(&path, &out, OPERATING_POINT, &operating_point(-0.1)).unwrap_err();
        assert!(!out.exists());
    }

    #[test]
    fn a_model_carries_one_operating_point_per_analysis_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved(dir.path(), "model.safetensors", 1, &info());
        let plain = operating_point(0.465);
        let mut mirrored = operating_point(0.428);
        mirrored.analysis.mirrors = 8;
        mirrored.analysis.classify_mirrors = 8;
        write_operating_point(&path, &path, &plain).unwrap();
        write_operating_point(&path, &path, &mirrored).unwrap();
        let (_, read) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(read.operating_points, vec![plain.clone(), mirrored.clone()]);
        assert_eq!(read.operating_point(mirrored.analysis), Some(&mirrored));
        let mut other = plain.analysis;
        other.stride = 64;
        assert_eq!(read.operating_point(other), None);
        // A new one for a setting replaces that setting's, in place.
        let replaced = OperatingPoint {
            min_p_nodule: 0.5,
            ..plain.clone()
        };
        write_operating_point(&path, &path, &replaced).unwrap();
        let (_, read) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(read.operating_points, vec![replaced, mirrored.clone()]);

        // A calibration of p(nodule) travels with its operating point.
        let calibrated = OperatingPoint {
            p_nodule_calibration: Some(NoduleCalibration {
                a: 4.0,
                b: -2.0,
                fitted_on: "test".into(),
            }),
            ..plain.clone()
        };
        write_operating_point(&path, &path, &calibrated).unwrap();
        let (_, read) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(read.operating_point(plain.analysis), Some(&calibrated));
        assert!(
            (calibrated.p_nodule_calibration.unwrap().apply(0.5) - platt(4.0, -2.0, 0.5)).abs()
                < 1e-15
        );

        // Files of 0.6.0 and earlier carry one object, not a list: read as one operating point.
        let old = dir.path().join("old.safetensors");
        write_entry(&path, &old, OPERATING_POINT, &plain).unwrap();
        let (_, read) = load(&old, &Device::Cpu).unwrap();
        assert_eq!(read.operating_points, vec![plain.clone()]);
        // A setting that mirrors the classification from a floor is another setting; one that
        // mirrors every finding is written as before the floor existed.
        let mut floored = mirrored.clone();
        floored.analysis.mirrors = 1;
        floored.analysis.classify_mirrors_from = 0.05;
        write_operating_point(&path, &path, &floored).unwrap();
        let (_, read) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(read.operating_point(floored.analysis), Some(&floored));
        let mut unfloored = floored.analysis;
        unfloored.classify_mirrors_from = 0.0;
        assert_eq!(read.operating_point(unfloored), None);
        let json = |a: &AnalysisSetting| serde_json::to_string(a).unwrap();
        assert!(!json(&plain.analysis).contains("classify_mirrors_from"));
        assert!(json(&floored.analysis).contains("\"classify_mirrors_from\":0.05"));
        // Two for one setting are refused on reading.
        let twice = dir.path().join("twice.safetensors");
        let e = write_entry(&path, &twice, OPERATING_POINT, &[&plain, &plain])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two operating points"), "{e}");
        assert!(!twice.exists());
    }

    #[test]
    fn training_starts_from_a_file_s_network_or_a_combined_file_s_detector() {
        let dir = tempfile::tempdir().unwrap();
        let a = saved(dir.path(), "a.safetensors", 1, &info());
        let b = saved(dir.path(), "b.safetensors", 2, &info());
        let ab = dir.path().join("ab.safetensors");
        combine(&a, &b, &ab, "ab", "1", None).unwrap();
        let started = |path: &Path| {
            let vars = VarMap::new();
            let net = Jnsc::new(
                &info().config,
                VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            )
            .unwrap();
            crate::jnsc::network::seeded_init(&vars, 9).unwrap();
            init_vars(&vars, path, &info().config).map(|_| outputs(&net))
        };
        let (a_net, _) = load(&a, &Device::Cpu).unwrap();
        assert_eq!(started(&a).unwrap(), outputs(&a_net));
        assert_eq!(started(&ab).unwrap(), outputs(&a_net));
        // Another network's file is refused by its configuration, before any weight.
        let wider = ModelInfo {
            config: Config::cpu(),
            ..info()
        };
        let other = saved(dir.path(), "other.safetensors", 3, &wider);
        let e = started(&other).unwrap_err().to_string();
        assert!(e.contains("this training's"), "{e}");
        // A refine unit is added to a file without one: the file's weights, the unit as seeded.
        let refined = Config {
            refine_width: 4,
            ..info().config
        };
        let vars = VarMap::new();
        Jnsc::new(
            &refined,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        crate::jnsc::network::seeded_init(&vars, 9).unwrap();
        init_vars(&vars, &a, &refined).unwrap();
        let (stored, _) = open(&ModelSource::File(a.clone()), &Device::Cpu).unwrap();
        let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let data = vars.data().lock().unwrap();
        let head = stored.get((1, 4, 1, 1, 1), "head.weight").unwrap();
        assert_eq!(values(data["head.weight"].as_tensor()), values(&head));
        assert_eq!(
            values(data["refine.conv2.norm.weight"].as_tensor()),
            vec![crate::jnsc::network::REFINE_GAIN as f32; 4]
        );
        drop(data);
        // Not the other way: a file with a unit does not start a training without one.
        let with_unit = saved(
            dir.path(),
            "refined.safetensors",
            4,
            &ModelInfo {
                config: refined,
                ..info()
            },
        );
        let e = started(&with_unit).unwrap_err().to_string();
        assert!(e.contains("this training's"), "{e}");
    }

    #[test]
    fn combining_refuses_nested_files_and_other_normalisations() {
        let dir = tempfile::tempdir().unwrap();
        let a = saved(dir.path(), "a.safetensors", 1, &info());
        let b = saved(dir.path(), "b.safetensors", 2, &info());
        let ab = dir.path().join("ab.safetensors");
        combine(&a, &b, &ab, "ab", "1", None).unwrap();
        let out = dir.path().join("out.safetensors");
        for (d, m) in [(&ab, &b), (&a, &ab)] {
            let e = combine(d, m, &out, "x", "1", None).unwrap_err().to_string();
            assert!(e.contains("carries a malignancy network already"), "{e}");
        }
        let other = ModelInfo {
            normalization: Normalization {
                mean: -500.0,
                ..Normalization::default()
            },
            ..info()
        };
        let c = saved(dir.path(), "c.safetensors", 3, &other);
        let e = combine(&a, &c, &out, "x", "1", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("normalisations differ"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn an_average_holds_the_mean_of_two_networks_and_drops_what_was_chosen_for_each() {
        let dir = tempfile::tempdir().unwrap();
        let chosen = ModelInfo {
            operating_points: vec![operating_point(0.5)],
            measure_fraction: Some(0.8),
            ..info()
        };
        let a = saved(dir.path(), "a.safetensors", 1, &chosen);
        let b = saved(dir.path(), "b.safetensors", 2, &info());
        let out = dir.path().join("mean.safetensors");
        let written = average(&a, &b, &out, "jnsc-mean", "0.6.0").unwrap();
        let (_, read) = load(&out, &Device::Cpu).unwrap();
        assert_eq!(read, written);
        assert_eq!(
            (read.name.as_str(), read.version.as_str()),
            ("jnsc-mean", "0.6.0")
        );
        assert!(read.operating_points.is_empty());
        assert_eq!(read.measure_fraction, None);
        assert_eq!(
            read.provenance["average_of"]["weights"],
            serde_json::json!([0.5, 0.5])
        );
        let tensors = |path: &Path| {
            let bytes = std::fs::read(path).unwrap();
            let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut named: Vec<(String, Vec<f32>)> = t
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let values = view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    (name, values)
                })
                .collect();
            named.sort_by(|x, y| x.0.cmp(&y.0));
            named
        };
        // The mean of a mean keeps the first one's record one level down.
        let again = dir.path().join("again.safetensors");
        let nested = average(&out, &b, &again, "jnsc-mean", "0.7.0").unwrap();
        assert_eq!(
            nested.provenance["average_of"]["first"]["version"],
            serde_json::json!("0.6.0")
        );
        assert_eq!(
            nested.provenance["average_of"]["first_average_of"],
            read.provenance["average_of"]
        );
        let (ta, tb, tm) = (tensors(&a), tensors(&b), tensors(&out));
        assert_eq!(tm.len(), ta.len());
        assert_ne!(ta, tb, "the two seeds give the same weights");
        assert_ne!(tm, ta);
        for ((name, m), ((_, x), (_, y))) in tm.iter().zip(ta.iter().zip(&tb)) {
            for ((m, x), y) in m.iter().zip(x).zip(y) {
                assert_eq!(*m, (x + y) * 0.5, "{name}");
            }
        }
        // Combined files, other networks and other normalisations are refused.
        let ab = dir.path().join("ab.safetensors");
        combine(&a, &b, &ab, "ab", "1", None).unwrap();
        let refused = dir.path().join("refused.safetensors");
        let e = average(&ab, &b, &refused, "x", "1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("carries two networks"), "{e}");
        let wider = saved(
            dir.path(),
            "wider.safetensors",
            3,
            &ModelInfo {
                config: Config::cpu(),
                ..info()
            },
        );
        let e = average(&a, &wider, &refused, "x", "1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("networks differ"), "{e}");
        assert!(!refused.exists());
    }
}
