//! `/metrics` of a running binary, scraped over HTTP and parsed with a
//! Prometheus text parser, for tests that check what the metrics say.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};

/// How long [`wait_metric`] waits.
pub const WAIT: Duration = Duration::from_secs(20);

/// A scraped `/metrics`.
#[derive(Debug)]
pub struct Metrics(pub Scrape);

impl Metrics {
    /// `GET /metrics` (must answer 200 with valid Prometheus text).
    pub async fn scrape(addr: SocketAddr) -> Self {
        let (code, body) = crate::http_get(addr, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        Self::parse(&body)
    }

    /// Parses Prometheus text (e.g. scraped from inside a test namespace).
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Self(Scrape::parse(lines).expect("valid Prometheus text"))
    }

    /// The samples of `name` whose labels include `labels`.
    pub fn samples<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.0
            .samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    /// The value of `name` (summed over samples whose labels include
    /// `labels`); histograms give their count.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels)
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric == name)
    }

    /// The value of label `label` on every sample of `name`, sorted.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> =
            self.samples(name, &[]).filter_map(|s| s.labels.get(label).map(str::to_owned)).collect();
        values.sort();
        values
    }
}

/// Scrapes `addr` until `what` holds for the value of `name{labels}`;
/// returns that value.
pub async fn wait_metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)], what: impl Fn(f64) -> bool) -> f64 {
    crate::eventually(WAIT, &format!("{name}{labels:?}"), || async {
        let v = Metrics::scrape(addr).await.get(name, labels);
        what(v).then_some(v)
    })
    .await
}
