//! A rollout's settings (`--rollout-threshold`, `--max-unavailable`) and
//! the wave plan they give: pure values, parsed with a clear error.

use std::fmt;
use std::str::FromStr;

/// When and how fast changes are released in waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutConfig {
    /// A change of more nodes than this goes in waves; 0 turns waves off.
    pub threshold: usize,
    /// The largest wave.
    pub max_unavailable: MaxUnavailable,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self { threshold: 5, max_unavailable: MaxUnavailable::Percent(25) }
    }
}

impl RolloutConfig {
    /// Waves off: every change is published at once.
    pub fn off() -> Self {
        Self { threshold: 0, ..Self::default() }
    }

    /// Whether a change of `nodes` nodes goes in waves.
    pub fn is_rollout(&self, nodes: usize) -> bool {
        self.threshold > 0 && nodes > self.threshold
    }
}

/// The largest wave: a count of nodes, or a percentage of the rollout's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(usize),
    Percent(u8),
}

impl MaxUnavailable {
    /// The wave size for a rollout of `nodes` nodes: rounded up, at least 1.
    pub fn resolve(self, nodes: usize) -> usize {
        match self {
            Self::Count(n) => n.max(1),
            Self::Percent(p) => (nodes * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

impl FromStr for MaxUnavailable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Self::Percent(p)),
                _ => Err(format!("{s:?} is not a percentage between 1% and 100% (e.g. 25%)")),
            };
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Self::Count(n)),
            _ => Err(format!("{s:?} is neither a node count above 0 (e.g. 10) nor a percentage (e.g. 25%)")),
        }
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Wave sizes for `nodes` nodes: a canary of one, then doubling, never
/// above `max` (the last wave takes what is left).
pub fn wave_sizes(nodes: usize, max: usize) -> Vec<usize> {
    let max = max.max(1);
    let (mut sizes, mut left, mut next) = (Vec::new(), nodes, 1usize);
    while left > 0 {
        let size = next.min(max).min(left);
        sizes.push(size);
        left -= size;
        next = next.saturating_mul(2);
    }
    sizes
}
