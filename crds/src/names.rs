//! Names of the children each resource creates, and how long a resource's name may be so
//! that every child name (and every pod hostname) stays a valid 63-character DNS label.
//!
//! A name over 63 characters does not fail at `kubectl apply` time in most operators: the
//! Job or Service is refused later and the resource sits there forever with no pods. We refuse
//! such names at admission (the CEL rules in `rules.rs` use these numbers) and again in the
//! operator before creating anything.

/// Kubernetes DNS label limit (Service names, pod hostnames, label values).
pub const DNS_LABEL_MAX: usize = 63;

/// The headless Service of a training job: `<job>`; pods are `<job>-node-<i>.<job>`.
pub fn train_service(job: &str) -> String {
    job.to_string()
}

/// The Indexed Job of a training job's gang: `<job>-node`.
pub fn train_job(job: &str) -> String {
    format!("{job}-node")
}

/// The hostname of node `index` of a training job (the Job controller sets it for Indexed
/// Jobs): `<job>-node-<index>`.
pub fn train_pod_hostname(job: &str, index: u32) -> String {
    format!("{}-{index}", train_job(job))
}

/// The rendezvous address every node dials: rank 0's stable DNS name `<job>-node-0.<job>`.
pub fn train_master_addr(job: &str) -> String {
    format!("{}.{}", train_pod_hostname(job, 0), train_service(job))
}

/// The PodGroup of a gang-scheduled training job: `<job>`.
pub fn train_pod_group(job: &str) -> String {
    job.to_string()
}

/// The longest training-job name for `num_nodes` nodes: the last pod's hostname
/// `<job>-node-<num_nodes-1>` must be a DNS label.
pub fn train_name_max(num_nodes: u32) -> usize {
    DNS_LABEL_MAX - "-node-".len() - digits(num_nodes.saturating_sub(1))
}

/// The Indexed Job of a sample job: `<job>`; shard `i` runs in pod hostname `<job>-<i>`.
pub fn sample_job(job: &str) -> String {
    job.to_string()
}

/// The longest sample-job name for `shards` shards (hostname `<job>-<shards-1>`).
pub fn sample_name_max(shards: u32) -> usize {
    DNS_LABEL_MAX - "-".len() - digits(shards.saturating_sub(1))
}

/// The Deployment and the Service of a SwiftDeployment share its name.
pub fn deploy_children(name: &str) -> String {
    name.to_string()
}

/// The longest SwiftDeployment name: its Service name must be a DNS label.
pub const DEPLOY_NAME_MAX: usize = DNS_LABEL_MAX;

/// Decimal digits of `n`.
pub fn digits(n: u32) -> usize {
    n.to_string().len()
}

/// Whether `name` is a DNS-1035 label (what a Service name must be): lower-case letters,
/// digits and '-', starting with a letter, ending with a letter or digit, at most 63 chars.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= DNS_LABEL_MAX
        && first.is_ascii_lowercase()
        && (last.is_ascii_lowercase() || last.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_names_fit_at_the_edge() {
        // 1 node: hostname <job>-node-0 = len + 7.
        assert_eq!(train_name_max(1), 56);
        let job = "a".repeat(56);
        assert_eq!(train_pod_hostname(&job, 0).len(), 63);
        // 10 nodes: the last hostname is <job>-node-9 (one digit), 11 nodes: <job>-node-10.
        assert_eq!(train_name_max(10), 56);
        assert_eq!(train_name_max(11), 55);
        let job = "a".repeat(55);
        assert_eq!(train_pod_hostname(&job, 10).len(), 63);
        assert_eq!(train_master_addr("llama"), "llama-node-0.llama");
    }

    #[test]
    fn sample_names_fit_at_the_edge() {
        assert_eq!(sample_name_max(1), 61);
        assert_eq!(sample_name_max(100), 60);
        assert_eq!(format!("{}-{}", "s".repeat(60), 99).len(), 63);
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns1035_label("qwen-lora-1"));
        assert!(!is_dns1035_label("1qwen"));
        assert!(!is_dns1035_label("qwen."));
        assert!(!is_dns1035_label("Qwen"));
        assert!(!is_dns1035_label("qwen-"));
        assert!(!is_dns1035_label(""));
        assert!(!is_dns1035_label(&"a".repeat(64)));
    }
}
