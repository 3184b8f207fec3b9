//! `swift-operator render -f FILE`: the children the operator would create for the
//! resources in a YAML file, printed as YAML without a cluster (for reviews and GitOps
//! previews). Children carry no owner references (the resources have no uid yet) and no
//! progress-token Secret (the operator generates it).

use kubeswift_crds::{SwiftDeployment, SwiftSampleJob, SwiftTrainJob};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::build::train::TrainInputs;
use crate::build::{BuildError, Defaults, deploy, sample, train};

/// Why a file could not be rendered; names the document.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_norway::Error,
    },
    #[error("document {index} ({kind} {name}): {source}")]
    Spec {
        index: usize,
        kind: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("document {index} ({kind} {name}): {source}")]
    Build {
        index: usize,
        kind: String,
        name: String,
        source: Box<BuildError>,
    },
    #[error("document {index}: kind '{kind}' is not a kubeswift.io resource")]
    UnknownKind { index: usize, kind: String },
    #[error("cannot write YAML: {0}")]
    Output(serde_norway::Error),
}

fn parse<T: DeserializeOwned>(
    index: usize,
    kind: &str,
    name: &str,
    doc: Value,
) -> Result<T, RenderError> {
    serde_json::from_value(doc).map_err(|source| RenderError::Spec {
        index,
        kind: kind.into(),
        name: name.into(),
        source,
    })
}

fn push<T: Serialize>(out: &mut String, obj: &T) -> Result<(), RenderError> {
    out.push_str("---\n");
    out.push_str(&serde_norway::to_string(obj).map_err(RenderError::Output)?);
    Ok(())
}

/// Renders every kubeswift resource in `text` (a multi-document YAML stream).
pub fn render(text: &str, defaults: &Defaults) -> Result<String, RenderError> {
    let mut out = String::new();
    let docs = serde_norway::Deserializer::from_str(text);
    for (index, doc) in docs.enumerate() {
        let index = index + 1;
        let doc: Value = serde::Deserialize::deserialize(doc)
            .map_err(|source| RenderError::Yaml { index, source })?;
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let build_err = |source| RenderError::Build {
            index,
            kind: kind.clone(),
            name: name.clone(),
            source: Box::new(source),
        };
        match kind.as_str() {
            "SwiftTrainJob" => {
                let job: SwiftTrainJob = parse(index, &kind, &name, doc)?;
                let inputs = TrainInputs {
                    defaults,
                    attempt: 0,
                    progress_token: None,
                    job_exists: false,
                };
                let children = train::children(&job, &inputs).map_err(build_err)?;
                push(&mut out, &children.service)?;
                push(&mut out, &children.job)?;
                if let Some(pg) = &children.pod_group {
                    push(&mut out, pg)?;
                }
            }
            "SwiftDeployment" => {
                let d: SwiftDeployment = parse(index, &kind, &name, doc)?;
                let children = deploy::children(&d, defaults).map_err(build_err)?;
                push(&mut out, &children.deployment)?;
                push(&mut out, &children.service)?;
            }
            "SwiftSampleJob" => {
                let s: SwiftSampleJob = parse(index, &kind, &name, doc)?;
                push(&mut out, &sample::job(&s, defaults).map_err(build_err)?)?;
            }
            _ => return Err(RenderError::UnknownKind { index, kind }),
        }
    }
    Ok(out)
}
