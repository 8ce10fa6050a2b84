//! Which addresses a webhook may be delivered to: server-side request forgery protection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pushpull_core::Error;

/// What kinds of address the server may deliver to, besides public ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// Loopback addresses (127.0.0.0/8, ::1): for tests and sidecars.
    pub allow_loopback: bool,
    /// Private, link-local (cloud metadata included), shared and unique-local addresses.
    pub allow_private: bool,
}

/// The class of an address that is not a public unicast one.
fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            // An IPv6 form of an IPv4 address goes where that address goes: judge that one.
            Some(v4) => restricted_v4(v4).or_else(|| restricted_v6(v6)),
            None => restricted_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms a packet can be routed by:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), NAT64's
/// well-known prefix (`64:ff9b::a.b.c.d`, RFC 6052: a NAT64 gateway forwards it to a.b.c.d) and
/// 6to4 (`2002:AABB:CCDD::`, RFC 3056).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return Some(low(s[6], s[7])); // ::a.b.c.d (but not :: or ::1)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("private (benchmarking, 198.18.0.0/15)")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("private (IETF protocol assignments, 192.0.0.0/24)")
    } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a == 0 || a >= 240 {
        Some("not a unicast")
    } else {
        None
    }
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if first & 0xffc0 == 0xfec0 {
        Some("private (site-local, fec0::/10)")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not a unicast")
    } else {
        None
    }
}

impl TargetPolicy {
    /// Refuses `addr` unless the policy allows its class; the error names the class and the key
    /// that would allow it.
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), Error> {
        let Some(class) = restricted(addr.ip()) else { return Ok(()) };
        let allowed = match class {
            "loopback" => self.allow_loopback,
            "not a unicast" => false,
            _ => self.allow_private,
        };
        if allowed {
            return Ok(());
        }
        let key = if class == "loopback" { "allow_loopback" } else { "allow_private" };
        Err(Error::bad_request(format!(
            "{host} resolves to {}, a {class} address; webhooks are not delivered there unless \
             transports.webhook.{key} is set",
            addr.ip()
        )))
    }

    /// Resolves `host:port` and returns the first address the policy allows, checking every one
    /// (a name that resolves to any forbidden address is refused, against DNS tricks).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Error> {
        const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| {
                    Error::bad_request(format!("resolving {host} took over {RESOLVE_TIMEOUT:?}"))
                })?
                .map_err(|e| Error::bad_request(format!("cannot resolve {host}: {e}")))?
                .collect();
        let first =
            *addrs.first().ok_or_else(|| Error::bad_request(format!("{host} has no address")))?;
        for addr in &addrs {
            self.check(host, *addr)?;
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: TargetPolicy, ip: &str) -> Result<(), Error> {
        policy.check("host", SocketAddr::new(ip.parse().unwrap(), 80))
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let strict = TargetPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(check(strict, ip).is_err(), "{ip} should be refused");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(check(strict, ip).is_ok(), "{ip} is public");
        }
        let error = check(strict, "169.254.169.254").unwrap_err();
        assert!(
            error.message().contains("metadata") && error.message().contains("allow_private"),
            "{error}"
        );
    }

    #[test]
    fn every_form_of_an_internal_address_is_refused() {
        let strict = TargetPolicy::default();
        for ip in [
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254, the metadata service
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "::a9fe:a9fe",        // IPv4-compatible 169.254.169.254
            "::10.0.0.1",         // IPv4-compatible 10.0.0.1
            "2002:a9fe:a9fe::1",  // 6to4 of 169.254.169.254
            "fec0::1",            // site-local
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
            "::ffff:192.168.0.1",
        ] {
            let refused = check(strict, ip).expect_err(ip);
            assert!(refused.message().contains("address"), "{ip}: {refused}");
        }
        // The same forms of a public address are public.
        for ip in
            ["8.8.8.8", "2606:4700:4700::1111", "198.20.0.1", "64:ff9b::808:808", "2002:808:808::1"]
        {
            assert!(check(strict, ip).is_ok(), "{ip} is public");
        }
        // Even allowed private classes never allow loopback through a disguise.
        let private = TargetPolicy { allow_loopback: false, allow_private: true };
        assert!(check(private, "64:ff9b::7f00:1").is_err(), "NAT64 of loopback");
        assert!(check(private, "::7f00:1").is_err(), "IPv4-compatible loopback");
    }

    #[tokio::test]
    async fn numeric_spellings_resolve_to_what_they_mean_and_are_refused() {
        let strict = TargetPolicy::default();
        // Decimal, hex, octal and short forms of 127.0.0.1, and the unspecified address.
        for host in ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0.0.0.0", "::"] {
            let refused = strict.resolve(host, 80).await.expect_err(host);
            assert!(
                !refused.message().contains("cannot resolve"),
                "{host} is refused by the address check, not by DNS: {refused}"
            );
        }
    }

    #[test]
    fn the_policy_allows_what_it_names() {
        let loopback = TargetPolicy { allow_loopback: true, allow_private: false };
        assert!(check(loopback, "127.0.0.1").is_ok());
        assert!(check(loopback, "10.0.0.1").is_err());
        let private = TargetPolicy { allow_loopback: false, allow_private: true };
        assert!(check(private, "10.0.0.1").is_ok() && check(private, "127.0.0.1").is_err());
        assert!(
            check(TargetPolicy { allow_loopback: true, allow_private: true }, "0.0.0.0").is_err()
        );
    }
}
