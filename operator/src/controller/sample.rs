//! SwiftSampleJob reconcile: apply the Indexed Job (suspend propagated), count finished
//! shards into status, delete after the TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use kubeswift_crds::common::{condition as ct, reason};
use kubeswift_crds::{Phase, SwiftSampleJob, SwiftSampleJobStatus, names};
use serde_json::json;

use crate::build::labels::SPEC_HASH;
use crate::build::sample;
use crate::controller::conditions::{self, Set};
use crate::controller::train::{GangState, gang_state};
use crate::controller::{Context, Error, apply, ns_name, ttl_cleanup};

/// One reconcile of a sample job.
pub async fn reconcile(s: Arc<SwiftSampleJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&s, &ctx).await;
    ctx.metrics.reconciled("sample", started.elapsed());
    if let Some(phase) = s.status.as_ref().and_then(|st| st.phase) {
        ctx.metrics
            .set_phase("sample", &s.name_any(), s.namespace().as_deref(), phase);
    }
    result
}

async fn reconcile_inner(s: &SwiftSampleJob, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(s)?;
    let now = ctx.now();
    let generation = s.metadata.generation;
    let api: Api<SwiftSampleJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let old = s.status.clone().unwrap_or_default();
    let mut status = old.clone();
    if old.phase.is_some_and(Phase::is_finished) {
        let done = old.completion_time.as_ref().map(|t| t.0);
        return ttl_cleanup(&api, s, s.spec.ttl_seconds_after_finished, done, now).await;
    }
    let fail = |status: &mut SwiftSampleJobStatus, why: &str, message: String| {
        conditions::set(
            &mut status.conditions,
            Set {
                type_: ct::FAILED,
                status: true,
                reason: why,
                message,
            },
            generation,
            now,
        );
        conditions::clear(&mut status.conditions, ct::RUNNING, why, generation, now);
        status.phase = Some(Phase::Failed);
        status.completion_time.get_or_insert(Time(now));
    };
    let desired = match sample::job(s, &ctx.defaults) {
        Ok(j) => j,
        Err(e) => {
            fail(&mut status, e.reason(), e.to_string());
            if old.phase != Some(Phase::Failed) {
                ctx.event(s, EventType::Warning, e.reason(), e.to_string())
                    .await;
            }
            write_status(&api, &name, &old, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let job_name = names::sample_job(&name);
    let current = match jobs.get_opt(&job_name).await? {
        None => {
            let created = apply::apply(&jobs, &desired).await?;
            ctx.event(
                s,
                EventType::Normal,
                "Created",
                format!("created Job {job_name} with {} shards", s.spec.shards),
            )
            .await;
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::CREATED,
                    status: true,
                    reason: reason::CHILDREN_CREATED,
                    message: format!("Job {job_name}"),
                },
                generation,
                now,
            );
            created
        }
        Some(j) if j.annotations().get(SPEC_HASH) != desired.annotations().get(SPEC_HASH) => {
            if gang_state(&j) == GangState::Suspended && old.start_time.is_none() {
                apply::delete(&jobs, &job_name, false).await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            j
        }
        Some(j) if j.spec.as_ref().and_then(|x| x.suspend) != Some(s.spec.suspend) => {
            apply::apply(&jobs, &desired).await?
        }
        Some(j) => j,
    };
    let js = current.status.clone().unwrap_or_default();
    status.shards_succeeded = js.succeeded.unwrap_or(0);
    status.shards_failed = js.failed_indexes.as_deref().map(count_indexes).unwrap_or(0);
    status.shards_done = Some(format!("{}/{}", status.shards_succeeded, s.spec.shards));
    let mut requeue = Duration::from_secs(300);
    match gang_state(&current) {
        GangState::Suspended => {
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::SUSPENDED,
                    status: true,
                    reason: reason::SUSPENDED,
                    message: "spec.suspend is true".into(),
                },
                generation,
                now,
            );
            status.phase = Some(Phase::Suspended);
        }
        GangState::Pending => {
            conditions::clear(
                &mut status.conditions,
                ct::SUSPENDED,
                reason::RESUMED,
                generation,
                now,
            );
            status.phase = Some(Phase::Pending);
            requeue = Duration::from_secs(10);
        }
        GangState::Running { active } => {
            conditions::clear(
                &mut status.conditions,
                ct::SUSPENDED,
                reason::RESUMED,
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::RUNNING,
                    status: true,
                    reason: reason::PODS_RUNNING,
                    message: format!("{active} shards running"),
                },
                generation,
                now,
            );
            status.start_time.get_or_insert(Time(now));
            status.phase = Some(Phase::Running);
        }
        GangState::Succeeded => {
            conditions::clear(
                &mut status.conditions,
                ct::RUNNING,
                reason::COMPLETED,
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::SUCCEEDED,
                    status: true,
                    reason: reason::COMPLETED,
                    message: format!("{} shards done", status.shards_succeeded),
                },
                generation,
                now,
            );
            status.phase = Some(Phase::Succeeded);
            status.completion_time.get_or_insert(Time(now));
            ctx.event(
                s,
                EventType::Normal,
                reason::COMPLETED,
                "all shards finished".into(),
            )
            .await;
            requeue = Duration::from_secs(1);
        }
        GangState::Failed {
            reason: why,
            message,
        } => {
            let r = match why.as_str() {
                "DeadlineExceeded" => reason::DEADLINE_EXCEEDED,
                "BackoffLimitExceeded" => reason::BACKOFF_LIMIT_EXCEEDED,
                _ => reason::SHARDS_FAILED,
            };
            let m = format!(
                "{why}: {message} (failed shards: {})",
                js.failed_indexes.unwrap_or_default()
            );
            ctx.event(s, EventType::Warning, r, m.clone()).await;
            fail(&mut status, r, m);
            requeue = Duration::from_secs(1);
        }
    }
    status.observed_generation = generation;
    write_status(&api, &name, &old, &status).await?;
    Ok(Action::requeue(requeue))
}

/// Counts the indexes of a Job's `failedIndexes` (`1,3-5` is 4).
pub fn count_indexes(list: &str) -> i32 {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => {
                b.trim().parse::<i32>().unwrap_or(0) - a.trim().parse::<i32>().unwrap_or(0) + 1
            }
            None => 1,
        })
        .sum()
}

async fn write_status(
    api: &Api<SwiftSampleJob>,
    name: &str,
    old: &SwiftSampleJobStatus,
    new: &SwiftSampleJobStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": new })),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_index_lists() {
        assert_eq!(super::count_indexes(""), 0);
        assert_eq!(super::count_indexes("2"), 1);
        assert_eq!(super::count_indexes("1,3-5"), 4);
    }
}
