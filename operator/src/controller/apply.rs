//! The only ways the reconcilers write children: server-side apply with the operator's
//! field manager (force, so the operator's fields always win), and deletion.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::labels::FIELD_MANAGER;
use crate::controller::Error;

/// Server-side applies `obj` (its namespace and name taken from it).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = obj.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// Deletes `name`, waiting for nothing; a missing object counts as deleted. `foreground`
/// keeps the object until its dependents (a Job's pods) are gone, so a restarted gang never
/// overlaps the old one.
pub async fn delete<K>(api: &Api<K>, name: &str, foreground: bool) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = if foreground {
        DeleteParams::foreground()
    } else {
        DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
