//! The image config JSON (Docker's image spec v1.2 / OCI image config): what berth reads
//! from it, and the container config shape Docker prints in `docker image inspect`.
//!
//! An image's id is the sha256 of its config bytes, so the store keeps those bytes as they
//! came and parses them only to read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ImageRuntimeConfig;

/// Docker's `container.Config` as it appears in image configs, with every field Docker
/// prints for API 1.41 (absent fields come out as Docker's zero values).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, deserialize_with = "nullable")]
    pub hostname: String,
    #[serde(default, deserialize_with = "nullable")]
    pub domainname: String,
    #[serde(default, deserialize_with = "nullable")]
    pub user: String,
    #[serde(default, deserialize_with = "nullable")]
    pub attach_stdin: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub attach_stdout: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub attach_stderr: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tty: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub open_stdin: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub stdin_once: bool,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "nullable"
    )]
    pub args_escaped: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub image: String,
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub working_dir: String,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "nullable"
    )]
    pub network_disabled: bool,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub mac_address: String,
    #[serde(default)]
    pub on_build: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// `null` reads as the type's default (configs written by other tools use null freely).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ContainerConfig {
    /// The parts that shape a container.
    pub fn runtime(&self) -> ImageRuntimeConfig {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ImageRuntimeConfig {
            entrypoint: self.entrypoint.clone(),
            cmd: self.cmd.clone(),
            env: self.env.clone(),
            working_dir: non_empty(&self.working_dir),
            user: non_empty(&self.user),
            stop_signal: non_empty(&self.stop_signal),
            labels: self.labels.clone(),
            exposed_ports: self.exposed_ports.clone(),
            volumes: self.volumes.clone(),
            healthcheck: self.healthcheck.clone(),
        }
    }
}

/// One entry of the config's `history`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub author: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub created_by: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub comment: String,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "nullable"
    )]
    pub empty_layer: bool,
}

/// `rootfs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub diff_ids: Vec<String>,
}

/// The image config (the fields berth reads or writes; others stay in the raw bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub author: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub comment: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_config: Option<ContainerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub docker_version: String,
    #[serde(default, deserialize_with = "nullable")]
    pub history: Vec<History>,
    #[serde(default, deserialize_with = "nullable")]
    pub os: String,
    /// The legacy parent image id (images built by the classic builder).
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub parent: String,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub variant: String,
}

/// Why a config is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid image config: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid image config: rootfs type {0:?} is not \"layers\"")]
    RootFsType(String),
    #[error("invalid image config: bad diff id {0:?}")]
    DiffId(String),
    #[error("cannot load {0} image on linux")]
    Os(String),
    #[error("invalid image config: the image has {0} layers, more than the limit of {MAX_LAYERS}")]
    Layers(usize),
}

/// The most layers an image may have: dockerd's limit, which every image of the field
/// respects, and what bounds the overlay of layers each container's root stands on.
pub const MAX_LAYERS: usize = 125;

impl ImageConfig {
    /// Parses and checks a config from untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
        let config: ImageConfig = serde_json::from_slice(bytes).map_err(ConfigError::Json)?;
        if config.rootfs.kind != "layers" {
            return Err(ConfigError::RootFsType(config.rootfs.kind.clone()));
        }
        if config.rootfs.diff_ids.len() > MAX_LAYERS {
            return Err(ConfigError::Layers(config.rootfs.diff_ids.len()));
        }
        for d in &config.rootfs.diff_ids {
            match d.strip_prefix("sha256:") {
                Some(hex) if super::reference::is_full_hex_id(hex) => {}
                _ => return Err(ConfigError::DiffId(d.clone())),
            }
        }
        if !config.os.is_empty() && config.os != "linux" {
            return Err(ConfigError::Os(config.os.clone()));
        }
        Ok(config)
    }

    /// The container config, or Docker's zero value.
    pub fn container_config(&self) -> ContainerConfig {
        self.config.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_and_oci_configs() {
        let docker = br#"{"architecture":"amd64","config":{"Hostname":"","User":"","Env":null,"Cmd":["sh"],"Labels":null,"WorkingDir":"","Entrypoint":null},"created":"2026-11-23T21:40:48.13516512Z","docker_version":"20.10.24","history":[{"created":"2026-11-23T21:40:48Z","comment":"Imported from -"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:d7d6afb0fe4bcd20caadc576047f080d40528d8fbbde8b5946c87e8245e17dd8"]}}"#;
        let c = ImageConfig::parse(docker).unwrap();
        assert_eq!(c.container_config().cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.history[0].comment, "Imported from -");
        let oci = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"User":"1000","ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::parse(oci).unwrap();
        let rt = c.container_config().runtime();
        assert_eq!(rt.user.as_deref(), Some("1000"));
        assert!(rt.exposed_ports.unwrap().contains_key("80/tcp"));
        assert_eq!(rt.working_dir, None);
        // Docker prints the whole struct.
        let v = serde_json::to_value(c.container_config()).unwrap();
        assert_eq!(v["Hostname"], "");
        assert_eq!(v["Cmd"], serde_json::Value::Null);
        assert!(v.get("Healthcheck").is_none());
    }

    #[test]
    fn refuses_bad_configs() {
        assert!(ImageConfig::parse(b"[]").is_err());
        assert!(ImageConfig::parse(br#"{"rootfs":{"type":"x","diff_ids":[]}}"#).is_err());
        assert!(
            ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":["sha256:xyz"]}}"#)
                .is_err()
        );
        let win = br#"{"os":"windows","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(
            ImageConfig::parse(win).unwrap_err().to_string(),
            "cannot load windows image on linux"
        );
        let layers = |n: usize| {
            let ids = vec![format!("\"sha256:{}\"", "a".repeat(64)); n].join(",");
            format!(r#"{{"rootfs":{{"type":"layers","diff_ids":[{ids}]}}}}"#)
        };
        assert!(ImageConfig::parse(layers(MAX_LAYERS).as_bytes()).is_ok());
        assert_eq!(
            ImageConfig::parse(layers(126).as_bytes())
                .unwrap_err()
                .to_string(),
            "invalid image config: the image has 126 layers, more than the limit of 125"
        );
    }
}
