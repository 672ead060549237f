//! Resource usage of a process read from Linux `/proc`: resident memory (VmRSS) and CPU
//! time (utime + stime), turned into RSS figures and CPU% over a window. Read-only;
//! on other systems every reading is `None` and reports simply omit these columns.

use std::time::Instant;

use serde::Serialize;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub rss_bytes: u64,
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clock_ticks_per_s() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Read `pid` ("self" for this process) now.
pub fn sample(pid: &str) -> Option<Sample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Sample { at, rss_bytes: rss_kb * 1024, cpu_ticks: utime + stime })
}

/// CPU use between two samples in percent of one core (200 = two cores busy).
pub fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clock_ticks_per_s() as f64 / secs * 100.0
}

/// What a report says about one process over the measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub pid: String,
    pub rss_mib_start: f64,
    pub rss_mib_end: f64,
    pub rss_mib_peak: f64,
    /// Average over the measured window, percent of one core.
    pub cpu_percent: f64,
}

/// Tracks one process through a run: a sample at the start and end of the measured
/// window and the peak RSS of every sample in between.
#[derive(Debug)]
pub struct Tracker {
    pid: String,
    start: Option<Sample>,
    last: Option<Sample>,
    peak_rss: u64,
}

impl Tracker {
    pub fn new(pid: impl Into<String>) -> Tracker {
        Tracker { pid: pid.into(), start: None, last: None, peak_rss: 0 }
    }

    /// Take a sample; `start` marks the beginning of the measured window.
    pub fn observe(&mut self, start: bool) -> Option<Sample> {
        let s = sample(&self.pid)?;
        if start {
            self.start = Some(s);
            self.peak_rss = s.rss_bytes;
        } else if self.start.is_some() {
            self.peak_rss = self.peak_rss.max(s.rss_bytes);
        }
        self.last = Some(s);
        Some(s)
    }

    pub fn usage(&self) -> Option<Usage> {
        let (a, b) = (self.start?, self.last?);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Some(Usage {
            pid: self.pid.clone(),
            rss_mib_start: mib(a.rss_bytes),
            rss_mib_end: mib(b.rss_bytes),
            rss_mib_peak: mib(self.peak_rss.max(b.rss_bytes)),
            cpu_percent: cpu_percent(&a, &b),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let a = sample("self").expect("/proc/self is readable on Linux");
        assert!(a.rss_bytes > 0);
        // Burn a little CPU so the window is not empty.
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = sample("self").unwrap();
        let pct = cpu_percent(&a, &b);
        assert!((0.0..=400.0).contains(&pct), "cpu {pct}");
    }

    #[test]
    fn missing_process_reads_as_none() {
        assert!(sample("999999999").is_none());
    }
}
