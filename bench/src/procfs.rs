//! What `/proc` says about a child process: resident memory, CPU time,
//! open TCP connections and environment.
//!
//! Exists so that memory and CPU figures come from the kernel's own
//! accounting of the real binaries, not from anything they report about
//! themselves. It only reads `/proc`; it never signals or changes a process.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::BenchError;

/// `/proc/<pid>/stat` times are in USER_HZ, which is 100 on every Linux
/// architecture this runs on (the kernel exports it fixed for user space).
pub const USER_HZ: u64 = 100;

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of the resident set (`RssAnon`): the process's own
/// memory, without the clean pages of its binary and libraries.
pub fn rss_anon_bytes(pid: u32) -> Result<u64, BenchError> {
    status_bytes(pid, "RssAnon:")
}

fn status_bytes(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Proc { path: path.clone(), source })?;
    parse_kb(&text, field)
        .ok_or_else(|| BenchError::Parse { what: path.display().to_string(), text: format!("no {field}") })
}

fn parse_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU time so far, in USER_HZ ticks (children excluded).
pub fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Proc { path: path.clone(), source })?;
    parse_stat_ticks(&text).ok_or_else(|| BenchError::Parse { what: path.display().to_string(), text })
}

fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use of `pid` over `window`, as a percentage of one core.
pub async fn cpu_over(pid: u32, window: Duration) -> Result<f64, BenchError> {
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let ticks = cpu_ticks(pid)?.saturating_sub(before);
    Ok(crate::stats::cpu_percent(ticks, USER_HZ, started.elapsed()))
}

/// The remote TCP ports of the process's open sockets (IPv4 and IPv6).
pub fn remote_ports(pid: u32) -> Result<Vec<u16>, BenchError> {
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = std::fs::read_dir(&fd_dir).map_err(|source| BenchError::Proc { path: fd_dir.clone(), source })?;
    let inodes: HashSet<u64> = entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = PathBuf::from(format!("/proc/{pid}/net/{table}"));
        let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Proc { path, source })?;
        ports.extend(parse_tcp_table(&text).into_iter().filter(|(inode, _)| inodes.contains(inode)).map(|(_, p)| p));
    }
    Ok(ports)
}

/// (inode, remote port) of every row of a `/proc/net/tcp` table.
fn parse_tcp_table(text: &str) -> Vec<(u64, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote = fields.get(2)?;
            let port = u16::from_str_radix(remote.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((inode, port))
        })
        .collect()
}

/// The names of the process's environment variables.
pub fn environment_names(pid: u32) -> Result<Vec<String>, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/environ"));
    let bytes = std::fs::read(&path).map_err(|source| BenchError::Proc { path, source })?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v.split(|b| *b == b'=').next().unwrap_or_default()).into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(parse_kb("Name:\tx\nVmRSS:\t  4200 kB\n", "VmRSS:"), Some(4200 * 1024));
        assert_eq!(parse_kb("Name:\tx\n", "VmRSS:"), None);
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_stat_ticks(stat), Some(325));
    }

    #[test]
    fn parses_tcp_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:C350 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 20 4 30 10 -1\n";
        assert_eq!(parse_tcp_table(table), vec![(12345, 0x0CEA)]);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
        assert!(environment_names(pid).unwrap().iter().any(|n| n == "PATH") || std::env::var("PATH").is_err());
    }
}
