//! Names: our `multinicN` interface names and Kubernetes node names.

use std::fmt;
use std::str::FromStr;

use super::ParseError;

/// How many `multinicN` names a node has unless configured otherwise.
pub const DEFAULT_CAPACITY: u8 = 10;
/// The largest capacity we accept (`multinic0..=multinic99`).
pub const MAX_CAPACITY: u8 = 100;

const PREFIX: &str = "multinic";

/// One of our interface names, `multinic{index}`.
///
/// Whether a name is ours depends on the node's capacity: `multinic10` is
/// ours only when the capacity is above ten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName(u8);

impl InterfaceName {
    /// The name with this index; `None` when the index is at or above the capacity.
    pub fn new(index: u8, capacity: u8) -> Option<Self> {
        (index < capacity.min(MAX_CAPACITY)).then_some(Self(index))
    }

    /// Parses a kernel or file name; `None` for a name that is not ours under
    /// this capacity (`eth0`, `multinic`, `multinica`, `multinic01`, ...).
    pub fn parse(name: &str, capacity: u8) -> Option<Self> {
        let digits = name.strip_prefix(PREFIX)?;
        if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if digits.len() > 1 && digits.starts_with('0') {
            return None;
        }
        Self::new(digits.parse().ok()?, capacity)
    }

    /// The `N` of `multinicN`.
    pub fn index(self) -> u8 {
        self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.0)
    }
}

/// A node's identity for matching rows to agents: the lower-case short host
/// name. `Biz-Master1.novalocal` and `biz-master1` are the same node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = ParseError;

    /// Accepts a DNS host name (what Kubernetes and OpenStack use) of at most
    /// 253 bytes and keeps its first label, in lower case.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseError::NodeName { input: input.to_owned(), reason };
        if input.trim().is_empty() {
            return Err(err("empty"));
        }
        if input.len() > 253 {
            return Err(err("longer than 253 bytes"));
        }
        for label in input.split('.') {
            if label.is_empty() {
                return Err(err("empty label (leading, trailing or double dot)"));
            }
            if label.len() > 63 {
                return Err(err("a label is longer than 63 bytes"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(err("only letters, digits, '-' and '.' are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("a label starts or ends with '-'"));
            }
        }
        let short = input.split('.').next().unwrap_or(input);
        Ok(Self(short.to_ascii_lowercase()))
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_and_not_ours() {
        for (name, index) in [("multinic0", 0), ("multinic9", 9)] {
            assert_eq!(InterfaceName::parse(name, DEFAULT_CAPACITY).map(InterfaceName::index), Some(index));
        }
        for name in [
            "multinic10",
            "eth0",
            "ens33",
            "multinica",
            "multinic",
            "multinic01",
            "multinic-1",
            "Multinic1",
            "multinic1 ",
        ] {
            assert_eq!(InterfaceName::parse(name, DEFAULT_CAPACITY), None, "{name}");
        }
        assert_eq!(InterfaceName::parse("multinic10", 11).map(|n| n.to_string()).as_deref(), Some("multinic10"));
    }

    #[test]
    fn node_names_match_on_short_lower_case_name() {
        let a: NodeName = "biz-master1.novalocal".parse().unwrap();
        let b: NodeName = "Biz-Master1".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "biz-master1");
    }

    #[test]
    fn bad_node_names_are_refused() {
        let long = format!("{}.example", "a".repeat(250));
        for input in ["", " ", "node_1", "node 1", "-node", "node-", "a..b", ".node", "nöde", &long, &"a".repeat(64)] {
            assert!(input.parse::<NodeName>().is_err(), "{input:?}");
        }
    }
}
