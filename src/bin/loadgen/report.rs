//! What a run measured, and how it is measured: wall time, CPU seconds of
//! the server and of the generator (from `/proc`, per thread to the
//! nanosecond where it can), resident memory, and
//! latency percentiles.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The mode's name.
    pub mode: String,
    /// Deliveries (or logins, sessions, files) counted.
    pub deliveries: u64,
    /// How many were expected.
    pub expected: u64,
    /// Deliveries per second.
    pub per_second: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
    /// Wall time of the measured phase, seconds.
    pub wall_s: f64,
    /// Fan-out that stopped short: when the last delivery came (within
    /// 0.1 s). `wall_s` and the CPU figures then end there rather than at
    /// the deadline, so the rates are those of the part that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_at_s: Option<f64>,
    /// Server CPU seconds during the measured phase (if its pid was given),
    /// summed over every `--server-pid`.
    pub server_cpu_s: Option<f64>,
    /// With several `--server-pid`s: each one's CPU seconds, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_cpu_s_each: Vec<f64>,
    /// Server CPU microseconds per delivery.
    pub server_us_per_delivery: Option<f64>,
    /// CPU seconds of the `--engine-pid` processes and their children
    /// (PostgreSQL, Redis) during the measured phase, apart from the servers'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engines_cpu_s: Option<f64>,
    /// The same per delivery, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engines_us_per_delivery: Option<f64>,
    /// Generator CPU seconds during the measured phase.
    pub generator_cpu_s: f64,
    /// Server resident memory per session in KiB (idle mode).
    pub rss_per_session_kib: Option<f64>,
    /// Server resident memory at the end, KiB (if its pid was given).
    pub server_rss_kib: Option<f64>,
    /// Megabytes per second (file mode).
    pub mb_per_s: Option<f64>,
    /// Bodies decrypted (the sample).
    pub decrypted: u64,
    /// Deliveries whose place in their conversation was not past the last
    /// one the receiver had seen there: repeated (or out of order). Not
    /// counted in `deliveries`; any makes the run a failure.
    pub repeats: u64,
}

impl Report {
    /// Whether everything expected arrived.
    pub fn complete(&self) -> bool {
        self.deliveries >= self.expected && self.repeats == 0
    }

    /// Fills in the figures derived from the others.
    pub fn finish(&mut self, latencies_us: Vec<u64>) {
        self.per_second = self.deliveries as f64 / self.wall_s.max(1e-9);
        self.server_us_per_delivery = self
            .server_cpu_s
            .map(|cpu| cpu * 1e6 / self.deliveries.max(1) as f64);
        self.engines_us_per_delivery = self
            .engines_cpu_s
            .map(|cpu| cpu * 1e6 / self.deliveries.max(1) as f64);
        [self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms] = percentiles(latencies_us);
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} of {} in {:.2} s = {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}\n",
            self.mode,
            self.deliveries,
            self.expected,
            self.wall_s,
            self.per_second,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms
        );
        if let Some(t) = self.stalled_at_s {
            s.push_str(&format!(
                "STALLED: nothing arrived after {t:.2} s until the deadline; time and CPU are up to then\n"
            ));
        }
        if let (Some(cpu), Some(us)) = (self.server_cpu_s, self.server_us_per_delivery) {
            s.push_str(&format!(
                "server CPU {cpu:.2} s ({us:.2} us per delivery); "
            ));
            if !self.server_cpu_s_each.is_empty() {
                let each: Vec<String> = self
                    .server_cpu_s_each
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect();
                s.pop();
                s.push_str(&format!(" by node: {} s; ", each.join(" + ")));
            }
        }
        if let (Some(cpu), Some(us)) = (self.engines_cpu_s, self.engines_us_per_delivery) {
            s.push_str(&format!(
                "engines (--engine-pid) CPU {cpu:.2} s ({us:.2} us per delivery); "
            ));
        }
        s.push_str(&format!("generator CPU {:.2} s", self.generator_cpu_s));
        if let Some(kib) = self.rss_per_session_kib {
            s.push_str(&format!("; server RSS {kib:.1} KiB per session"));
        }
        if let Some(kib) = self.server_rss_kib {
            s.push_str(&format!("; server RSS {:.1} MiB", kib / 1024.0));
        }
        if let Some(mb) = self.mb_per_s {
            s.push_str(&format!("; {mb:.2} MB/s end to end"));
        }
        if self.repeats > 0 {
            s.push_str(&format!(
                "\n{} deliveries REPEATED or out of order (not counted)",
                self.repeats
            ));
        }
        s.push_str(&format!(
            "\nbodies decrypted by the generator: {} (a sample; every MAC was verified)",
            self.decrypted
        ));
        s
    }
}

