//! Helpers the bench binaries share (each includes this file as a module).

#![allow(dead_code)]

/// The `p` quantile (0..=1) of a sorted, non-empty sample.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Whether this run measures: `cargo test --benches` runs the bench
/// binaries without `--bench`, and they then do nothing.
pub fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A number from the environment (`SLUICE_BENCH_SECS` …), or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `cmd` with `input` on stdin and its output dropped (logs at
/// `warn`); how long it took. Panics if it fails.
pub fn timed(cmd: &mut std::process::Command, input: &std::path::Path) -> std::time::Duration {
    let start = std::time::Instant::now();
    let status = cmd
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(std::process::Stdio::null())
        .env("SLUICE_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed()
}
