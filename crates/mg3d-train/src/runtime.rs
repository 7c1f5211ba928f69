//! Device selection and a description of the libtorch runtime.

use serde_json::{Value, json};
use tch::{Cuda, Device};

/// Errors choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The spec is not one of cpu, cuda, cuda:N, auto.
    #[error("unknown device {0:?}; use cpu, cuda, cuda:N or auto")]
    Unknown(String),
    /// CUDA was asked for and is not there.
    #[error(
        "device {0:?} requested but CUDA is not available (libtorch sees {1} GPU(s)); use device = \"cpu\" or \"auto\""
    )]
    Unavailable(String, i64),
}

/// Parses a device spec: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (GPU 0 when present, else CPU).
pub fn pick_device(spec: &str) -> Result<Device, DeviceError> {
    let n = Cuda::device_count();
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        s => {
            let idx = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|i| i.parse::<i64>().ok())
                    .ok_or_else(|| DeviceError::Unknown(s.to_string()))?,
                None => return Err(DeviceError::Unknown(s.to_string())),
            };
            if idx < n {
                Ok(Device::Cuda(idx as usize))
            } else {
                Err(DeviceError::Unavailable(s.to_string(), n))
            }
        }
    }
}

/// What libtorch offers here: CUDA and cuDNN availability, GPU count, CPU threads, MKL/OpenMP.
pub fn describe() -> Value {
    json!({
        "libtorch_expected": "2.11.0",
        "cuda_available": Cuda::is_available(),
        "cudnn_available": Cuda::cudnn_is_available(),
        "gpus": Cuda::device_count(),
        "cpu_threads": tch::get_num_threads(),
        "mkl": tch::utils::has_mkl(),
        "openmp": tch::utils::has_openmp(),
    })
}
