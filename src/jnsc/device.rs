//! Run-time device selection: `cpu`, `cuda` or `cuda:N`, with a clear error when CUDA was not
//! compiled in (cargo feature `cuda`) or no such GPU is present.

use candle_core::Device;

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

/// A device by name, not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// A GPU by ordinal.
    Cuda(usize),
}

/// Parses a device name, checking that this build can use it, without opening it (so that a
/// configuration can be validated on a machine whose GPU is busy or absent).
pub fn parse(spec: &str) -> Result<DeviceSpec, DeviceError> {
    let ordinal = match spec {
        "cpu" => return Ok(DeviceSpec::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(DeviceError::Unknown(spec.to_owned())),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NotCompiled(spec.to_owned()));
    }
    Ok(DeviceSpec::Cuda(ordinal))
}

/// Parses and opens a device.
pub fn select(spec: &str) -> Result<Device, DeviceError> {
    match parse(spec)? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(ordinal) => {
            Device::new_cuda(ordinal).map_err(|e| DeviceError::Unavailable {
                device: spec.to_owned(),
                reason: e.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_unknown_names_are_refused() {
        assert!(select("cpu").unwrap().is_cpu());
        assert!(matches!(select("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(select("cuda:x"), Err(DeviceError::Unknown(_))));
        assert_eq!(parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert!(matches!(parse("cuda:-1"), Err(DeviceError::Unknown(_))));
    }

    /// Validating a name opens nothing: a CUDA build parses `cuda:7` whether or not that GPU
    /// exists; opening it is `select`'s job.
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
