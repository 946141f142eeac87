//! Histograms, the summary of a run, and its two forms: the human block on
//! stdout and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Highest recordable value: 1,000 s in nanoseconds (larger ones are clamped).
const HIGHEST_NS: u64 = 1_000_000_000_000;

/// A latency histogram in nanoseconds, three significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HIGHEST_NS, 3)?)
}

/// Records `d`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// All zero when `h` is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Closed or open loop, and the offered rate of the latter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Closed,
    Open { rate: f64 },
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub mode: Mode,
    pub url: String,
    pub body_bytes: usize,
    pub connections: u32,
    pub warmup: Duration,
    /// The measured part.
    pub duration: Duration,
    pub timeout: Duration,
    /// Full responses that arrived within the measured part (as with wrk,
    /// also those that failed the checks: they count as errors too).
    pub requests: u64,
    /// Latency of the requests sent (open loop: due) within the measured part
    /// that got a full response.
    pub latency: Percentiles,
    pub latency_samples: u64,
    /// Open loop: how late the scheduler handed requests over.
    pub dispatch_lag: Option<Percentiles>,
    /// Whether the scheduler thread runs with a timer slack of 1 ns (else 50 µs).
    pub low_timer_slack: bool,
    /// Failures of the whole run (warm-up included) by reason.
    pub errors_by_reason: BTreeMap<String, u64>,
    pub warmup_errors: u64,
    pub first_failure: Option<String>,
    /// Open loop: measured requests still queued when the run stopped
    /// waiting (`--timeout` after the end), never sent.
    pub abandoned: u64,
    pub connections_opened: u64,
    pub generator_cpu_s: f64,
    /// The server's CPU time during the measured part (`--server-pid`).
    pub server_cpu: Option<Cpu>,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
}

impl Report {
    pub fn errors(&self) -> u64 {
        self.errors_by_reason.values().sum()
    }

    pub fn achieved_rate(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64()
    }

    /// Open loop only: completions fell below 95% of the offered rate, a
    /// latency exceeded the timeout, or requests were never sent.
    pub fn saturated(&self) -> bool {
        !self.saturation_reasons().is_empty()
    }

    /// What [`Report::saturated`] found, in words.
    fn saturation_reasons(&self) -> Vec<String> {
        let Mode::Open { rate } = self.mode else {
            return Vec::new();
        };
        let mut reasons = Vec::new();
        if self.achieved_rate() < 0.95 * rate {
            reasons.push(format!("achieved {:.1} req/s, below 95% of the {rate} req/s offered", self.achieved_rate()));
        }
        if self.latency.max > self.timeout.as_secs_f64() * 1e6 {
            reasons.push(format!(
                "latencies up to {:.3} s, above the {:?} timeout",
                self.latency.max / 1e6,
                self.timeout
            ));
        }
        if self.abandoned > 0 {
            reasons.push(format!("{} requests never sent", self.abandoned));
        }
        reasons
    }

    /// The JSON summary (`--json`).
    pub fn to_json(&self) -> Value {
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let latency = &self.latency;
        json!({
            "mode": match self.mode { Mode::Closed => "closed", Mode::Open { .. } => "open" },
            "connections": self.connections,
            "offered_rate": match self.mode { Mode::Closed => None, Mode::Open { rate } => Some(rate) },
            "duration_s": self.duration.as_secs_f64(),
            "requests": self.requests,
            "errors": self.errors(),
            "errors_by_reason": self.errors_by_reason,
            "achieved_rate": round(self.achieved_rate()),
            "latency_us": {
                "p50": round(latency.p50),
                "p90": round(latency.p90),
                "p99": round(latency.p99),
                "p999": round(latency.p999),
                "max": round(latency.max),
                "mean": round(latency.mean),
            },
            "dispatch_lag_us": self.dispatch_lag.map(|lag| json!({
                "p50": round(lag.p50),
                "p99": round(lag.p99),
                "max": round(lag.max),
            })),
            "generator_cpu_s": (self.generator_cpu_s * 100.0).round() / 100.0,
            "server_cpu": self.server_cpu.map(|cpu| {
                let per = |s: f64| if self.requests == 0 { 0.0 } else { round(s * 1e6 / self.requests as f64) };
                json!({
                    "user_s": cpu.user_s,
                    "system_s": cpu.system_s,
                    "us_per_request": per(cpu.user_s + cpu.system_s),
                    "user_us_per_request": per(cpu.user_s),
                    "system_us_per_request": per(cpu.system_s),
                })
            }),
            "started_unix_ms": self.started_unix_ms,
            "ended_unix_ms": self.ended_unix_ms,
            "saturated": self.saturated(),
        })
    }

