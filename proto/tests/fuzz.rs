//! Fuzzing of everything that reads peer input, with proptest (stable Rust;
//! cargo-fuzz needs nightly). CI runs the default number of cases; a longer
//! run: `PROPTEST_CASES=200000 cargo test -p multinic-proto --test fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use multinic_proto::v1;
use multinic_proto::{AgentHello, AgentReport, DesiredPush, IfaceAddr, MacAddress, Mtu, NodeName};
use proptest::prelude::*;
use prost::Message;

proptest! {
    /// Arbitrary bytes never panic the decoders or the conversions.
    #[test]
    fn wire_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(m) = v1::AgentMessage::decode(bytes.as_slice()) {
            match m.kind {
                Some(v1::agent_message::Kind::Hello(h)) => { let _ = AgentHello::try_from(&h); }
                Some(v1::agent_message::Kind::Report(r)) => { let _ = AgentReport::try_from(&r); }
                None => {}
            }
        }
        if let Ok(m) = v1::ControllerMessage::decode(bytes.as_slice())
            && let Some(v1::controller_message::Kind::Desired(d)) = m.kind {
                let _ = DesiredPush::try_from(&d);
            }
    }

    /// Arbitrary field values in well-formed messages: conversion either
    /// refuses with an error or yields values that convert back unchanged.
    #[test]
    fn desired_state_conversion_is_total(
        macs in proptest::collection::vec("[0-9a-fA-F:-]{0,20}", 0..6),
        addresses in proptest::collection::vec("[0-9a-f.:/]{0,24}", 0..6),
        mtus in proptest::collection::vec(any::<u32>(), 0..6),
        held in proptest::collection::vec("[0-9a-f:]{0,17}", 0..3),
        digest in "[0-9a-f]{0,64}",
    ) {
        let interfaces = macs.iter().zip(addresses.iter()).zip(mtus.iter())
            .map(|((m, a), mtu)| v1::Interface { mac_address: m.clone(), address: a.clone(), mtu: *mtu })
            .collect();
        let msg = v1::DesiredState { generation: 1, nonce: 2, digest, interfaces, held_mac_addresses: held };
        if let Ok(push) = DesiredPush::try_from(&msg) {
            let back = v1::DesiredState::from(&push);
            prop_assert_eq!(DesiredPush::try_from(&back).unwrap(), push);
        }
    }

    #[test]
    fn reports_with_any_strings_never_panic(
        mac in "\\PC{0,30}", name in "\\PC{0,20}", state in any::<i32>(), code in any::<i32>(),
        message in "\\PC{0,2000}", outcome in any::<i32>(),
    ) {
        let status = v1::InterfaceStatus { mac_address: mac, name, state, error_code: code, message };
        let report = v1::Report { generation: 0, nonce: 0, digest: String::new(), outcome, interfaces: vec![status], error: String::new(), drift: Vec::new() };
        if let Ok(r) = AgentReport::try_from(&report) {
            prop_assert!(r.interfaces[0].message.len() <= 1024 + 3);
        }
    }

    /// The validators never panic on any text, and what they accept prints
    /// back to something they accept again (normal forms are stable).
    #[test]
    fn validators_are_total_and_stable(text in "\\PC{0,64}", number in any::<i64>()) {
        if let Ok(mac) = text.parse::<MacAddress>() {
            prop_assert_eq!(mac.to_string().parse::<MacAddress>().unwrap(), mac);
        }
        if let Ok(addr) = text.parse::<IfaceAddr>() {
            prop_assert_eq!(addr.to_string().parse::<IfaceAddr>().unwrap(), addr);
        }
        if let Ok(node) = text.parse::<NodeName>() {
            prop_assert_eq!(node.as_str().parse::<NodeName>().unwrap(), node);
        }
        if let Some((a, c)) = text.split_once(' ') {
            let _ = IfaceAddr::from_address_and_cidr(a, c);
        }
        let _ = Mtu::new(number);
    }
}
