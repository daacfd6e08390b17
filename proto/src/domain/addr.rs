//! Interface addresses and MTUs.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::ParseError;

/// An interface address with its prefix length, e.g. `10.0.0.5/24`.
///
/// Always a usable host address: inside its network, not the IPv4 network
/// or broadcast address, not loopback, multicast or unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfaceAddr {
    addr: IpAddr,
    prefix: u8,
}

impl IfaceAddr {
    /// Builds an interface address from a host address (`10.0.0.5`) and the
    /// cidr of its subnet (`10.0.0.0/24`), as the database stores them.
    ///
    /// A cidr with host bits set (`10.0.0.1/24`) is accepted as the network
    /// it names; an address outside the cidr is refused.
    pub fn from_address_and_cidr(address: &str, cidr: &str) -> Result<Self, ParseError> {
        let addr = parse_host(address)?;
        let (network, prefix) = parse_cidr(cidr)?;
        if addr.is_ipv4() != network.is_ipv4() {
            return Err(ParseError::Address {
                input: address.to_owned(),
                reason: format!("address family differs from cidr {cidr}"),
            });
        }
        if mask(addr, prefix) != mask(network, prefix) {
            return Err(ParseError::Address { input: address.to_owned(), reason: format!("outside its cidr {cidr}") });
        }
        Self::new(addr, prefix).map_err(|reason| ParseError::Address { input: address.to_owned(), reason })
    }

    fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        if let IpAddr::V4(v4) = addr
            && prefix <= 30
        {
            let host_bits = u32::MAX >> prefix;
            let bits = u32::from(v4) & host_bits;
            if bits == 0 {
                return Err(format!("is the network address of /{prefix}"));
            }
            if bits == host_bits {
                return Err(format!("is the broadcast address of /{prefix}"));
            }
        }
        Ok(Self { addr, prefix })
    }

    /// The host address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for IfaceAddr {
    type Err = ParseError;

    /// Parses the `a.b.c.d/len` (or IPv6) form used on the wire and in files.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ParseError::Address { input: input.to_owned(), reason };
        let (addr, prefix) = input.split_once('/').ok_or_else(|| err("expected address/prefix".into()))?;
        let addr = parse_host(addr).map_err(|e| err(e.to_string()))?;
        let prefix = parse_prefix(prefix, addr).map_err(err)?;
        Self::new(addr, prefix).map_err(err)
    }
}

impl fmt::Display for IfaceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn parse_host(input: &str) -> Result<IpAddr, ParseError> {
    let err = |reason: &str| ParseError::Address { input: input.to_owned(), reason: reason.to_owned() };
    if input.contains('/') {
        return Err(err("must be a bare address; the prefix comes from the cidr"));
    }
    let addr: IpAddr = input.parse().map_err(|_| err("not an IPv4 or IPv6 address"))?;
    if addr.is_unspecified() {
        return Err(err("unspecified address"));
    }
    if addr.is_loopback() {
        return Err(err("loopback address"));
    }
    if addr.is_multicast() {
        return Err(err("multicast address"));
    }
    if let IpAddr::V4(v4) = addr
        && v4.is_broadcast()
    {
        return Err(err("broadcast address"));
    }
    Ok(addr)
}

/// Parses `network/len`; returns the address part and the prefix.
fn parse_cidr(input: &str) -> Result<(IpAddr, u8), ParseError> {
    let err = |reason: String| ParseError::Cidr { input: input.to_owned(), reason };
    let (network, prefix) = input.split_once('/').ok_or_else(|| err("expected network/prefix".into()))?;
    let network: IpAddr = network.parse().map_err(|_| err("network is not an IPv4 or IPv6 address".into()))?;
    let prefix = parse_prefix(prefix, network).map_err(err)?;
    Ok((network, prefix))
}

fn parse_prefix(input: &str, addr: IpAddr) -> Result<u8, String> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if input.is_empty() || input.len() > 3 || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("prefix {input:?} is not a number"));
    }
    match input.parse::<u8>() {
        Ok(p) if p <= max && p > 0 => Ok(p),
        _ => Err(format!("prefix {input} is out of range 1..={max}")),
    }
}

fn mask(addr: IpAddr, prefix: u8) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) >> (32 - prefix) << (32 - prefix),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if prefix == 128 { bits } else { bits >> (128 - prefix) << (128 - prefix) }
        }
    }
}

