//! Run-time choice of the compute backend: `cpu` (burn flex), `wgpu` (Vulkan/Metal/DX12) and
//! `cuda`, the last two only when built with the matching cargo feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::ModelError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Cpu,
    Wgpu,
    Cuda,
}

impl FromStr for BackendKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(BackendKind::Cpu),
            "wgpu" | "vulkan" | "metal" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            other => Err(ModelError::BackendUnavailable {
                backend: other.to_string(),
                why: "unknown backend; choose cpu, wgpu or cuda".into(),
            }),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        })
    }
}

/// The device for a backend, or a clear error when this build or machine cannot provide it.
pub fn device(kind: BackendKind) -> Result<Device, ModelError> {
    match kind {
        BackendKind::Cpu => Ok(Device::flex()),
        BackendKind::Wgpu => wgpu_device(),
        BackendKind::Cuda => cuda_device(),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, ModelError> {
    // burn panics in a device thread when no adapter exists; catch it and report it.
    let probe = std::panic::catch_unwind(|| {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let t = burn::tensor::Tensor::<1>::from_floats([1.0f32, 2.0], &dev);
        let sum: f32 = t.sum().into_scalar();
        (dev, sum)
    });
    match probe {
        Ok((dev, 3.0)) => Ok(dev),
        Ok((_, sum)) => Err(ModelError::BackendUnavailable {
            backend: "wgpu".into(),
            why: format!("self-test gave {sum}, expected 3"),
        }),
        Err(_) => Err(ModelError::BackendUnavailable {
            backend: "wgpu".into(),
            why: "no usable GPU adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers)".into(),
        }),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, ModelError> {
    Err(ModelError::BackendUnavailable {
        backend: "wgpu".into(),
        why: "this build has no wgpu support (rebuild with --features wgpu)".into(),
    })
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device, ModelError> {
    // Picking a CUDA device without a driver panics inside burn: probe for the library first.
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if !has_driver {
        return Err(ModelError::BackendUnavailable {
            backend: "cuda".into(),
            why: "libcuda.so.1 not found (no NVIDIA driver)".into(),
        });
    }
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device, ModelError> {
    Err(ModelError::BackendUnavailable { backend: "cuda".into(), why: "this build has no CUDA support (rebuild with --features cuda, which needs internet to build)".into() })
}
