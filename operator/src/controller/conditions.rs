//! `metav1.Condition` bookkeeping: set a condition, keeping its transition time when its
//! status did not change, always stamping the generation it describes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// One condition to set.
#[derive(Debug, Clone, PartialEq)]
pub struct Set<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Sets `c` in `conditions` for `generation`.
pub fn set(conditions: &mut Vec<Condition>, c: Set<'_>, generation: Option<i64>, now: Timestamp) {
    let status = if c.status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = c.reason.to_string();
            existing.message = c.message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: c.type_.to_string(),
            status,
            reason: c.reason.to_string(),
            message: c.message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Sets a condition to False (when present) with `reason`.
pub fn clear(
    conditions: &mut Vec<Condition>,
    type_: &str,
    reason: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    if conditions.iter().any(|c| c.type_ == type_) {
        set(
            conditions,
            Set {
                type_,
                status: false,
                reason,
                message: String::new(),
            },
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut cs = vec![];
        let running = |status| Set {
            type_: "Running",
            status,
            reason: "PodsRunning",
            message: "2/2".into(),
        };
        set(&mut cs, running(true), Some(1), t0);
        set(&mut cs, running(true), Some(2), t1);
        assert_eq!(cs[0].last_transition_time, Time(t0));
        assert_eq!(cs[0].observed_generation, Some(2));
        set(&mut cs, running(false), Some(2), t1);
        assert_eq!(cs[0].last_transition_time, Time(t1));
        assert_eq!(cs[0].status, "False");
        clear(&mut cs, "Absent", "X", None, t1);
        assert_eq!(cs.len(), 1);
    }
}