    /// The block printed on stdout.
    pub fn human(&self) -> String {
        let ms = |us: f64| format!("{:.3} ms", us / 1000.0);
        let mut out = String::new();
        let mode = match self.mode {
            Mode::Closed => "closed loop".to_owned(),
            Mode::Open { rate } => format!("open loop at {rate} req/s"),
        };
        let _ = writeln!(out, "loadgen: {mode}, {} keep-alive connections", self.connections);
        let _ = writeln!(out, "  url            POST {} ({} bytes)", self.url, self.body_bytes);
        let _ = writeln!(
            out,
            "  time           {:.3} s measured after {:.3} s warm-up (discarded)",
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64()
        );
        let offered = match self.mode {
            Mode::Closed => String::new(),
            Mode::Open { rate } => format!("offered {rate:.1} req/s, "),
        };
        let _ = writeln!(out, "  rate           {offered}achieved {:.1} req/s", self.achieved_rate());
        let _ = writeln!(out, "  requests       {} completed in the measured part", self.requests);
        let errors = self.errors();
        if errors == 0 {
            let _ = writeln!(out, "  errors         0");
        } else {
            let reasons: Vec<String> = self.errors_by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            let _ = writeln!(
                out,
                "  errors         {errors} ({}; {} during warm-up)",
                reasons.join(", "),
                self.warmup_errors
            );
        }
        if let Some(first) = &self.first_failure {
            let _ = writeln!(out, "  first failure  {first}");
        }
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency        p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  ({} samples{})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            ms(l.mean),
            self.latency_samples,
            if matches!(self.mode, Mode::Open { .. }) { ", from the intended send times" } else { "" }
        );
        if let Some(lag) = &self.dispatch_lag {
            let _ = writeln!(
                out,
                "  dispatch lag   p50 {}  p99 {}  max {}  (timer slack {})",
                ms(lag.p50),
                ms(lag.p99),
                ms(lag.max),
                if self.low_timer_slack { "1 ns" } else { "default" }
            );
        }
        let _ = writeln!(
            out,
            "  generator CPU  {:.2} s ({:.1}% of one core); {} connections opened",
            self.generator_cpu_s,
            100.0 * self.generator_cpu_s / self.duration.as_secs_f64(),
            self.connections_opened
        );
        if let Some(cpu) = &self.server_cpu {
            let per = |s: f64| if self.requests == 0 { 0.0 } else { s * 1e6 / self.requests as f64 };
            let _ = writeln!(
                out,
                "  server CPU     {:.2} s ({:.1}% of one core): {:.1} µs per request ({:.1} user, {:.1} system)",
                cpu.user_s + cpu.system_s,
                100.0 * (cpu.user_s + cpu.system_s) / self.duration.as_secs_f64(),
                per(cpu.user_s + cpu.system_s),
                per(cpu.user_s),
                per(cpu.system_s)
            );
        }
        if self.abandoned > 0 {
            let _ = writeln!(
                out,
                "  abandoned      {} measured requests still queued {:?} after the end, never sent",
                self.abandoned, self.timeout
            );
        }
        let reasons = self.saturation_reasons();
        if !reasons.is_empty() {
            let _ = writeln!(out, "  server could not keep up: {}", reasons.join("; "));
        }
        out
    }
}

