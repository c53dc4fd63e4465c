//! Resource use of runners' process groups, read from `/proc`: resident memory and CPU time
//! summed over every process of a group, so a runner's children count too.

use std::collections::HashMap;
use std::fs;

use serde::{Deserialize, Serialize};

/// Measured use of one process group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub rss_bytes: u64,
    /// User plus system CPU time so far.
    pub cpu_seconds: f64,
    pub processes: u32,
}

/// The use of every process group on the machine, by group id, from one pass over `/proc`.
pub fn usage_by_group() -> HashMap<u32, Usage> {
    // SAFETY: sysconf has no memory effects; both values are constant for the boot.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let page = u64::try_from(page).unwrap_or(4096);
    let mut groups: HashMap<u32, Usage> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return groups;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process can end between the listing and the read: skip it.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((pgrp, cpu_ticks, rss_pages)) = parse_stat(&stat) {
            let usage = groups.entry(pgrp).or_default();
            usage.processes += 1;
            usage.cpu_seconds += cpu_ticks as f64 / ticks;
            usage.rss_bytes += rss_pages * page;
        }
    }
    groups
}

/// `(process group, utime + stime in ticks, rss in pages)` from a `/proc/<pid>/stat` line.
/// The command name in parentheses may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) ... rss(21).
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss: i64 = fields.get(21)?.parse().ok()?;
    Some((pgrp, utime + stime, u64::try_from(rss).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 12345 10000000 300 18446744073709551615";
        assert_eq!(parse_stat(line), Some((4242, 300, 300)));
    }

    #[test]
    fn this_process_group_is_measured() {
        // SAFETY: getpgrp only reads this process's group id.
        let group = u32::try_from(unsafe { libc::getpgrp() }).unwrap();
        let usage = usage_by_group()[&group];
        assert!(usage.processes >= 1);
        assert!(usage.rss_bytes > 0);
    }
}
