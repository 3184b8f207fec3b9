//! How much memory the server may use and already uses, for the KV budget: the pod's
//! cgroup limit when it has one (a SwiftDeployment's `resources.limits.memory`), else the
//! machine's memory.

/// The memory limit: the smallest of the cgroup v2 and v1 limits and the machine's total.
pub fn limit_bytes() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| read(p).and_then(|t| parse_limit(&t)));
    let total = read("/proc/meminfo").and_then(|t| mem_total(&t));
    cgroup.chain(total).min().unwrap_or(u64::MAX)
}

/// This process's resident memory.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// A cgroup limit file: a byte count, or "max" (none). cgroup v1 writes a huge number for
/// "no limit", which the machine's total then undercuts.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_meminfo_parse() {
        assert_eq!(parse_limit("2147483648\n"), Some(2 << 30));
        assert_eq!(parse_limit("max\n"), None);
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(mem_total("nothing"), None);
        assert!(limit_bytes() > 0 && resident_bytes() > 0);
    }
}