/// This process's user + system CPU time in seconds, from the text of
/// `/proc/self/stat` (fields 14 and 15, in clock ticks of 1/100 s).
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    cpu_split(stat).map(|cpu| cpu.user_s + cpu.system_s)
}

/// User and system CPU time of a process, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
}

/// User and system CPU time from the text of `/proc/PID/stat` (all threads).
pub fn cpu_split(stat: &str) -> Option<Cpu> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Cpu { user_s: utime as f64 / 100.0, system_s: stime as f64 / 100.0 })
}

/// [`cpu_split`] of process `pid` now.
pub fn process_cpu(pid: u32) -> anyhow::Result<Cpu> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("--server-pid: reading {path}: {e}"))?;
    cpu_split(&stat).ok_or_else(|| anyhow::anyhow!("no utime and stime in {path}: {stat}"))
}

/// [`cpu_seconds`] of this process now.
pub fn own_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    cpu_seconds(&stat).ok_or_else(|| anyhow::anyhow!("no utime and stime in /proc/self/stat: {stat}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() -> anyhow::Result<()> {
        let mut h = histogram()?;
        assert_eq!(Percentiles::of(&h), Percentiles::default());
        // 1..=1000 µs, once each.
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(near(p.p50, 500.0), "{p:?}");
        assert!(near(p.p90, 900.0), "{p:?}");
        assert!(near(p.p99, 990.0), "{p:?}");
        assert!(near(p.p999, 999.0), "{p:?}");
        assert!(near(p.max, 1000.0), "{p:?}");
        assert!(near(p.mean, 500.5), "{p:?}");
        Ok(())
    }

    #[test]
    fn tail_and_clamping() -> anyhow::Result<()> {
        let mut h = histogram()?;
        for _ in 0..999 {
            record(&mut h, Duration::from_micros(100));
        }
        record(&mut h, Duration::from_millis(250));
        let p = Percentiles::of(&h);
        assert!((p.p99 - 100.0).abs() < 0.1 && (p.p999 - 100.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 250_000.0).abs() < 250.0, "{p:?}");
        // Out of range: clamped, not lost.
        record(&mut h, Duration::from_secs(5000));
        record(&mut h, Duration::ZERO);
        assert_eq!(h.len(), 1002);
        Ok(())
    }

    fn report(mode: Mode, requests: u64, max_us: f64) -> Report {
        Report {
            mode,
            url: "https://127.0.0.1:8443/validate/ingress-tls".into(),
            body_bytes: 3000,
            connections: 32,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            requests,
            latency: Percentiles { p50: 400.0, p90: 500.0, p99: 900.0, p999: 1500.0, max: max_us, mean: 420.04 },
            latency_samples: requests,
            dispatch_lag: matches!(mode, Mode::Open { .. }).then_some(Percentiles {
                p50: 60.0,
                p99: 120.0,
                max: 900.0,
                ..Percentiles::default()
            }),
            low_timer_slack: true,
            errors_by_reason: BTreeMap::new(),
            warmup_errors: 0,
            first_failure: None,
            abandoned: 0,
            connections_opened: 32,
            generator_cpu_s: 1.234,
            server_cpu: Some(Cpu { user_s: 2.0, system_s: 1.0 }),
            started_unix_ms: 1_700_000_002_000,
            ended_unix_ms: 1_700_000_012_000,
        }
    }

    #[test]
    fn json_keys() {
        let open = report(Mode::Open { rate: 1000.0 }, 9990, 3000.0).to_json();
        let Value::Object(map) = &open else { panic!("not an object: {open}") };
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        let mut expected = vec![
            "mode",
            "connections",
            "offered_rate",
            "duration_s",
            "requests",
            "errors",
            "errors_by_reason",
            "achieved_rate",
            "latency_us",
            "dispatch_lag_us",
            "generator_cpu_s",
            "started_unix_ms",
            "ended_unix_ms",
            "saturated",
            "server_cpu",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(open["mode"], "open");
        assert_eq!(open["offered_rate"], 1000.0);
        assert_eq!(open["achieved_rate"], 999.0);
        assert_eq!(open["latency_us"]["mean"], 420.0);
        assert_eq!(open["latency_us"]["p999"], 1500.0);
        assert_eq!(open["dispatch_lag_us"]["p99"], 120.0);
        assert_eq!(open["generator_cpu_s"], 1.23);
        assert_eq!(open["saturated"], false);
        // 3 s of server CPU over the report's requests.
        let per_request = 3e6 / open["requests"].as_f64().unwrap_or(f64::NAN);
        assert_eq!(open["server_cpu"]["us_per_request"], (per_request * 10.0).round() / 10.0);
        assert_eq!(open["server_cpu"]["system_s"], 1.0);

        let closed = report(Mode::Closed, 5000, 3000.0).to_json();
        assert_eq!(closed["mode"], "closed");
        assert!(closed["offered_rate"].is_null() && closed["dispatch_lag_us"].is_null());
        assert_eq!(closed["saturated"], false);
    }

    #[test]
    fn saturation() {
        let ok = report(Mode::Open { rate: 1000.0 }, 9500, 3000.0);
        assert!(!ok.saturated() && !ok.human().contains("could not keep up"));
        let slow = report(Mode::Open { rate: 1000.0 }, 9499, 3000.0);
        assert!(slow.saturated());
        assert!(slow.human().contains("server could not keep up: achieved 949.9 req/s, below 95% of the 1000 req/s"));
        let late = report(Mode::Open { rate: 1000.0 }, 10_000, 2_000_001.0);
        assert!(late.saturated() && late.human().contains("could not keep up: latencies up to 2.000 s, above the 2s"));
        let mut unsent = report(Mode::Open { rate: 1000.0 }, 10_000, 3000.0);
        unsent.abandoned = 1;
        assert!(unsent.saturated());
        // Closed loop has no offered rate to fall behind.
        assert!(!report(Mode::Closed, 1, 3_000_000.0).saturated());
    }

    #[test]
    fn human_block() {
        let mut r = report(Mode::Open { rate: 1000.0 }, 9990, 3000.0);
        r.errors_by_reason.insert("status 500".into(), 2);
        r.errors_by_reason.insert("timeout".into(), 1);
        r.warmup_errors = 1;
        r.first_failure = Some("status 500: HTTP 500: boom".into());
        let text = r.human();
        for part in [
            "open loop at 1000 req/s",
            "32 keep-alive connections",
            "https://127.0.0.1:8443/validate/ingress-tls",
            "offered 1000.0 req/s, achieved 999.0 req/s",
            "9990 completed",
            "errors         3 (status 500: 2, timeout: 1; 1 during warm-up)",
            "first failure  status 500: HTTP 500: boom",
            "p50 0.400 ms",
            "p99.9 1.500 ms",
            "max 3.000 ms",
            "dispatch lag   p50 0.060 ms",
            "generator CPU  1.23 s (12.3% of one core)",
        ] {
            assert!(text.contains(part), "{part:?} not in\n{text}");
        }
        assert_eq!(r.errors(), 3);
    }

    #[test]
    fn proc_stat() {
        let stat = "4242 (load gen) x) S 1 4242 4242 0 -1 4194560 1543 0 0 0 157 42 0 0 20 0 3 0 123456 \
                    123456789 2345 18446744073709551615 1 1 0 0 0 0 0 4096 17664 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(cpu_seconds(stat), Some(1.99));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(cpu_seconds("1 (x) S 1 2"), None);
        assert!(own_cpu_seconds().is_ok_and(|s| s >= 0.0));
    }
}
