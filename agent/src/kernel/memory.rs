//! An in-memory kernel for unit tests of everything above [`LinkOps`].
//!
//! It keeps the rules the real kernel enforces that the agent relies on:
//! unique names, MTU limits, IPv6 addresses dropped when a link goes down,
//! and a counter of mutating requests. It never pretends to be more: the
//! integration tests run against real kernels in network namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{KernelAddr, KernelError, KernelState, LinkOps, LinkState};

const EEXIST: i32 = 17;
const EINVAL: i32 = 22;

/// A kernel held in memory.
#[derive(Debug, Default)]
pub struct MemoryKernel {
    state: Mutex<KernelState>,
    /// Largest MTU accepted per ifindex without being advertised in
    /// `max_mtu` (like a macvlan on a smaller lower device).
    hidden_max_mtu: Mutex<BTreeMap<u32, u32>>,
    /// Links on which added addresses vanish at once (as if a DHCP client
    /// or another daemon removed them): the add succeeds, verification fails.
    swallow_addresses: Mutex<BTreeSet<u32>>,
    changes: AtomicU64,
    /// Fail every read (to test degraded modes).
    unreadable: std::sync::atomic::AtomicBool,
}

impl MemoryKernel {
    pub fn new(state: KernelState) -> Self {
        Self { state: Mutex::new(state), ..Self::default() }
    }

    /// Replaces or adds a link (a NIC plugged in).
    pub fn plug(&self, link: LinkState) {
        let mut state = lock(&self.state);
        state.links.retain(|l| l.index != link.index);
        state.links.push(link);
    }

    /// Rejects MTUs above `max` on `index` at set time only.
    pub fn reject_mtu_above(&self, index: u32, max: u32) {
        lock(&self.hidden_max_mtu).insert(index, max);
    }

    /// Addresses added to `index` silently disappear.
    pub fn drop_addresses_on(&self, index: u32) {
        lock(&self.swallow_addresses).insert(index);
    }

    /// Makes every read fail (no netlink access).
    pub fn set_unreadable(&self, unreadable: bool) {
        self.unreadable.store(unreadable, Ordering::Relaxed);
    }

    /// A copy of the current state.
    pub fn state(&self) -> KernelState {
        lock(&self.state).clone()
    }

    /// Changes the state behind the agent's back (drift).
    pub fn edit(&self, f: impl FnOnce(&mut KernelState)) {
        f(&mut lock(&self.state));
    }

    fn change<T>(
        &self,
        operation: String,
        f: impl FnOnce(&mut KernelState) -> Result<T, (i32, String)>,
    ) -> Result<T, KernelError> {
        self.changes.fetch_add(1, Ordering::Relaxed);
        f(&mut lock(&self.state)).map_err(|(errno, message)| KernelError::Request {
            operation,
            errno: Some(errno),
            message,
        })
    }
}

fn link_mut(state: &mut KernelState, index: u32) -> Result<&mut LinkState, (i32, String)> {
    state.links.iter_mut().find(|l| l.index == index).ok_or((19, "No such device".into()))
}

impl LinkOps for MemoryKernel {
    fn read(&self) -> Result<KernelState, KernelError> {
        if self.unreadable.load(Ordering::Relaxed) {
            return Err(KernelError::Open { reason: "Operation not permitted (os error 1)".into() });
        }
        Ok(self.state())
    }

    fn set_up(&self, index: u32, up: bool) -> Result<(), KernelError> {
        self.change(format!("set link {index} up={up}"), |s| {
            let link = link_mut(s, index)?;
            if link.up && !up {
                link.addresses.retain(|a| a.ip.is_ipv4());
            }
            link.up = up;
            Ok(())
        })
    }

    fn rename(&self, index: u32, name: &str) -> Result<(), KernelError> {
        self.change(format!("rename link {index} to {name}"), |s| {
            if s.links.iter().any(|l| l.name == name && l.index != index) {
                return Err((EEXIST, "File exists".into()));
            }
            link_mut(s, index)?.name = name.to_owned();
            Ok(())
        })
    }

    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), KernelError> {
        let hidden = lock(&self.hidden_max_mtu).get(&index).copied();
        self.change(format!("set link {index} MTU {mtu}"), |s| {
            let link = link_mut(s, index)?;
            if link.max_mtu.is_some_and(|m| m > 0 && mtu > m) || hidden.is_some_and(|m| mtu > m) {
                return Err((EINVAL, "Invalid argument; mtu greater than device maximum".into()));
            }
            if link.min_mtu.is_some_and(|m| mtu < m) {
                return Err((EINVAL, "Invalid argument; mtu less than device minimum".into()));
            }
            link.mtu = mtu;
            Ok(())
        })
    }

    fn add_address(&self, index: u32, addr: KernelAddr) -> Result<(), KernelError> {
        let swallow = lock(&self.swallow_addresses).contains(&index);
        self.change(format!("add {addr} to link {index}"), |s| {
            let link = link_mut(s, index)?;
            if !swallow {
                link.addresses.insert(addr);
            }
            Ok(())
        })
    }

    fn remove_address(&self, index: u32, addr: KernelAddr) -> Result<(), KernelError> {
        self.change(format!("remove {addr} from link {index}"), |s| {
            link_mut(s, index)?.addresses.remove(&addr);
            Ok(())
        })
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

// A poisoned lock means a test panicked elsewhere; the state is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
