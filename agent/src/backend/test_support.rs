//! Helpers shared by the backends' unit tests.

use std::path::Path;

use multinic_proto::{IfaceAddr, InterfaceName, InterfaceSpec, MacAddress, Mtu};
use proptest::prelude::*;

pub fn name(i: u8) -> InterfaceName {
    InterfaceName::new(i, 10).unwrap()
}

pub fn spec(mac: &str, address: Option<&str>, mtu: i64) -> InterfaceSpec {
    InterfaceSpec::new(mac.parse().unwrap(), address.map(|a| a.parse().unwrap()), Mtu::new(mtu).unwrap()).unwrap()
}

/// Compares with the golden file `testdata/<backend>/<file>`;
/// `UPDATE_GOLDEN=1 cargo nextest run -p multinic-agent` rewrites it.
pub fn golden(backend: &str, file: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(backend).join(file);
    multinic_testkit::assert_golden(&path, actual);
}

/// Any valid spec: a locally administered unicast MAC, no address or an
/// IPv4/IPv6 one, an MTU every family allows.
pub fn any_spec() -> impl Strategy<Value = InterfaceSpec> {
    let mac = proptest::array::uniform6(any::<u8>()).prop_map(|mut o| {
        o[0] = (o[0] & 0xfe) | 0x02;
        MacAddress::from_octets(o).unwrap()
    });
    let v4 = (1u8..=223, any::<u8>(), any::<u8>(), 1u8..=254, 8u8..=30)
        .prop_map(|(a, b, c, d, p)| format!("{a}.{b}.{c}.{d}/{p}").parse::<IfaceAddr>().ok());
    let v6 = (1u16..0xfeff, any::<u16>(), 1u16.., 16u8..=127)
        .prop_map(|(a, b, c, p)| format!("{a:x}:{b:x}::{c:x}/{p}").parse::<IfaceAddr>().ok());
    let address = prop_oneof![Just(None), v4, v6];
    (mac, address, 1280i64..=9216).prop_map(|(mac, address, mtu)| {
        InterfaceSpec::new(mac, address.filter(|a| !a.addr().is_loopback()), Mtu::new(mtu).unwrap()).unwrap()
    })
}
