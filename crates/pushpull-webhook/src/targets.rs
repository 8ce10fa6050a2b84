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
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => restricted_v4(v4),
            None => restricted_v6(v6),
        },
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
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