/// CPU seconds (user + system) of a process, or of this one, in the 10 ms
/// ticks of `/proc/PID/stat`; it counts threads that have exited too.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A process's CPU time at one moment, for measuring a phase precisely.
///
/// A 100k-delivery run costs the server about 0.2 s of CPU: 20 ticks of
/// `/proc/PID/stat`, so one tick either way moves the result by 5%. The
/// per-thread `/proc/PID/task/*/schedstat` counts nanoseconds (the way the
/// IRC generator of `../shared/peer-bench` measures ngircd, so both servers
/// are measured alike) but forgets a thread when it exits; so the ticks are
/// kept too, and used when a thread alive at the start is gone at the end.
#[derive(Debug, Clone)]
pub struct CpuSample {
    /// Nanoseconds on CPU of each live thread, by thread id.
    threads: HashMap<u32, u64>,
    /// Whole-process seconds from the ticks.
    ticks_s: f64,
}

impl CpuSample {
    /// Samples `pid`, or this process.
    pub fn take(pid: Option<u32>) -> Option<CpuSample> {
        let ticks_s = cpu_seconds(pid)?;
        let dir = match pid {
            Some(p) => format!("/proc/{p}/task"),
            None => "/proc/self/task".to_string(),
        };
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A thread may exit between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = stat.split_whitespace().next().and_then(|f| f.parse().ok()) {
                threads.insert(tid, ns);
            }
        }
        Some(CpuSample { threads, ticks_s })
    }

    /// CPU seconds spent from `self` to `later`: to the nanosecond when
    /// every thread of `self` still lives in `later` (threads born in
    /// between count from zero), else from the ticks.
    pub fn seconds_until(&self, later: &CpuSample) -> f64 {
        let survived = self.threads.keys().all(|t| later.threads.contains_key(t));
        if !survived || self.threads.is_empty() {
            return later.ticks_s - self.ticks_s;
        }
        let ns: u64 = later
            .threads
            .iter()
            .map(|(t, &now)| now.saturating_sub(self.threads.get(t).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// CPU seconds (user + system) of a process and of its children, live
/// (as the direct children of `pid` listed in `/proc` now) and gone (the
/// reaped children's times that the kernel adds to `pid`'s own): for
/// PostgreSQL, whose postmaster forks a backend per connection.
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    // utime, stime, cutime, cstime: fields 14 to 17; ppid is field 4.
    fn times(stat: &str) -> Option<(u32, f64)> {
        let rest = stat.rsplit(')').next()?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let mut ticks = 0.0;
        for i in 11..=14 {
            ticks += f.get(i)?.parse::<f64>().ok()?;
        }
        Some((ppid, ticks / 100.0))
    }
    let (_, mut total) = times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if child == pid {
            continue;
        }
        if let Some((ppid, cpu)) = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|s| times(&s))
        {
            if ppid == pid {
                total += cpu;
            }
        }
    }
    Some(total)
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's thread count.
pub fn threads(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentiles(mut us: Vec<u64>) -> [f64; 4] {
    if us.is_empty() {
        return [0.0; 4];
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    [at(0.5), at(0.9), at(0.99), at(1.0)]
}

/// Wall time and CPU of the server and of this process over a phase.
pub struct Meter {
    start: Instant,
    server0: Option<CpuSample>,
    me0: Option<CpuSample>,
    pid: Option<u32>,
}

impl Meter {
    /// Starts measuring.
    pub fn start(pid: Option<u32>) -> Meter {
        Meter {
            start: Instant::now(),
            server0: pid.and_then(|p| CpuSample::take(Some(p))),
            me0: CpuSample::take(None),
            pid,
        }
    }

    /// Stops, recording wall time and CPU into `report`.
    pub fn stop(&self, report: &mut Report) {
        report.wall_s = self.start.elapsed().as_secs_f64();
        report.server_cpu_s = match (
            &self.server0,
            self.pid.and_then(|p| CpuSample::take(Some(p))),
        ) {
            (Some(a), Some(b)) => Some(a.seconds_until(&b)),
            _ => None,
        };
        report.generator_cpu_s = match (&self.me0, CpuSample::take(None)) {
            (Some(a), Some(b)) => a.seconds_until(&b),
            _ => 0.0,
        };
        report.server_rss_kib = self.pid.and_then(rss_kib);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(threads: &[(u32, u64)], ticks_s: f64) -> CpuSample {
        CpuSample {
            threads: threads.iter().copied().collect(),
            ticks_s,
        }
    }

    #[test]
    fn cpu_is_summed_per_thread_and_a_thread_born_in_between_counts_whole() {
        let start = sample(&[(10, 1_000_000_000), (11, 500_000_000)], 1.5);
        let end = sample(
            &[(10, 1_250_000_000), (11, 500_000_000), (12, 40_000_000)],
            1.8,
        );
        let s = start.seconds_until(&end);
        assert!((s - 0.29).abs() < 1e-9, "{s}");
    }

    #[test]
    fn a_thread_gone_by_the_end_falls_back_to_the_ticks() {
        let start = sample(&[(10, 1_000_000_000), (11, 500_000_000)], 1.5);
        // Thread 11 exited with CPU the per-thread sums no longer show.
        let end = sample(&[(10, 1_250_000_000)], 1.9);
        let s = start.seconds_until(&end);
        assert!((s - 0.4).abs() < 1e-9, "{s}");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let a = CpuSample::take(None).expect("/proc/self is readable");
        assert!(!a.threads.is_empty());
        let b = CpuSample::take(None).expect("/proc/self is readable");
        assert!(a.seconds_until(&b) >= 0.0);
    }
}
