//! The CPU this process may use. Containers and systemd units often get a
//! CFS quota (`docker run --cpus 0.5`, `CPUQuota=50%`) rather than whole
//! cores; a worker near its quota is throttled, not idle, so its load is
//! measured against its share of the quota (see `load::LoadMeter`).
//!
//! Parsing is pure; [`cores`] does the file reads, once, at start.

use std::path::Path;

/// Cores' worth of CPU the cgroups of this process allow (`0.25`: a
/// quarter of one core), the smallest quota of its cgroup and every
/// ancestor, v2 or v1. `None`: no quota (or no cgroup file system).
pub fn cores() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (v2, v1) = paths(&own);
    let mut quotas = Vec::new();
    if let Some(path) = v2 {
        for dir in ancestors(Path::new("/sys/fs/cgroup"), &path) {
            let max = std::fs::read_to_string(dir.join("cpu.max")).ok();
            quotas.extend(max.as_deref().and_then(v2_cores));
        }
    }
    if let Some(path) = v1 {
        for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
            for dir in ancestors(Path::new(mount), &path) {
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
                if let (Some(q), Some(p)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                    quotas.extend(v1_cores(&q, &p));
                }
            }
        }
    }
    quotas.into_iter().reduce(f64::min)
}

/// The v2 path (`0::/path`) and the v1 `cpu` controller's path from
/// `/proc/self/cgroup`.
fn paths(own: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// `root` joined with `path` and each of its ancestors up to `root`.
fn ancestors(root: &Path, path: &str) -> Vec<std::path::PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    relative.ancestors().map(|a| root.join(a)).collect()
}

/// `cpu.max`: "QUOTA PERIOD" or "max PERIOD".
fn v2_cores(max: &str) -> Option<f64> {
    let mut parts = max.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`.
fn v1_cores(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cgroup_versions_and_no_quota() {
        let own = "12:cpu,cpuacct:/docker/abc\n0::/system.slice/vessel.service\n";
        assert_eq!(
            paths(own),
            (
                Some("/system.slice/vessel.service".into()),
                Some("/docker/abc".into())
            )
        );
        assert_eq!(paths("1:name=systemd:/\n"), (None, None));
        assert_eq!(v2_cores("50000 100000\n"), Some(0.5));
        assert_eq!(v2_cores("max 100000\n"), None);
        assert_eq!(v2_cores("garbage"), None);
        assert_eq!(v1_cores("2500\n", "10000\n"), Some(0.25));
        assert_eq!(v1_cores("-1\n", "100000\n"), None);
    }

    #[test]
    fn a_quota_anywhere_up_the_tree_applies() {
        let dirs = ancestors(Path::new("/sys/fs/cgroup"), "/a/b");
        let dirs: Vec<_> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            ["/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a", "/sys/fs/cgroup/"]
        );
    }
}
