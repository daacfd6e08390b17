//! [`LinkOps`] over rtnetlink, in the network namespace the agent runs in.
//!
//! The socket asks for extended ACKs, so a refusal carries the kernel's own
//! words ("mtu greater than device maximum"), which end up in reports. The
//! connection runs on a private single-threaded tokio runtime that only the
//! blocking calls of this type drive; it must never be called from an async
//! task (the reconciler runs on blocking threads).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use multinic_proto::MacAddress;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};

use super::{KernelAddr, KernelError, KernelState, LinkOps, LinkState};

const EADDRNOTAVAIL: i32 = 99;

/// The kernel of the agent's network namespace, over rtnetlink.
#[derive(Debug)]
pub struct Rtnetlink {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
    /// One request at a time: the runtime is single-threaded.
    busy: Mutex<()>,
    changes: AtomicU64,
}

impl Rtnetlink {
    /// Opens a route netlink socket in the current network namespace.
    pub fn open() -> Result<Self, KernelError> {
        let open = |e: std::io::Error| KernelError::Open { reason: e.to_string() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(open)?;
        // Registering the socket needs a reactor; entering one is allowed
        // from anywhere (unlike `block_on`).
        let handle = {
            let _reactor = runtime.enter();
            let (mut connection, handle, _events) = rtnetlink::new_connection().map_err(open)?;
            let socket = connection.socket_mut().socket_mut();
            socket.set_ext_ack(true).map_err(open)?;
            socket.set_cap_ack(true).map_err(open)?;
            runtime.spawn(connection);
            handle
        };
        Ok(Self { runtime: Some(runtime), handle, busy: Mutex::new(()), changes: AtomicU64::new(0) })
    }

    fn block<T>(&self, future: impl Future<Output = T>) -> T {
        let _one = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            // Only `drop` takes the runtime.
            None => unreachable!("runtime taken before drop"),
        }
    }

    fn change(
        &self,
        operation: String,
        future: impl Future<Output = Result<(), rtnetlink::Error>>,
    ) -> Result<(), KernelError> {
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.block(future).map_err(|e| request_error(operation, &e))
    }
}

impl Drop for Rtnetlink {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl LinkOps for Rtnetlink {
    fn read(&self) -> Result<KernelState, KernelError> {
        self.block(read_state(&self.handle))
    }

    fn set_up(&self, index: u32, up: bool) -> Result<(), KernelError> {
        let builder = LinkUnspec::new_with_index(index);
        let message = if up { builder.up() } else { builder.down() }.build();
        let what = if up { "up" } else { "down" };
        self.change(format!("set link {index} {what}"), self.handle.link().set(message).execute())
    }

