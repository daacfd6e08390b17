//! MAC addresses: the identity of an interface.

use std::fmt;
use std::str::FromStr;

use super::ParseError;

/// A unicast, non-zero Ethernet MAC address. Displays in lower-case colon
/// form (`fa:16:3e:12:34:56`), the only form multinic ever writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Builds a MAC from octets, applying the same rules as parsing.
    pub fn from_octets(octets: [u8; 6]) -> Result<Self, ParseError> {
        let input = || Self(octets).to_string();
        if octets == [0; 6] {
            return Err(ParseError::Mac { input: input(), reason: "all-zero address" });
        }
        if octets[0] & 1 == 1 {
            return Err(ParseError::Mac {
                input: input(),
                reason: "multicast/broadcast address (least significant bit of the first octet is set)",
            });
        }
        Ok(Self(octets))
    }
}

impl FromStr for MacAddress {
    type Err = ParseError;

    /// Accepts exactly six colon-separated pairs of hex digits, any case.
    /// Dash-separated and bare forms are refused, never rewritten silently.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseError::Mac { input: input.to_owned(), reason };
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.contains('-') {
            return Err(err("use colons, not dashes, between octets"));
        }
        let mut octets = [0u8; 6];
        let mut parts = input.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(|| err("expected six octets"))?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("each octet must be two hex digits"));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err("each octet must be two hex digits"))?;
        }
        if parts.next().is_some() {
            return Err(err("expected six octets"));
        }
        Self::from_octets(octets)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_forms_normalise_to_lower_case() {
        for (input, want) in [
            ("00:11:22:33:44:55", "00:11:22:33:44:55"),
            ("AA:BB:CC:DD:EE:FE", "aa:bb:cc:dd:ee:fe"),
            ("aA:bB:cC:dD:eE:fF", "aa:bb:cc:dd:ee:ff"),
            ("fa:16:3e:00:00:01", "fa:16:3e:00:00:01"),
        ] {
            let mac: MacAddress = input.parse().unwrap();
            assert_eq!(mac.to_string(), want, "{input}");
        }
    }

    #[test]
    fn predecessor_invalid_cases_are_refused() {
        for input in [
            "00-11-22-33-44-55",
            "00:11:22:33:44",
            "00:11:22:33:44:55:66",
            "00:11:22:33:44:GG",
            "00112233445",
            "",
            "0:11:22:33:44:55",
            "000:11:22:33:44:55",
            " 00:11:22:33:44:55",
            "00:11:22:33:44:55 ",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "+0:11:22:33:44:55",
        ] {
            let err = input.parse::<MacAddress>().unwrap_err();
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn dashes_get_a_specific_reason() {
        let err = "00-11-22-33-44-55".parse::<MacAddress>().unwrap_err();
        assert!(err.to_string().contains("dashes"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn display_parse_round_trip(octets in proptest::array::uniform6(0u8..)) {
            if let Ok(mac) = MacAddress::from_octets(octets) {
                let back: MacAddress = mac.to_string().parse().unwrap();
                proptest::prop_assert_eq!(back, mac);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<MacAddress>();
        }
    }
}
