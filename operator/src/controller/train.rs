//! SwiftTrainJob reconcile: apply the Service, the progress Secret, the PodGroup and the
//! gang's Job; read the Job back into phase and conditions; restart a failed gang whole
//! (new Job, resuming from the last checkpoint) until `maxRestarts`; enforce the deadline
//! across restarts; poll progress; delete after the TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use kubeswift_crds::common::{condition as ct, reason};
use kubeswift_crds::{Phase, SwiftTrainJob, SwiftTrainJobStatus, names};
use serde_json::json;
use tracing::info;

use crate::build::labels::{self, ATTEMPT, COMPLETION_INDEX, SPEC_HASH, TRAIN_JOB};
use crate::build::train::{TrainInputs, children};
use crate::controller::conditions::{self, Set};
use crate::controller::{Context, Error, apply, ns_name, ttl_cleanup};
use crate::progress::{self, Target};

/// What the gang's Job says.
#[derive(Debug, Clone, PartialEq)]
pub enum GangState {
    /// No pods have started yet.
    Pending,
    Running {
        active: i32,
    },
    Suspended,
    Succeeded,
    /// The Job failed; `reason` is the Job's Failed condition reason.
    Failed {
        reason: String,
        message: String,
    },
}

fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Reads a Job's state (pure: tested without a cluster).
pub fn gang_state(job: &Job) -> GangState {
    if job_condition(job, "Complete").is_some() {
        return GangState::Succeeded;
    }
    if let Some(c) = job_condition(job, "Failed") {
        return GangState::Failed {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return GangState::Suspended;
    }
    let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
    if active > 0 {
        GangState::Running { active }
    } else {
        GangState::Pending
    }
}

/// Every terminated container of `pods`, with its pod's name, in pod order.
fn terminated(pods: &[Pod]) -> impl Iterator<Item = (String, &ContainerStateTerminated)> {
    pods.iter().flat_map(|p| {
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        statuses.into_iter().flatten().filter_map(move |s| {
            let t = s.state.as_ref()?.terminated.as_ref()?;
            Some((p.name_any(), t))
        })
    })
}

/// The pod whose container failed first in cause (see `kubeswift_args::exit::root_cause`:
/// a pod OOM-killed or failing on its own error, not the pods whose workers stopped because
/// it did, nor those the teardown stopped), its exit code and the cause its termination
/// message gives: what a user needs to find why a gang failed.
pub fn failed_pod(pods: &[Pod]) -> Option<(String, i32, String)> {
    let failed: Vec<_> = terminated(pods).filter(|(_, t)| t.exit_code != 0).collect();
    let (pod, t) = failed.get(kubeswift_args::exit::root_cause(
        failed.iter().map(|(_, t)| t.exit_code),
    )?)?;
    let cause = failure_cause(t.message.as_deref().unwrap_or_default());
    Some((pod.clone(), t.exit_code, cause))
}

/// What a failed container's termination message says of the cause: the final report's
/// `error`, or, for a message that is no report (the kubelet's log tail under
/// FallbackToLogsOnError), its last line; nothing for a report without an error.
fn failure_cause(message: &str) -> String {
    match kubeswift_crds::ProgressReport::parse(message) {
        Some(report) => report.error.unwrap_or_default(),
        None => message
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// "pod P exited with code C (cause)", or the Job's own words when no pod says more.
fn gang_failure(pods: &[Pod], why: &str, message: &str) -> String {
    match failed_pod(pods) {
        Some((pod, code, cause)) if cause.is_empty() => {
            format!("pod {pod} exited with code {code}; {why}: {message}")
        }
        Some((pod, code, cause)) => {
            format!("pod {pod} exited with code {code} ({cause}); {why}: {message}")
        }
        None => format!("{why}: {message}"),
    }
}

/// The pod whose container exited with one of `codes`, and the code.
fn fatal_exit(pods: &[Pod], codes: &[i32]) -> Option<(String, i32)> {
    terminated(pods)
        .find(|(_, t)| codes.contains(&t.exit_code))
        .map(|(pod, t)| (pod, t.exit_code))
}

struct Apis {
    jobs: Api<Job>,
    pods: Api<Pod>,
    services: Api<Service>,
    secrets: Api<Secret>,
    trains: Api<SwiftTrainJob>,
}

/// One reconcile of a training job.
pub async fn reconcile(job: Arc<SwiftTrainJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&job, &ctx).await;
    ctx.metrics.reconciled("train", started.elapsed());
    if let Some(phase) = job.status.as_ref().and_then(|s| s.phase) {
        ctx.metrics
            .set_phase("train", &job.name_any(), job.namespace().as_deref(), phase);
    }
    result
}

async fn reconcile_inner(job: &SwiftTrainJob, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(job)?;
    let client = ctx.client.clone();
    let apis = Apis {
        jobs: Api::namespaced(client.clone(), &ns),
        pods: Api::namespaced(client.clone(), &ns),
        services: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        trains: Api::namespaced(client.clone(), &ns),
    };
    let now = ctx.now();
    let old = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;

    // A finished job only waits for its TTL.
    if old.phase.is_some_and(Phase::is_finished) {
        let done = old.completion_time.as_ref().map(|t| t.0);
        return ttl_cleanup(
            &apis.trains,
            job,
            job.spec.ttl_seconds_after_finished,
            done,
            now,
        )
        .await;
    }

    let job_name = names::train_job(&name);
    let existing = apis.jobs.get_opt(&job_name).await?;
    let token = progress::token(&ctx.progress_key, job.uid().as_deref().unwrap_or_default());
    let inputs = TrainInputs {
        defaults: &ctx.defaults,
        attempt: old.restarts,
        progress_token: Some(token.clone()),
        job_exists: existing.is_some(),
    };
    let mut status = old.clone();
    let desired = match children(job, &inputs) {
        Ok(d) => d,
        Err(e) => {
            // The spec cannot work as written: say so once, do not retry.
            fail(&mut status, e.reason(), e.to_string(), generation, now);
            if old.phase != Some(Phase::Failed) {
                ctx.event(job, EventType::Warning, e.reason(), e.to_string())
                    .await;
            }
            write_status(&apis.trains, &name, &old, &status).await?;
            return Ok(Action::await_change());
        }
    };

    // The deadline counts across restarts, from the first start.
    if let (Some(deadline), Some(start)) =
        (job.spec.active_deadline_seconds, old.start_time.as_ref())
        && now.as_second() - start.0.as_second() >= deadline
    {
        {
            apply::delete(&apis.jobs, &job_name, false).await?;
            let message = format!("the job ran longer than activeDeadlineSeconds={deadline}");
            fail(
                &mut status,
                reason::DEADLINE_EXCEEDED,
                message.clone(),
                generation,
                now,
            );
            ctx.event(job, EventType::Warning, reason::DEADLINE_EXCEEDED, message)
                .await;
            write_status(&apis.trains, &name, &old, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }

    apply::apply(&apis.services, &desired.service).await?;
    if let Some(secret) = &desired.progress_secret {
        apply::apply(&apis.secrets, secret).await?;
    }
    if let Some(pg) = &desired.pod_group {
        let resource = match job.spec.scheduling.as_ref().map(|s| s.gang) {
            Some(kubeswift_crds::Gang::Volcano) => crate::build::scheduling::volcano_pod_group(),
            _ => crate::build::scheduling::coscheduling_pod_group(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        api.patch(
            &pg.name_any(),
            &PatchParams::apply(labels::FIELD_MANAGER).force(),
            &Patch::Apply(pg),
        )
        .await?;
    }

    let Some(current) = existing else {
        // The cached resource may predate our own restart count update: check before
        // creating, or the new gang would carry the old attempt number.
        let fresh = apis.trains.get(&name).await?;
        if fresh.status.map(|s| s.restarts).unwrap_or(0) != old.restarts {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        apply::apply(&apis.jobs, &desired.job).await?;
        let (why, note) = if old.restarts == 0 {
            (
                reason::CHILDREN_CREATED,
                format!("created Service {name} and Job {job_name}"),
            )
        } else {
            (
                reason::GANG_FAILED,
                format!(
                    "restarted the gang (restart {}), resuming from the last checkpoint",
                    old.restarts
                ),
            )
        };
        ctx.event(
            job,
            EventType::Normal,
            if old.restarts == 0 {
                "Created"
            } else {
                "Restarted"
            },
            note.clone(),
        )
        .await;
        conditions::set(
            &mut status.conditions,
            Set {
                type_: ct::CREATED,
                status: true,
                reason: why,
                message: note,
            },
            generation,
            now,
        );
        set_phase(
            &mut status,
            if job.spec.suspend {
                Phase::Suspended
            } else if old.restarts > 0 {
                Phase::Restarting
            } else {
                Phase::Pending
            },
        );
        write_status(&apis.trains, &name, &old, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    };

    // The old gang of a restart is still going away: wait for its pods to be gone.
    if current.metadata.deletion_timestamp.is_some() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let current_attempt: i32 = current
        .labels()
        .get(ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    if current_attempt > old.restarts {
        // Our cached status is older than the Job: wait for the watch to catch up.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if current_attempt < old.restarts {
        // The failed gang of the previous attempt: remove it (pods first) before the new one.
        apply::delete(&apis.jobs, &job_name, true).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let desired_hash = desired.job.annotations().get(SPEC_HASH).cloned();
    let state = gang_state(&current);
    if current.annotations().get(SPEC_HASH) != desired_hash.as_ref() {
        // Only a Job without running pods is replaced (the CEL rules allow spec edits only
        // while suspended and never started); a running gang keeps its template.
        if matches!(state, GangState::Suspended | GangState::Pending) && old.start_time.is_none() {
            info!(job = %name, "spec changed while suspended: replacing the Job");
            apply::delete(&apis.jobs, &job_name, false).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    } else if desired
        .job
        .spec
        .as_ref()
        .and_then(|s| s.suspend)
        .is_some_and(|s| Some(s) != current.spec.as_ref().and_then(|c| c.suspend))
    {
        apply::apply(&apis.jobs, &desired.job).await?;
        let (r, note) = if job.spec.suspend {
            (reason::SUSPENDED, "suspended: the gang's pods stop")
        } else {
            (reason::RESUMED, "resumed from the last checkpoint")
        };
        ctx.event(job, EventType::Normal, r, note.into()).await;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    conditions::set(
        &mut status.conditions,
        Set {
            type_: ct::CREATED,
            status: true,
            reason: reason::CHILDREN_CREATED,
            message: format!("Service {name}, Job {job_name}"),
        },
        generation,
        now,
    );
    let mut requeue = Duration::from_secs(300);
    match state {
        GangState::Suspended => {
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::SUSPENDED,
                    status: true,
                    reason: reason::SUSPENDED,
                    message: "spec.suspend is true (or the queue has not admitted the job yet)"
                        .into(),
                },
                generation,
                now,
            );
            conditions::clear(
                &mut status.conditions,
                ct::RUNNING,
                reason::SUSPENDED,
                generation,
                now,
            );
            set_phase(&mut status, Phase::Suspended);
        }
        GangState::Pending => {
            conditions::clear(
                &mut status.conditions,
                ct::SUSPENDED,
                reason::RESUMED,
                generation,
                now,
            );
            if status.phase != Some(Phase::Restarting) {
                set_phase(&mut status, Phase::Pending);
            }
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
            conditions::clear(
                &mut status.conditions,
                ct::RESTARTING,
                reason::PODS_RUNNING,
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::RUNNING,
                    status: true,
                    reason: reason::PODS_RUNNING,
                    message: format!("{active}/{} nodes running", job.spec.num_nodes),
                },
                generation,
                now,
            );
            if status.start_time.is_none() {
                status.start_time = Some(Time(now));
            }
            set_phase(&mut status, Phase::Running);
            let target = Target {
                namespace: ns.clone(),
                job: name.clone(),
                token,
            };
            match ctx.progress.fetch(&target).await {
                Ok(Some(report)) => status.progress = Some(progress::to_status(&report, now)),
                Ok(None) => {}
                Err(e) => tracing::debug!(job = %name, error = %e, "progress not available"),
            }
            requeue = ctx.progress_interval;
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
                    message: "all nodes finished".into(),
                },
                generation,
                now,
            );
            status.completion_time = Some(Time(now));
            set_phase(&mut status, Phase::Succeeded);
            if let Some(report) = final_report(&apis.pods, &name).await? {
                status.progress = Some(progress::to_status(&report, now));
            }
            ctx.event(
                job,
                EventType::Normal,
                reason::COMPLETED,
                "training finished".into(),
            )
            .await;
            requeue = Duration::from_secs(1);
        }
        GangState::Failed {
            reason: why,
            message,
        } => {
            let policy = job.spec.failure_policy.clone().unwrap_or_default();
            let pods = apis
                .pods
                .list(&ListParams::default().labels(&labels::to_selector_string(
                    &labels::selector(TRAIN_JOB, &name),
                )))
                .await?
                .items;
            if let Some(report) = final_report(&apis.pods, &name).await? {
                status.progress = Some(progress::to_status(&report, now));
            }
            let fatal = fatal_exit(&pods, &policy.fail_on_exit_codes);
            if why == "DeadlineExceeded" {
                fail(
                    &mut status,
                    reason::DEADLINE_EXCEEDED,
                    message,
                    generation,
                    now,
                );
            } else if let Some((pod, code)) = fatal {
                let m = format!(
                    "pod {pod} exited with code {code}, which spec.failurePolicy.failOnExitCodes fails at once"
                );
                ctx.event(job, EventType::Warning, reason::EXIT_CODE, m.clone())
                    .await;
                fail(&mut status, reason::EXIT_CODE, m, generation, now);
            } else if old.restarts < policy.max_restarts {
                // Count the restart before deleting, so a crash in between cannot lose it.
                status.restarts = old.restarts + 1;
                let m = format!(
                    "the gang failed ({}); restart {} of {}",
                    gang_failure(&pods, &why, &message),
                    status.restarts,
                    policy.max_restarts
                );
                conditions::set(
                    &mut status.conditions,
                    Set {
                        type_: ct::RESTARTING,
                        status: true,
                        reason: reason::GANG_FAILED,
                        message: m.clone(),
                    },
                    generation,
                    now,
                );
                conditions::clear(
                    &mut status.conditions,
                    ct::RUNNING,
                    reason::GANG_FAILED,
                    generation,
                    now,
                );
                set_phase(&mut status, Phase::Restarting);
                write_status(&apis.trains, &name, &old, &status).await?;
                ctx.event(job, EventType::Warning, "Restarting", m).await;
                apply::delete(&apis.jobs, &job_name, true).await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            } else {
                let m = format!(
                    "the gang failed {} times (last: {}); spec.failurePolicy.maxRestarts is {}",
                    old.restarts + 1,
                    gang_failure(&pods, &why, &message),
                    policy.max_restarts
                );
                ctx.event(
                    job,
                    EventType::Warning,
                    reason::BACKOFF_LIMIT_EXCEEDED,
                    m.clone(),
                )
                .await;
                fail(
                    &mut status,
                    reason::BACKOFF_LIMIT_EXCEEDED,
                    m,
                    generation,
                    now,
                );
            }
            requeue = Duration::from_secs(1);
        }
    }
    if let (Some(deadline), Some(start)) =
        (job.spec.active_deadline_seconds, status.start_time.as_ref())
    {
        let left = deadline - (now.as_second() - start.0.as_second());
        requeue = requeue.min(Duration::from_secs(left.max(1) as u64));
    }
    status.observed_generation = generation;
    write_status(&apis.trains, &name, &old, &status).await?;
    Ok(Action::requeue(requeue))
}

/// Node 0's final report, if its pod left one.
async fn final_report(
    pods: &Api<Pod>,
    name: &str,
) -> Result<Option<kubeswift_crds::ProgressReport>, Error> {
    let mut selector = labels::selector(TRAIN_JOB, name);
    selector.insert(COMPLETION_INDEX.into(), "0".into());
    let list = pods
        .list(&ListParams::default().labels(&labels::to_selector_string(&selector)))
        .await?;
    Ok(list
        .items
        .iter()
        .find_map(progress::from_termination_message))
}

fn set_phase(status: &mut SwiftTrainJobStatus, phase: Phase) {
    status.phase = Some(phase);
}

fn fail(
    status: &mut SwiftTrainJobStatus,
    why: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
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
    conditions::clear(&mut status.conditions, ct::RESTARTING, why, generation, now);
    status.phase = Some(Phase::Failed);
    status.observed_generation = generation;
    if status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
}

/// Writes status when it changed (an unchanged write would only wake the watch again).
async fn write_status(
    api: &Api<SwiftTrainJob>,
    name: &str,
    old: &SwiftTrainJobStatus,
    new: &SwiftTrainJobStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    let patch = json!({ "status": new });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn pod(name: &str, exit: Option<(i32, &str)>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "swift".into(),
                state: exit.map(|(code, message)| ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        message: Some(message.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_gang_failure_names_the_failed_pod_its_exit_code_and_first_message_line() {
        let pods = [
            pod("j-node-0-aaaaa", None),
            pod("j-node-1-bbbbb", Some((0, ""))),
            pod(
                "j-node-2-ccccc",
                Some((
                    1,
                    r#"{"version":1,"step":0,"finished":true,"error":"--model s3://m/x: not found"}"#,
                )),
            ),
        ];
        assert_eq!(
            gang_failure(&pods, "BackoffLimitExceeded", "Job has reached the limit"),
            "pod j-node-2-ccccc exited with code 1 (--model s3://m/x: not found); \
             BackoffLimitExceeded: Job has reached the limit"
        );
        // A log tail (no report): its last line; a report without an error: nothing.
        assert_eq!(
            gang_failure(
                &[pod("p", Some((139, "loading\nSegmentation fault\n")))],
                "R",
                "m"
            ),
            "pod p exited with code 139 (Segmentation fault); R: m"
        );
        assert_eq!(
            gang_failure(
                &[pod("p", Some((1, r#"{"version":1,"step":3}"#)))],
                "R",
                "m"
            ),
            "pod p exited with code 1; R: m"
        );
        assert_eq!(
            gang_failure(
                &pods[..2],
                "BackoffLimitExceeded",
                "Job has reached the limit"
            ),
            "BackoffLimitExceeded: Job has reached the limit"
        );
        assert_eq!(
            gang_failure(&[pod("p", Some((137, "")))], "R", "m"),
            "pod p exited with code 137; R: m"
        );
    }

    #[test]
    fn a_gang_failure_names_the_killed_pod_not_the_peers_that_stopped_because_of_it() {
        let peer = r#"{"version":1,"step":5,"finished":true,"error":"rank 2 lost its connection"}"#;
        let pods = [
            pod("j-node-0-aaaaa", Some((4, peer))),
            pod("j-node-1-bbbbb", Some((137, ""))),
            pod("j-node-2-ccccc", Some((143, ""))),
        ];
        assert_eq!(
            failed_pod(&pods),
            Some(("j-node-1-bbbbb".into(), 137, String::new()))
        );
        // Only a consequence is known (the killed pod is gone): it is still named.
        assert_eq!(
            failed_pod(&pods[..1]),
            Some((
                "j-node-0-aaaaa".into(),
                4,
                "rank 2 lost its connection".into()
            ))
        );
    }
}
