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

/// Parses and opens a device.
pub fn select(spec: &str) -> Result<Device, DeviceError> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(DeviceError::Unknown(spec.to_owned())),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NotCompiled(spec.to_owned()));
    }
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Unavailable {
        device: spec.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_unknown_names_are_refused() {
        assert!(select("cpu").unwrap().is_cpu());
        assert!(matches!(select("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(select("cuda:x"), Err(DeviceError::Unknown(_))));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = select("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
