//! Run-time device selection: `cpu`, `cuda` or `cuda:N` as a type (`DeviceSpec`: parsed from
//! the command line and the configuration, written back the same way), with a clear error when
//! CUDA was not compiled in (cargo feature `cuda`) or no such GPU is present; and the number
//! format the segmentation computes in (`Precision`: f32 as trained, or f16 for GPUs).

use candle_core::{DType, Device};

/// The number format the segmentation's sliding windows run in (most of an analysis' time).
/// The model is trained and shipped in f32; half precision halves the memory traffic and runs
/// the convolutions' matrix products on a GPU's tensor cores. The normalisations compute in
/// f32 whatever this says, and the findings are classified in f32. On a CPU, half precision
/// runs the network's generic (Candle) operators instead of its own f32 kernels and is about
/// 3.5 times slower: it is there to check a GPU's findings against, not to run a CPU node on.
/// (bfloat16 was tried and is not offered: its 8-bit significand lost findings and moved
/// location probabilities by 0.1; models/README.md "Half precision".)
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats, as the model was trained.
    #[default]
    F32,
    /// IEEE half precision: 11-bit significand, largest value 65504.
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

/// A device that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: use cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("device `{0}` needs CUDA, which this build lacks: rebuild with `--features cuda`")]
    NotCompiled(String),
    #[error("cannot open `{device}`: {reason} (is an NVIDIA GPU with its driver present?)")]
    Unavailable { device: String, reason: String },
}

/// A device by name, not yet opened: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A GPU by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    /// The name's syntax only (whether this build has CUDA is `check`'s question).
    fn from_str(spec: &str) -> Result<Self, DeviceError> {
        match spec {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(DeviceError::Unknown(spec.to_owned())),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = DeviceError;
    fn try_from(spec: String) -> Result<Self, DeviceError> {
        spec.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(spec: DeviceSpec) -> String {
        spec.to_string()
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Checks that this build can use the device, without opening it (so that a configuration
    /// can be validated on a machine whose GPU is busy or absent).
    pub fn check(self) -> Result<Self, DeviceError> {
        match self {
            DeviceSpec::Cuda(_) if !candle_core::utils::cuda_is_available() => {
                Err(DeviceError::NotCompiled(self.to_string()))
            }
            _ => Ok(self),
        }
    }

    /// Checks and opens the device.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self.check()? {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                Device::new_cuda(ordinal).map_err(|e| DeviceError::Unavailable {
                    device: self.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name parsed and checked, not opened.
    fn parse(spec: &str) -> Result<DeviceSpec, DeviceError> {
        spec.parse::<DeviceSpec>()?.check()
    }

    /// A name parsed and opened.
    fn select(spec: &str) -> Result<Device, DeviceError> {
        spec.parse::<DeviceSpec>()?.open()
    }

    #[test]
    fn cpu_is_always_there_and_unknown_names_are_refused() {
        assert!(select("cpu").unwrap().is_cpu());
        assert!(matches!(select("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(select("cuda:x"), Err(DeviceError::Unknown(_))));
        assert_eq!(parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert!(matches!(parse("cuda:-1"), Err(DeviceError::Unknown(_))));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    /// Validating a name opens nothing: a CUDA build parses `cuda:7` whether or not that GPU
    /// exists; opening it is `DeviceSpec::open`'s job.
    #[cfg(feature = "cuda")]
    #[test]
    fn parsing_a_gpu_name_does_not_open_it() {
        assert_eq!(parse("cuda:7").unwrap(), DeviceSpec::Cuda(7));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = select("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
