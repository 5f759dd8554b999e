//! Which addresses a webhook may be delivered to: only globally routable ones, judged by
//! the IANA special-purpose address registries (IPv4: RFC 6890 and its updates; IPv6: the
//! IPv6 special-purpose registry). A receiver's URL is chosen by an admin, but what its
//! host resolves to is not under anyone's control here, so every resolved address is
//! checked before a connection, and the connection goes to the address that was checked.
//!
//! An IPv4 address carried inside IPv6 (IPv4-mapped, IPv4-compatible, NAT64 in the
//! well-known prefix, 6to4) is judged as the IPv4 address it carries: `::ffff:127.0.0.1`
//! is loopback, whatever its spelling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    SharedAddressSpace,
    Documentation,
    Benchmarking,
    Multicast,
    Reserved,
    UniqueLocal,
    ProtocolAssignment,
}

impl Refusal {
    /// How the refusal reads in an error or a delivery's `lastError`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address (cloud metadata services live there)",
            Self::SharedAddressSpace => "a carrier-grade NAT address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address",
            Self::Multicast => "a multicast address",
            Self::Reserved => "a reserved address",
            Self::UniqueLocal => "a unique-local address",
            Self::ProtocolAssignment => "an address reserved for protocol assignments",
        }
    }
}

/// `Ok` when `ip` is globally routable; the class that makes it not, otherwise.
pub fn classify(ip: IpAddr) -> Result<(), Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Result<(), Refusal> {
    use Refusal::*;
    const TABLE: &[([u8; 4], u32, Refusal)] = &[
        ([0, 0, 0, 0], 8, Unspecified),            // "this network"
        ([10, 0, 0, 0], 8, Private),               // RFC 1918
        ([100, 64, 0, 0], 10, SharedAddressSpace), // RFC 6598
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal), // includes 169.254.169.254
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, ProtocolAssignment),    // RFC 6890
        ([192, 0, 2, 0], 24, Documentation),         // TEST-NET-1
        ([192, 31, 196, 0], 24, ProtocolAssignment), // AS112-v4
        ([192, 52, 193, 0], 24, ProtocolAssignment), // AMT
        ([192, 88, 99, 0], 24, Reserved),            // deprecated 6to4 relay anycast
        ([192, 168, 0, 0], 16, Private),
        ([192, 175, 48, 0], 24, ProtocolAssignment), // direct delegation AS112
        ([198, 18, 0, 0], 15, Benchmarking),         // RFC 2544
        ([198, 51, 100, 0], 24, Documentation),      // TEST-NET-2
        ([203, 0, 113, 0], 24, Documentation),       // TEST-NET-3
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved), // includes 255.255.255.255
    ];
    match TABLE.iter().find(|(net, prefix, _)| in_v4(ip, *net, *prefix)) {
        Some((_, _, refusal)) => Err(*refusal),
        None => Ok(()),
    }
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 address an IPv6 address carries, by the forms that carry one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), NAT64 with the
/// well-known prefix (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible: ::/96, except :: and ::1, which are IPv6's own.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low);
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low);
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Result<(), Refusal> {
    use Refusal::*;
    let table: [(Ipv6Addr, u32, Refusal); 12] = [
        (Ipv6Addr::UNSPECIFIED, 128, Unspecified),
        (Ipv6Addr::LOCALHOST, 128, Loopback),
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, Private), // local-use NAT64
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, Reserved),    // discard-only
        (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, Benchmarking),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, Documentation),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, ProtocolAssignment),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, Documentation),
        (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, Reserved), // SRv6 SIDs
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, UniqueLocal),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, Multicast),
    ];
    if let Some((_, _, refusal)) = table.iter().find(|(net, prefix, _)| in_v6(ip, *net, *prefix)) {
        return Err(*refusal);
    }
    // Only the global unicast range is routed on the internet; the rest is unassigned
    // or reserved (2000::/3 holds every global allocation).
    if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Err(Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> Option<Refusal> {
        classify(s.parse().unwrap()).err()
    }

    #[test]
    fn public_addresses_pass() {
        for ok in ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700::6810:84e5", "2a00:1450:4001:82b::200e"]
        {
            assert_eq!(refused(ok), None, "{ok}");
        }
    }

    #[test]
    fn every_special_purpose_class_is_refused() {
        use Refusal::*;
        for (addr, class) in [
            ("0.0.0.0", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("192.0.0.8", ProtocolAssignment),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("192.88.99.1", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", ProtocolAssignment),
            ("100::1", Reserved),
            ("64:ff9b:1::1", Private),
            ("4000::1", Reserved),
        ] {
            assert_eq!(refused(addr), Some(class), "{addr}");
        }
        // Just outside the ranges: public.
        for ok in ["172.32.0.1", "100.128.0.1", "198.20.0.1", "11.0.0.1", "169.253.255.255"] {
            assert_eq!(refused(ok), None, "{ok}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_as_ipv4() {
        use Refusal::*;
        for (addr, class) in [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.0.0.1", Private),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::192.168.0.1", Private),
            ("2002:7f00:0001::", Loopback),
            ("2002:c0a8:0101::1", Private),
        ] {
            assert_eq!(refused(addr), Some(class), "{addr}");
        }
        assert_eq!(refused("::ffff:8.8.8.8"), None);
        assert_eq!(refused("64:ff9b::808:808"), None);
        assert_eq!(refused("2002:0808:0808::1"), None);
    }
}
