//! The node's kernel as the agent sees and changes it: links, addresses and
//! default routes, behind the small [`LinkOps`] trait.
//!
//! Why a trait: the planner and the reconciler must be testable with plain
//! `#[test]`s ([`memory::MemoryKernel`]), while the agent talks rtnetlink
//! ([`rtnl::Rtnetlink`]). Both count every mutating request, so "a repeated
//! push changes nothing" is a number, not a hope.
//!
//! What is pure lives in [`diff`] (kernel state vs desired state → steps,
//! verification) and [`facts`] (which NICs are protected, which MAC is which
//! link). Nothing here decides *what* should be configured; it only reads,
//! applies steps and compares. It must never act on a link by name alone:
//! links are found by MAC and changed by ifindex, which survives renames.

pub mod diff;
pub mod facts;
pub mod memory;
pub mod rtnl;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use multinic_proto::{IfaceAddr, MacAddress};

pub use diff::{LinkTarget, Step};

/// An address on a link as the kernel has it: any IP with any prefix (unlike
/// [`IfaceAddr`], which only holds addresses we would configure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl KernelAddr {
    pub fn new(ip: IpAddr, prefix: u8) -> Self {
        Self { ip, prefix }
    }

    /// IPv6 link-local (fe80::/10): created by the kernel, never ours to manage.
    pub fn is_ipv6_link_local(&self) -> bool {
        matches!(self.ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    }
}

impl From<IfaceAddr> for KernelAddr {
    fn from(a: IfaceAddr) -> Self {
        Self { ip: a.addr(), prefix: a.prefix() }
    }
}

impl fmt::Display for KernelAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl FromStr for KernelAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected address/prefix"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?}: not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix above {max}"));
        }
        Ok(Self { ip, prefix })
    }
}

/// One network link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// The current MAC (IFLA_ADDRESS), when it is a valid unicast MAC.
    pub mac: Option<MacAddress>,
    /// The permanent MAC (IFLA_PERM_ADDRESS); real and virtio NICs have one,
    /// veth, macvlan and dummy links do not.
    pub perm_mac: Option<MacAddress>,
    pub mtu: u32,
    pub min_mtu: Option<u32>,
    pub max_mtu: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The bridge or bond this link is enslaved to (IFLA_MASTER).
    pub master: Option<u32>,
    /// The device this one sits on (IFLA_LINK), when in the same namespace.
    pub lower: Option<u32>,
    pub kind: Option<String>,
    /// Every address, IPv6 link-local included.
    pub addresses: BTreeSet<KernelAddr>,
}

impl LinkState {
    /// The MAC that identifies the NIC: the permanent one when the driver has
    /// one (that is what netplan's `match.macaddress` matches), else the current.
    pub fn identity(&self) -> Option<MacAddress> {
        self.perm_mac.or(self.mac)
    }

    /// Addresses we compare and manage (IPv6 link-local left out).
    pub fn managed_addresses(&self) -> BTreeSet<KernelAddr> {
        self.addresses.iter().filter(|a| !a.is_ipv6_link_local()).copied().collect()
    }
}

/// Everything read from the kernel in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: Vec<LinkState>,
    /// Ifindexes that carry an IPv4 or IPv6 default route of the main table.
    pub default_route_links: BTreeSet<u32>,
}

impl KernelState {
    pub fn link(&self, index: u32) -> Option<&LinkState> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn by_name(&self) -> BTreeMap<&str, &LinkState> {
        self.links.iter().map(|l| (l.name.as_str(), l)).collect()
    }
}

/// A kernel request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open a netlink socket: {reason}")]
    Open { reason: String },
    #[error("{operation}: {message}")]
    Request {
        operation: String,
        /// The positive errno of the kernel's answer, when there was one.
        errno: Option<i32>,
        /// The kernel's words (errno text plus the extended ACK message).
        message: String,
    },
    #[error("link with ifindex {index} is gone")]
    LinkGone { index: u32 },
}

impl KernelError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// Reads and changes links. Implementations count every mutating request,
/// failed ones included. Methods block: call them from blocking threads.
pub trait LinkOps: fmt::Debug + Send + Sync {
    /// Every link with its addresses, and which links carry a default route.
    fn read(&self) -> Result<KernelState, KernelError>;
    fn set_up(&self, index: u32, up: bool) -> Result<(), KernelError>;
    fn rename(&self, index: u32, name: &str) -> Result<(), KernelError>;
    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), KernelError>;
    /// Adds (or replaces) an address; IPv6 addresses skip duplicate detection.
    fn add_address(&self, index: u32, addr: KernelAddr) -> Result<(), KernelError>;
    /// Removes an address; one already gone is fine.
    fn remove_address(&self, index: u32, addr: KernelAddr) -> Result<(), KernelError>;
    /// Mutating requests sent since start.
    fn changes(&self) -> u64;
}

/// A step that failed while converging a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {error}")]
pub struct StepError {
    pub step: Step,
    #[source]
    pub error: KernelError,
}

/// Brings link `index` to `target`: link steps (down, rename, MTU, up) first,
/// then the addresses, read again after the link steps because the kernel
/// drops IPv6 addresses when a link goes down.
pub fn converge(ops: &dyn LinkOps, index: u32, target: &LinkTarget) -> Result<(), StepError> {
    let read = |step: Step| {
        let state = ops.read().map_err(|error| StepError { step: step.clone(), error })?;
        state.link(index).cloned().ok_or(StepError { step, error: KernelError::LinkGone { index } })
    };
    let link = read(Step::Read)?;
    let steps = diff::link_steps(&link, target);
    let relinked = !steps.is_empty();
    for step in steps {
        run_step(ops, index, &step).map_err(|error| StepError { step, error })?;
    }
    let link = if relinked { read(Step::Read)? } else { link };
    for step in diff::address_steps(&link.managed_addresses(), &target.addresses) {
        run_step(ops, index, &step).map_err(|error| StepError { step, error })?;
    }
    Ok(())
}

/// Sends one step.
pub fn run_step(ops: &dyn LinkOps, index: u32, step: &Step) -> Result<(), KernelError> {
    match step {
        Step::Read => ops.read().map(drop),
        Step::Down => ops.set_up(index, false),
        Step::Up => ops.set_up(index, true),
        Step::Rename(name) => ops.rename(index, name),
        Step::Mtu(mtu) => ops.set_mtu(index, *mtu),
        Step::AddAddress(a) => ops.add_address(index, *a),
        Step::RemoveAddress(a) => ops.remove_address(index, *a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_parse_and_know_link_local() {
        let a: KernelAddr = "fe80::1/64".parse().unwrap();
        assert!(a.is_ipv6_link_local());
        assert!(!"fec0::1/64".parse::<KernelAddr>().unwrap().is_ipv6_link_local());
        assert!(!"2001:db8::1/64".parse::<KernelAddr>().unwrap().is_ipv6_link_local());
        assert_eq!("10.0.0.0/24".parse::<KernelAddr>().unwrap().to_string(), "10.0.0.0/24");
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/1", "::1/129"] {
            assert!(bad.parse::<KernelAddr>().is_err(), "{bad}");
        }
    }
}
