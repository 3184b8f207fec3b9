//! Leader election on a `coordination.k8s.io` Lease, so several operator replicas can run
//! and only one reconciles. The leader renews the Lease every `renew`; a replica takes over
//! when the holder has not renewed for `duration`. Writes use the Lease's resourceVersion,
//! so two replicas cannot both win the same round.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

/// Who competes for which Lease.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub duration: Duration,
    /// How often the leader renews (and others retry).
    pub renew: Duration,
}

/// Whether `lease` may be taken by `me` at `now`: free, already ours, or expired.
pub fn may_take(lease: &Lease, me: &str, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0);
            now.as_second() > renewed + seconds
        }
    }
}

fn spec_for(e: &Election, now: Timestamp, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(e.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(e.identity.clone()),
        lease_duration_seconds: Some(e.duration.as_secs() as i32),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..Default::default()
    }
}

/// One attempt to take or renew the Lease; true when we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&e.lease).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(e.lease.clone()),
                    namespace: Some(e.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec_for(e, now, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
        Some(mut lease) => {
            if !may_take(&lease, &e.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(spec_for(e, now, lease.spec.as_ref()));
            // replace() sends the resourceVersion we read: a concurrent winner makes this 409.
            match api.replace(&e.lease, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

/// Waits until this replica leads.
pub async fn acquire(client: Client, e: &Election) {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    loop {
        match try_acquire(&api, e).await {
            Ok(true) => {
                info!(lease = %e.lease, identity = %e.identity, "became leader");
                return;
            }
            Ok(false) => {}
            Err(err) => warn!(error = %err, "leader election"),
        }
        tokio::time::sleep(e.renew).await;
    }
}

/// Renews the Lease until renewal fails for longer than the Lease lasts; returns then (the
/// caller must stop reconciling: another replica may already lead).
pub async fn keep(client: Client, e: Election) {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(e.renew).await;
        match try_acquire(&api, &e).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                warn!(lease = %e.lease, "lost the lease to another replica");
                return;
            }
            Err(err) => {
                warn!(error = %err, "cannot renew the lease");
                if last_ok.elapsed() > e.duration {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn takes_free_own_or_expired_leases_only() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert!(may_take(&lease(None, 0), "me", now));
        assert!(may_take(&lease(Some("me"), 999), "me", now));
        assert!(!may_take(&lease(Some("other"), 990), "me", now));
        assert!(may_take(&lease(Some("other"), 984), "me", now));
    }
}
