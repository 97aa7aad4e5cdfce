//! Where a model runs and the float type its weights take there, as the user names them
//! (`cpu`, `cuda:1`; `bf16`), parsed once into types.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// A device by name: `cpu`, `cuda` (the default GPU, or the rank's own in a multi-GPU run) or
/// `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(Option<usize>),
}

impl DeviceSpec {
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// The device of one rank of a data-parallel run: plain `cuda` means the GPU of the rank's
    /// index on its node when there are several ranks.
    pub fn for_rank(self, world_size: usize, local_rank: usize) -> Self {
        match self {
            Self::Cuda(None) if world_size > 1 => Self::Cuda(Some(local_rank)),
            other => other,
        }
    }

    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| {
                Error::Input(format!(
                    "cannot open {self} (was dlm built with --features cuda?): {e}"
                ))
            }),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "cpu" {
            return Ok(Self::Cpu);
        }
        match s.strip_prefix("cuda") {
            Some("") => Ok(Self::Cuda(None)),
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .map(|n| Self::Cuda(Some(n)))
                .ok_or_else(|| format!("bad device `{s}` (expected cpu, cuda or cuda:N)")),
            None => Err(format!(
                "unknown device `{s}` (expected cpu, cuda or cuda:N)"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// The float type weights are converted to on load (or stored in): f32, bf16 or f16.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, bf16 or f16)"
            )),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dtype().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for name in ["cpu", "cuda", "cuda:3"] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap().to_string(), name);
        }
        assert!("cuda:x"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("bad device"));
        assert!("tpu"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("unknown device"));
        let cuda = DeviceSpec::Cuda(None);
        assert_eq!(cuda.for_rank(2, 1), DeviceSpec::Cuda(Some(1)));
        assert_eq!(cuda.for_rank(1, 1), cuda);
        assert_eq!("bfloat16".parse::<WeightDtype>(), Ok(WeightDtype::Bf16));
        assert_eq!(WeightDtype::F16.to_string(), "f16");
        assert!("f64"
            .parse::<WeightDtype>()
            .unwrap_err()
            .contains("unknown dtype"));
    }
}
