//! Which of a peer's addresses are worth keeping: a peer reports every address it
//! listens on, loopback and private ones included, and a dial to another home's
//! private address does not fail fast, it hangs until the connect timeout (the packets
//! leave for the internet and vanish). So a peer's loopback and private addresses are
//! kept only by those who reach it by such an address themselves (on the same host or
//! LAN); public ones (and names) by everyone.

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// How far an address reaches, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This host only.
    Loopback,
    /// A local network (RFC 1918, shared address space, link-local, unique local).
    Private,
    /// The internet, or a DNS name.
    Public,
}

/// The scope of an address (of its first part: for a relayed address, the relay's).
pub fn scope(addr: &Multiaddr) -> Scope {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_loopback() => Scope::Loopback,
        Some(Protocol::Ip4(ip)) => {
            let shared = ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
            if ip.is_private() || ip.is_link_local() || shared || ip.is_unspecified() {
                Scope::Private
            } else {
                Scope::Public
            }
        }
        Some(Protocol::Ip6(ip)) if ip.is_loopback() => Scope::Loopback,
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            let local = (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 || ip.is_unspecified();
            if local {
                Scope::Private
            } else {
                Scope::Public
            }
        }
        _ => Scope::Public,
    }
}

/// Whether a peer's `listen` address may be dialled by a node that reaches the peer at
/// `reached` (unknown: only public addresses are).
pub fn usable(listen: &Multiaddr, reached: Option<&Multiaddr>) -> bool {
    match scope(listen) {
        Scope::Public => true,
        narrow => reached.is_some_and(|r| scope(r) == narrow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn scopes_of_addresses() {
        assert_eq!(scope(&a("/ip4/127.0.0.1/tcp/1")), Scope::Loopback);
        assert_eq!(scope(&a("/ip4/10.1.0.2/tcp/1")), Scope::Private);
        assert_eq!(scope(&a("/ip4/192.168.1.2/udp/1/quic-v1")), Scope::Private);
        assert_eq!(scope(&a("/ip4/100.64.0.1/tcp/1")), Scope::Private);
        assert_eq!(scope(&a("/ip4/100.128.0.1/tcp/1")), Scope::Public);
        assert_eq!(scope(&a("/ip4/7.7.7.1/tcp/1/p2p-circuit")), Scope::Public);
        assert_eq!(scope(&a("/ip6/::1/tcp/1")), Scope::Loopback);
        assert_eq!(scope(&a("/ip6/fd00::1/tcp/1")), Scope::Private);
        assert_eq!(scope(&a("/ip6/fe80::1/tcp/1")), Scope::Private);
        assert_eq!(scope(&a("/ip6/2001:db8::1/tcp/1")), Scope::Public);
        assert_eq!(scope(&a("/dns4/example.org/tcp/1")), Scope::Public);
    }

    #[test]
    fn narrow_addresses_only_for_those_who_reach_the_peer_by_one() {
        let (lo, lan, public) = (a("/ip4/127.0.0.1/tcp/1"), a("/ip4/10.0.0.2/tcp/1"), a("/ip4/7.7.7.1/tcp/1"));
        assert!(usable(&public, None) && usable(&public, Some(&lo)));
        assert!(usable(&lo, Some(&a("/ip4/127.0.0.1/tcp/9"))) && !usable(&lo, Some(&public)) && !usable(&lo, None));
        assert!(usable(&lan, Some(&a("/ip4/10.0.0.3/tcp/9"))) && !usable(&lan, Some(&public)));
        assert!(!usable(&lan, Some(&lo)));
    }
}
