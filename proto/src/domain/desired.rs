//! A node's desired set of secondary interfaces and its digest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest as _, Sha256};

use super::{IfaceAddr, MacAddress, Mtu, ParseError};

/// What one secondary interface should look like, identified by its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterfaceSpec {
    pub mac: MacAddress,
    /// `None`: the NIC is only renamed and its MTU set.
    pub address: Option<IfaceAddr>,
    pub mtu: Mtu,
}

impl InterfaceSpec {
    /// Builds a spec, refusing combinations no kernel accepts (an IPv6
    /// address needs an MTU of at least 1280).
    pub fn new(mac: MacAddress, address: Option<IfaceAddr>, mtu: Mtu) -> Result<Self, ParseError> {
        if let Some(addr) = address
            && addr.addr().is_ipv6()
            && mtu.get() < 1280
        {
            return Err(ParseError::Mtu {
                input: i64::from(mtu.get()),
                reason: format!("IPv6 address {addr} needs an MTU of at least 1280"),
            });
        }
        Ok(Self { mac, address, mtu })
    }
}

impl fmt::Display for InterfaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} mtu {}", self.mac, self.mtu)?;
        if let Some(addr) = self.address {
            write!(f, " address {addr}")?;
        }
        Ok(())
    }
}

/// The SHA-256 of a desired set's canonical form, as lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Wraps a digest received from a peer; compared, never trusted.
    pub fn from_wire(hex: &str) -> Option<Self> {
        (!hex.is_empty()).then(|| Self(hex.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for logs and tables.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's complete desired set: at most one spec per MAC, in MAC order,
/// plus the MACs to leave untouched ("held").
///
/// Two sets with the same content have the same digest, whatever the row ids
/// or row order they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSet {
    interfaces: BTreeMap<MacAddress, InterfaceSpec>,
    held: BTreeSet<MacAddress>,
    digest: Digest,
}

impl DesiredSet {
    /// Builds a set with nothing held; refuses two specs for the same MAC.
    pub fn new(specs: impl IntoIterator<Item = InterfaceSpec>) -> Result<Self, ParseError> {
        Self::with_held(specs, [])
    }

    /// Builds a set; refuses two entries (spec or hold) for the same MAC.
    pub fn with_held(
        specs: impl IntoIterator<Item = InterfaceSpec>,
        held: impl IntoIterator<Item = MacAddress>,
    ) -> Result<Self, ParseError> {
        let mut interfaces = BTreeMap::new();
        for spec in specs {
            if interfaces.insert(spec.mac, spec).is_some() {
                return Err(ParseError::DuplicateMac { mac: spec.mac.to_string() });
            }
        }
        let mut held_set = BTreeSet::new();
        for mac in held {
            if interfaces.contains_key(&mac) || !held_set.insert(mac) {
                return Err(ParseError::DuplicateMac { mac: mac.to_string() });
            }
        }
        Ok(Self::from_parts(interfaces, held_set))
    }

    /// Builds a set from specs keyed by MAC and held MACs; a MAC in both is
    /// held (the spec is dropped).
    pub fn from_parts(mut interfaces: BTreeMap<MacAddress, InterfaceSpec>, held: BTreeSet<MacAddress>) -> Self {
        interfaces.retain(|mac, _| !held.contains(mac));
        let digest = digest_of(&interfaces, &held);
        Self { interfaces, held, digest }
    }

    /// The empty set (a node with no secondary interfaces).
    pub fn empty() -> Self {
        Self::from_parts(BTreeMap::new(), BTreeSet::new())
    }

    /// MACs whose current configuration on the node must be left as it is.
    pub fn held(&self) -> &BTreeSet<MacAddress> {
        &self.held
    }

    /// Whether `mac` is held.
    pub fn is_held(&self, mac: &MacAddress) -> bool {
        self.held.contains(mac)
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn get(&self, mac: &MacAddress) -> Option<&InterfaceSpec> {
        self.interfaces.get(mac)
    }

    /// The specs in MAC order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &InterfaceSpec> {
        self.interfaces.values()
    }

    /// Number of specs (held MACs not counted).
    pub fn len(&self) -> usize {
        self.interfaces.len()
    }

    /// No specs and nothing held.
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.held.is_empty()
    }
}

/// One line per interface, `mac address-or-dash mtu`, in MAC order, then one
/// `mac hold` line per held MAC.
fn digest_of(interfaces: &BTreeMap<MacAddress, InterfaceSpec>, held: &BTreeSet<MacAddress>) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(b"multinic.v1/desired-set\n");
    for spec in interfaces.values() {
        let address = spec.address.map_or_else(|| "-".to_owned(), |a| a.to_string());
        hasher.update(format!("{} {} {}\n", spec.mac, address, spec.mtu).as_bytes());
    }
    for mac in held {
        hasher.update(format!("{mac} hold\n").as_bytes());
    }
    Digest(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mac: &str, addr: Option<&str>, mtu: i64) -> InterfaceSpec {
        InterfaceSpec::new(mac.parse().unwrap(), addr.map(|a| a.parse().unwrap()), Mtu::new(mtu).unwrap()).unwrap()
    }

    #[test]
    fn digest_ignores_order_and_sees_every_field() {
        let a = spec("fa:16:3e:00:00:01", Some("10.0.0.5/24"), 1500);
        let b = spec("fa:16:3e:00:00:02", None, 9000);
        let one = DesiredSet::new([a, b]).unwrap();
        let two = DesiredSet::new([b, a]).unwrap();
        assert_eq!(one.digest(), two.digest());

        let changed_mtu = DesiredSet::new([a, spec("fa:16:3e:00:00:02", None, 1500)]).unwrap();
        let changed_addr = DesiredSet::new([spec("fa:16:3e:00:00:01", Some("10.0.0.6/24"), 1500), b]).unwrap();
        let dropped_addr = DesiredSet::new([spec("fa:16:3e:00:00:01", None, 1500), b]).unwrap();
        for other in [changed_mtu, changed_addr, dropped_addr, DesiredSet::empty()] {
            assert_ne!(one.digest(), other.digest());
        }
        assert_eq!(one.digest().as_str().len(), 64);
    }

    #[test]
    fn held_macs_change_the_digest_and_exclude_specs() {
        let a = spec("fa:16:3e:00:00:01", None, 1500);
        let b: MacAddress = "fa:16:3e:00:00:02".parse().unwrap();
        let plain = DesiredSet::new([a]).unwrap();
        let held = DesiredSet::with_held([a], [b]).unwrap();
        assert_ne!(plain.digest(), held.digest());
        assert!(held.is_held(&b));
        assert!(DesiredSet::with_held([a], [a.mac]).is_err());
        let merged = DesiredSet::from_parts([(a.mac, a)].into(), [a.mac].into());
        assert_eq!(merged.len(), 0);
        assert!(merged.is_held(&a.mac));
    }

    #[test]
    fn duplicate_macs_are_refused() {
        let a = spec("fa:16:3e:00:00:01", None, 1500);
        let err = DesiredSet::new([a, a]).unwrap_err();
        assert!(err.to_string().contains("fa:16:3e:00:00:01"));
    }

    #[test]
    fn ipv6_needs_mtu_1280() {
        let err = InterfaceSpec::new(
            "fa:16:3e:00:00:01".parse().unwrap(),
            Some("2001:db8::5/64".parse().unwrap()),
            Mtu::new(1200).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("1280"));
    }
}
