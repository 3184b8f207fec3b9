//! Storage URIs to `swift` arguments, volumes and credentials. `pvc://claim/path` mounts the
//! claim at `/mnt/pvc/<claim>` and passes the mounted path; `s3://`, `gs://`, `az://` URIs
//! and hub ids are passed through (the runtime's storage layer reads them), with the
//! credentials Secret's keys as environment variables.

use k8s_openapi::api::core::v1::{
    EnvFromSource, PersistentVolumeClaimVolumeSource, SecretEnvSource, Volume, VolumeMount,
};
use kubeswift_crds::Storage;
use serde_json::Value;

use crate::build::BuildError;
use crate::build::argv::ArgList;

/// Where `pvc://` claims are mounted in the `swift` container.
pub const PVC_ROOT: &str = "/mnt/pvc";

/// What storage adds to a pod besides arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mounts {
    pub volumes: Vec<Volume>,
    pub volume_mounts: Vec<VolumeMount>,
    pub env_from: Vec<EnvFromSource>,
}

impl Mounts {
    /// The local path for `uri`, mounting its claim when it is a `pvc://` URI.
    pub fn resolve(&mut self, uri: &str, field: &str) -> Result<String, BuildError> {
        let Some(rest) = uri.strip_prefix("pvc://") else {
            return Ok(uri.to_string());
        };
        let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
        if claim.is_empty() || !kubeswift_crds::names::is_dns1035_label(claim) && !is_dns1123(claim)
        {
            return Err(BuildError::invalid(
                field,
                format!("'{uri}' must be pvc://<claim>/<path> with a valid claim name"),
            ));
        }
        let volume = format!("pvc-{claim}");
        // Volume names are DNS labels; a 63-character claim would overflow with the prefix.
        let volume: String = volume
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string();
        let mount_path = format!("{PVC_ROOT}/{claim}");
        if !self.volumes.iter().any(|v| v.name == volume) {
            self.volumes.push(Volume {
                name: volume.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_string(),
                    read_only: None,
                }),
                ..Default::default()
            });
            self.volume_mounts.push(VolumeMount {
                name: volume,
                mount_path: mount_path.clone(),
                ..Default::default()
            });
        }
        let path = path.trim_matches('/');
        Ok(if path.is_empty() {
            mount_path
        } else {
            format!("{mount_path}/{path}")
        })
    }
}

fn is_dns1123(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Adds `--model`, `--dataset` and (when `output_arg` is set) `--output_dir` from `storage`,
/// and the credentials. Returns the resolved output root, if any.
pub fn apply(
    storage: Option<&Storage>,
    args: &mut ArgList,
    mounts: &mut Mounts,
    output_arg: Option<&str>,
) -> Result<Option<String>, BuildError> {
    let Some(storage) = storage else {
        return Ok(None);
    };
    if let Some(model) = &storage.model {
        let path = mounts.resolve(model, "spec.storage.model")?;
        args.add_from("model", Value::from(path), "spec.storage.model")?;
    }
    if !storage.dataset.is_empty() {
        let paths = storage
            .dataset
            .iter()
            .enumerate()
            .map(|(i, d)| mounts.resolve(d, &format!("spec.storage.dataset[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        args.add_from("dataset", Value::from(paths), "spec.storage.dataset")?;
    }
    let mut output = None;
    if let (Some(uri), Some(arg)) = (&storage.output, output_arg) {
        let path = mounts.resolve(uri, "spec.storage.output")?;
        args.add_from(arg, Value::from(path.clone()), "spec.storage.output")?;
        output = Some(path);
    }
    if let Some(secret) = &storage.credentials_secret_ref {
        mounts.env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.name.clone(),
                optional: None,
            }),
            ..Default::default()
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::LocalObjectReference;
    use serde_json::json;

    #[test]
    fn pvc_uris_mount_their_claim_once() {
        let storage = Storage {
            model: Some("pvc://models/qwen/0.5b".into()),
            dataset: vec![
                "pvc://models/data/a.jsonl".into(),
                "s3://bucket/b.jsonl".into(),
            ],
            output: Some("s3://bucket/out".into()),
            credentials_secret_ref: Some(LocalObjectReference {
                name: "s3-creds".into(),
            }),
        };
        let mut args = ArgList::default();
        let mut mounts = Mounts::default();
        let out = apply(Some(&storage), &mut args, &mut mounts, Some("output_dir")).unwrap();
        assert_eq!(out.as_deref(), Some("s3://bucket/out"));
        assert_eq!(args.get("model"), Some(&json!("/mnt/pvc/models/qwen/0.5b")));
        assert_eq!(
            args.get("dataset"),
            Some(&json!([
                "/mnt/pvc/models/data/a.jsonl",
                "s3://bucket/b.jsonl"
            ]))
        );
        assert_eq!(mounts.volumes.len(), 1);
        assert_eq!(mounts.volumes[0].name, "pvc-models");
        assert_eq!(mounts.volume_mounts[0].mount_path, "/mnt/pvc/models");
        assert_eq!(
            mounts.env_from[0].secret_ref.as_ref().unwrap().name,
            "s3-creds"
        );
    }

    #[test]
    fn bad_pvc_uris_name_the_field() {
        let mut mounts = Mounts::default();
        let err = mounts
            .resolve("pvc:///path", "spec.storage.model")
            .unwrap_err();
        assert!(err.to_string().starts_with("spec.storage.model:"), "{err}");
        assert_eq!(mounts.resolve("pvc://c", "f").unwrap(), "/mnt/pvc/c");
    }
}
