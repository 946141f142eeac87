//! Command line: the arguments and what they are checked against.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{ArgAction, Parser};

/// Default keep-alive connections in closed loop (`wrk -c2`, as before).
pub const CLOSED_LOOP_CONNECTIONS: u32 = 2;
/// Default keep-alive connections in open loop: enough that a short server
/// stall queues requests rather than running out of connections at once.
pub const OPEN_LOOP_CONNECTIONS: u32 = 32;

/// HTTPS load generator for Portcullis admission endpoints (`cargo xtask bench`).
///
/// POSTs the same AdmissionReview over keep-alive HTTP/1.1 connections and
/// reports latency percentiles. Without `--rate` it runs closed loop (each
/// connection sends its next request when the previous answer arrived); with
/// `--rate` open loop: requests go out at fixed intended times whether or not
/// earlier ones were answered, and latency counts from the intended time.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Endpoint to POST to, e.g. https://127.0.0.1:8443/validate/ingress-tls.
    #[arg(long)]
    pub url: String,

    /// File whose bytes are the body of every request (Content-Type: application/json).
    #[arg(long, value_name = "FILE")]
    pub body: PathBuf,

    /// PEM file of the CA certificate(s) to trust; no other roots are trusted.
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,

    /// Require `response.allowed` to be this.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub expect_allowed: Option<bool>,

    /// Require `response.patch` to be present (true) or absent (false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub expect_patch: Option<bool>,

    /// Length of the measured part (e.g. 10s, 500ms, 1.5s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// The same load before the measured part, samples discarded (0s: none).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Longest wait for one full response, from sending the request.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Keep-alive connections, opened before the run [default: 2 in closed loop, 32 in open loop].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: Option<u32>,

    /// Open loop: requests per second, sent at fixed intended times. Closed loop without it.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also report the CPU time this process (the server) used during the
    /// measured part, and per request (from `/proc/PID/stat`).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

impl Args {
    /// The connections to open: the given number or the mode's default.
    pub fn connections(&self) -> u32 {
        self.connections.unwrap_or(if self.rate.is_some() { OPEN_LOOP_CONNECTIONS } else { CLOSED_LOOP_CONNECTIONS })
    }

    /// The checks clap cannot make on single values.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0");
        }
        Ok(())
    }
}

/// Parses a duration: a non-negative decimal number and a unit out of `ns`,
/// `us` (or `µs`), `ms`, `s`, `m`, `h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} is not a duration (expected e.g. 10s, 500ms)"));
    }
    let value: f64 = number.parse().map_err(|_| format!("{number:?} is not a number"))?;
    let seconds_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ns, us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses `--rate`: a finite number of requests per second above 0.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(format!("the rate must be a number above 0, not {text}"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, expected) in [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1min", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("40ns", Duration::from_nanos(40)),
            ("3", Duration::from_secs(3)),
            ("0s", Duration::ZERO),
            (" 2 s ", Duration::from_secs(2)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "s", "ms", "-1s", "1.2.3s", "10x", "10 seconds", "1e3s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("8000"), Ok(8000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-5", "inf", "NaN", "fast", ""] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = ["loadgen", "--url", "https://127.0.0.1:8443/validate/x", "--body", "b.json", "--ca", "ca.pem"];
        Args::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn defaults_and_modes() -> anyhow::Result<()> {
        let closed = parse(&[])?;
        assert_eq!(closed.duration, Duration::from_secs(10));
        assert_eq!(closed.warmup, Duration::from_secs(2));
        assert_eq!(closed.timeout, Duration::from_secs(2));
        assert_eq!((closed.rate, closed.connections()), (None, 2));
        assert_eq!((closed.expect_allowed, closed.expect_patch), (None, None));

        let open = parse(&["--rate", "1000", "--expect-allowed", "false", "--expect-patch", "true"])?;
        assert_eq!((open.rate, open.connections()), (Some(1000.0), 32));
        assert_eq!((open.expect_allowed, open.expect_patch), (Some(false), Some(true)));

        let given = parse(&["--rate", "10", "--connections", "4", "--duration", "3s", "--warmup", "500ms"])?;
        assert_eq!(given.connections(), 4);
        assert_eq!((given.duration, given.warmup), (Duration::from_secs(3), Duration::from_millis(500)));

        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--expect-allowed", "yes"]).is_err());
        assert!(parse(&["--expect-allowed"]).is_err());
        assert!(parse(&["--duration", "0s"])?.validate().is_err());
        assert!(parse(&["--timeout", "0ms"])?.validate().is_err());
        assert!(parse(&["--warmup", "0s"])?.validate().is_ok());
        Ok(())
    }
}
