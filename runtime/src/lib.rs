//! Process plumbing shared by the multinic binaries (controller, agent,
//! `multinicctl`, the benchmark): logging set-up, signals, error text and the
//! value parsers their flags use.
//!
//! A crate of its own so that the wire crate (`multinic-proto`) knows nothing
//! of processes, and each binary still sets itself up the same way. It must
//! never know the domain (no node, interface or wire type) nor depend on
//! another multinic crate.

use std::time::Duration;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" | "plain" => Ok(Self::Text),
            other => Err(format!("unknown log format {other:?}: expected json or text")),
        }
    }
}

/// Installs the global tracing subscriber. `level` is a filter such as
/// `info` or `multinic_agent=debug,info` (what `LOG_LEVEL` holds).
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let result = match format {
        // `span` is the innermost span; `spans` lists every enclosing one, so a
        // line carries the node (stream), generation (apply) and interface.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// Cancels `shutdown` on SIGTERM or SIGINT (what Kubernetes and a terminal send).
pub async fn signal_shutdown(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    shutdown.cancel();
}

/// An error and its sources on one line; a source whose text the wrapper
/// already ends with is said once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Parses `500ms`, `2s`, `1m`, `1h`, or a bare number of seconds (`30`, as the
/// predecessor's `POLL_INTERVAL` used). Zero is refused.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    match parse_duration_or_zero(input)? {
        d if d.is_zero() => Err(format!("invalid duration {input:?}: must be positive")),
        d => Ok(d),
    }
}

/// [`parse_duration`] that also takes zero (`0`, `0s`), for flags where zero
/// has a meaning (no warm-up, read every tick).
pub fn parse_duration_or_zero(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {input:?}: expected e.g. 500ms, 2s, 1m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration {input:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("invalid duration {input:?}: must be between 0 and a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "0", "0s", "-1s", "2 parsecs", "s", "1e9h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_zero("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_zero("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "-1s", "1e9h", "2 parsecs"] {
            assert!(parse_duration_or_zero(bad).is_err(), "{bad}");
        }
    }
}
