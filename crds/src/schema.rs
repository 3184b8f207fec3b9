//! Schema pieces the derive cannot express: each resource's `args` schema comes from the
//! `kubeswift-args` table (so `kubectl apply` refuses a misspelt argument or a wrongly typed
//! value), and the CEL rules of `rules.rs` are attached to the generated CRD here.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kubeswift_args::Command;
use kubeswift_args::schema::args_schema;
use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use crate::rules::CelRule;

fn schema_of(commands: &[Command]) -> Schema {
    // args_schema always returns an object, which is always a valid schema.
    Schema::try_from(args_schema(commands)).unwrap_or_default()
}

/// `spec.args` of a SwiftTrainJob: any argument of `swift sft`, `swift pt` or `swift rlhf`
/// (the operator checks the chosen command's own set at reconcile).
pub fn train_args(_: &mut SchemaGenerator) -> Schema {
    schema_of(&[Command::Sft, Command::Pt, Command::Rlhf])
}

/// `spec.args` of a SwiftDeployment: the arguments of `swift deploy`.
pub fn deploy_args(_: &mut SchemaGenerator) -> Schema {
    schema_of(&[Command::Deploy])
}

/// `spec.args` of a SwiftSampleJob: the arguments of `swift sample`.
pub fn sample_args(_: &mut SchemaGenerator) -> Schema {
    schema_of(&[Command::Sample])
}

/// The openAPIV3Schema of the CRD's only version, as JSON.
pub fn openapi_schema(crd: &CustomResourceDefinition) -> Option<Value> {
    let version = crd.spec.versions.first()?;
    let schema = version.schema.as_ref()?.open_api_v3_schema.as_ref()?;
    serde_json::to_value(schema).ok()
}

/// The names of `spec`'s properties in the CRD schema.
pub fn spec_fields(crd: &CustomResourceDefinition) -> Vec<String> {
    openapi_schema(crd)
        .and_then(|s| {
            s.pointer("/properties/spec/properties")
                .and_then(Value::as_object)
                .map(|props| props.keys().cloned().collect())
        })
        .unwrap_or_default()
}

/// The schema node at a dotted path (`""` is the root, `spec.env` is `spec`'s `env`).
fn node_mut<'a>(root: &'a mut Value, at: &str) -> Option<&'a mut Value> {
    let mut node = root;
    for part in at.split('.').filter(|p| !p.is_empty()) {
        node = node.get_mut("properties")?.get_mut(part)?;
    }
    Some(node)
}

/// Attaches `rules` to the CRD's schema. Fails (naming the path) when a rule points at a
/// node the schema does not have, so a renamed field cannot silently drop its rule.
pub fn attach_rules(
    crd: &mut CustomResourceDefinition,
    rules: &[CelRule],
) -> Result<(), crate::CrdError> {
    let kind = crd.spec.names.kind.clone();
    let mut schema = openapi_schema(crd).ok_or_else(|| crate::CrdError::NoSchema(kind.clone()))?;
    for rule in rules {
        let node = node_mut(&mut schema, &rule.at).ok_or_else(|| crate::CrdError::NoNode {
            kind: kind.clone(),
            at: rule.at.clone(),
        })?;
        let Value::Object(map) = node else {
            return Err(crate::CrdError::NoNode {
                kind: kind.clone(),
                at: rule.at.clone(),
            });
        };
        let list = map
            .entry("x-kubernetes-validations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = list {
            items.push(rule.to_json());
        }
    }
    let version = crd
        .spec
        .versions
        .first_mut()
        .ok_or_else(|| crate::CrdError::NoSchema(kind.clone()))?;
    let parsed = serde_json::from_value(schema).map_err(|e| crate::CrdError::Json {
        kind: kind.clone(),
        source: e,
    })?;
    if let Some(validation) = version.schema.as_mut() {
        validation.open_api_v3_schema = Some(parsed);
    }
    Ok(())
}

/// Sets a schema extension (`x-kubernetes-*`) on the node at `at`.
pub fn set_extension(
    crd: &mut CustomResourceDefinition,
    at: &str,
    key: &str,
    value: Value,
) -> Result<(), crate::CrdError> {
    let kind = crd.spec.names.kind.clone();
    let mut schema = openapi_schema(crd).ok_or_else(|| crate::CrdError::NoSchema(kind.clone()))?;
    let node = node_mut(&mut schema, at).ok_or_else(|| crate::CrdError::NoNode {
        kind: kind.clone(),
        at: at.to_string(),
    })?;
    if let Value::Object(map) = node {
        map.insert(key.to_string(), value);
    }
    let parsed = serde_json::from_value(schema).map_err(|e| crate::CrdError::Json {
        kind: kind.clone(),
        source: e,
    })?;
    if let Some(validation) = crd
        .spec
        .versions
        .first_mut()
        .and_then(|v| v.schema.as_mut())
    {
        validation.open_api_v3_schema = Some(parsed);
    }
    Ok(())
}