    fn rename(&self, index: u32, name: &str) -> Result<(), KernelError> {
        let message = LinkUnspec::new_with_index(index).name(name.to_owned()).build();
        self.change(format!("rename link {index} to {name}"), self.handle.link().set(message).execute())
    }

    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), KernelError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.change(format!("set MTU {mtu} on link {index}"), self.handle.link().set(message).execute())
    }

    fn add_address(&self, index: u32, addr: KernelAddr) -> Result<(), KernelError> {
        let mut request = self.handle.address().add(index, addr.ip, addr.prefix).replace();
        if addr.ip.is_ipv6() {
            request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.change(format!("add {addr} to link {index}"), request.execute())
    }

    fn remove_address(&self, index: u32, addr: KernelAddr) -> Result<(), KernelError> {
        let message = match addr.ip {
            IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(ip, addr.prefix).build(),
            IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(ip, addr.prefix).build(),
        };
        match self.change(format!("remove {addr} from link {index}"), self.handle.address().del(message).execute()) {
            Err(e) if e.errno() == Some(EADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

async fn read_state(handle: &Handle) -> Result<KernelState, KernelError> {
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(message) = stream.try_next().await.map_err(|e| request_error("dump links".into(), &e))? {
        links.push(parse_link(&message));
    }
    let mut addresses: BTreeMap<u32, BTreeSet<KernelAddr>> = BTreeMap::new();
    let mut stream = handle.address().get().execute();
    while let Some(message) = stream.try_next().await.map_err(|e| request_error("dump addresses".into(), &e))? {
        if let Some(addr) = parse_address(&message) {
            addresses.entry(message.header.index).or_default().insert(addr);
        }
    }
    for link in &mut links {
        link.addresses = addresses.remove(&link.index).unwrap_or_default();
    }
    let mut default_route_links = BTreeSet::new();
    for request in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
        let mut stream = handle.route().get(request).execute();
        while let Some(message) = stream.try_next().await.map_err(|e| request_error("dump routes".into(), &e))? {
            default_route_links.extend(default_route_oifs(&message));
        }
    }
    Ok(KernelState { links, default_route_links })
}

fn parse_link(message: &LinkMessage) -> LinkState {
    let mac = |bytes: &[u8]| <[u8; 6]>::try_from(bytes).ok().and_then(|o| MacAddress::from_octets(o).ok());
    let mut link = LinkState {
        index: message.header.index,
        name: String::new(),
        mac: None,
        perm_mac: None,
        mtu: 0,
        min_mtu: None,
        max_mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
        master: None,
        lower: None,
        kind: None,
        addresses: BTreeSet::new(),
    };
    let mut other_namespace = false;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => link.mac = mac(bytes),
            LinkAttribute::PermAddress(bytes) => link.perm_mac = mac(bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::MinMtu(mtu) => link.min_mtu = Some(*mtu),
            LinkAttribute::MaxMtu(mtu) => link.max_mtu = Some(*mtu),
            LinkAttribute::Controller(index) => link.master = Some(*index),
            LinkAttribute::Link(index) => link.lower = Some(*index),
            LinkAttribute::LinkNetNsId(_) => other_namespace = true,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string().to_ascii_lowercase());
                    }
                }
            }
            _ => {}
        }
    }
    if other_namespace || link.lower == Some(link.index) {
        link.lower = None;
    }
    link
}

fn parse_address(message: &AddressMessage) -> Option<KernelAddr> {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
    // peer on point-to-point links); IPv6 has IFA_ADDRESS only.
    local.or(address).map(|ip| KernelAddr::new(ip, message.header.prefix_len))
}

/// The output links of a default unicast route of the main table.
fn default_route_oifs(message: &RouteMessage) -> Vec<u32> {
    let table = message
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(message.header.table));
    if message.header.destination_prefix_length != 0
        || message.header.kind != RouteType::Unicast
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return Vec::new();
    }
    let mut oifs = Vec::new();
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => oifs.push(*index),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    oifs
}

/// A failed request with the kernel's errno and extended ACK message.
fn request_error(operation: String, error: &rtnetlink::Error) -> KernelError {
    let rtnetlink::Error::NetlinkError(message) = error else {
        return KernelError::Request { operation, errno: None, message: error.to_string() };
    };
    let errno = message.raw_code().abs();
    let mut text = std::io::Error::from_raw_os_error(errno).to_string();
    if let Some(ack) = extended_ack(&message.header) {
        text.push_str(": ");
        text.push_str(&ack);
    }
    KernelError::Request { operation, errno: Some(errno), message: text }
}

/// NLMSGERR_ATTR_MSG from an error's payload: with NETLINK_CAP_ACK the
/// payload is the 16-byte header of our request followed by attributes;
/// rtnetlink does not parse them.
fn extended_ack(payload: &[u8]) -> Option<String> {
    let mut offset = 16usize;
    while offset + 4 <= payload.len() {
        let len = usize::from(u16::from_ne_bytes([payload[offset], payload[offset + 1]]));
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]) & 0x3fff;
        if len < 4 || offset + len > payload.len() {
            return None;
        }
        if kind == 1 {
            let text = payload[offset + 4..offset + len].split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        offset += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_ack_is_found_after_the_echoed_header() {
        let mut payload = vec![0u8; 16];
        let text = b"mtu greater than device maximum\0";
        let len = u16::try_from(4 + text.len()).unwrap();
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(extended_ack(&payload).as_deref(), Some("mtu greater than device maximum"));
        assert_eq!(extended_ack(&payload[..20]), None);
        assert_eq!(extended_ack(&[]), None);
    }
}