/// A link MTU in the range every backend and kernel accepts (68..=9216).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mtu(u16);

impl Mtu {
    /// The smallest MTU IPv4 allows.
    pub const MIN: u16 = 68;
    /// The largest MTU we configure (jumbo frames).
    pub const MAX: u16 = 9216;
    /// The MTU of a row whose `mtu` column is NULL (the column's default).
    pub const DEFAULT: Mtu = Mtu(1500);

    /// Validates an MTU as found in a row or message.
    pub fn new(value: i64) -> Result<Self, ParseError> {
        let reason = if value <= 0 {
            "must be positive".to_owned()
        } else if value < i64::from(Self::MIN) {
            format!("below the minimum {}", Self::MIN)
        } else if value > i64::from(Self::MAX) {
            format!("above the maximum {}", Self::MAX)
        } else {
            // The range check above makes this conversion infallible.
            return Ok(Self(value as u16));
        };
        Err(ParseError::Mtu { input: value, reason })
    }

    /// The value in bytes.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_inside_cidr() {
        let a = IfaceAddr::from_address_and_cidr("192.168.10.5", "192.168.10.0/24").unwrap();
        assert_eq!(a.to_string(), "192.168.10.5/24");
        let b = IfaceAddr::from_address_and_cidr("192.168.10.5", "192.168.10.1/24").unwrap();
        assert_eq!(a, b, "host bits in the cidr are ignored");
        let v6 = IfaceAddr::from_address_and_cidr("2001:db8::5", "2001:db8::/64").unwrap();
        assert_eq!(v6.to_string(), "2001:db8::5/64");
    }

    #[test]
    fn bad_addresses_name_the_problem() {
        for (address, cidr, needle) in [
            ("10.0.1.5", "10.0.0.0/24", "outside its cidr"),
            ("10.0.0.0", "10.0.0.0/24", "network address"),
            ("10.0.0.255", "10.0.0.0/24", "broadcast address"),
            ("2001:db8::1", "10.0.0.0/24", "family"),
            ("10.0.0.5/24", "10.0.0.0/24", "bare address"),
            ("10.0.0.256", "10.0.0.0/24", "not an IPv4"),
            ("127.0.0.2", "127.0.0.0/8", "loopback"),
            ("0.0.0.0", "0.0.0.0/8", "unspecified"),
            ("10.0.0.5", "10.0.0.0", "expected network/prefix"),
            ("10.0.0.5", "10.0.0.0/33", "out of range"),
            ("10.0.0.5", "10.0.0.0/0", "out of range"),
            ("10.0.0.5", "10.0.0.0/x", "not a number"),
            ("10.0.0.5", "banana/24", "network is not"),
        ] {
            let err = IfaceAddr::from_address_and_cidr(address, cidr).unwrap_err().to_string();
            assert!(err.contains(needle), "{address} in {cidr}: {err}");
        }
    }

    #[test]
    fn point_to_point_prefixes_allow_every_address() {
        assert!(IfaceAddr::from_address_and_cidr("10.0.0.0", "10.0.0.0/31").is_ok());
        assert!(IfaceAddr::from_address_and_cidr("10.0.0.7", "10.0.0.7/32").is_ok());
    }

    #[test]
    fn wire_form_round_trips() {
        for s in ["10.0.0.5/24", "2001:db8::5/64", "172.16.0.1/12"] {
            assert_eq!(s.parse::<IfaceAddr>().unwrap().to_string(), s);
        }
        for s in ["10.0.0.5", "10.0.0.5/", "10.0.0.5/-1", "/24", "10.0.0.0/24"] {
            assert!(s.parse::<IfaceAddr>().is_err(), "{s}");
        }
    }

    #[test]
    fn mtu_range() {
        for bad in [0, -1, 67, 9217, i64::MAX, i64::MIN] {
            assert!(Mtu::new(bad).is_err(), "{bad}");
        }
        for good in [68, 1280, 1500, 9000, 9216] {
            assert_eq!(i64::from(Mtu::new(good).unwrap().get()), good);
        }
        assert!(Mtu::new(0).unwrap_err().to_string().contains("positive"));
        assert!(Mtu::new(9217).unwrap_err().to_string().contains("9216"));
    }
}
