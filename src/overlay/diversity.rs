//! Routing-table diversity (issue #18 item 4): peer ids cost nothing, addresses cost more. A
//! Kademlia bucket keeps at most [`MAX_PER_PREFIX`] peers whose public addresses share an
//! IPv4 /24 or an IPv6 /48, so one machine or one subnet cannot fill a bucket with made-up
//! ids (Sybil) and surround a key (eclipse). Loopback, private, link-local and
//! unique-local addresses, and the memory transport, are exempt: LANs, tests and a ring on one
//! host work as before. Pure functions; the event loop evicts a newcomer that breaks the rule.

use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Peers of one bucket that may share a public address prefix.
pub const MAX_PER_PREFIX: usize = 2;

/// The prefix an address counts under, or `None` when it is exempt (not public IP).
pub fn prefix(addr: &Multiaddr) -> Option<[u8; 7]> {
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })?;
    match ip {
        IpAddr::V4(a) => {
            if a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64
            // CGNAT 100.64/10
            {
                return None;
            }
            let o = a.octets();
            Some([4, o[0], o[1], o[2], 0, 0, 0])
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return prefix(&Multiaddr::empty().with(Protocol::Ip4(v4)));
            }
            let s = a.segments();
            if a.is_loopback()
                || a.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80
            // link local
            {
                return None;
            }
            let o = a.octets();
            Some([6, o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    }
}

/// Whether a newcomer with addresses `new` may stay in a bucket whose other peers have the
/// address lists `others`: none of its public prefixes may already be held by
/// [`MAX_PER_PREFIX`] of them.
pub fn may_join<'a>(
    new: impl IntoIterator<Item = &'a Multiaddr>,
    others: &[Vec<Multiaddr>],
) -> bool {
    let mine: Vec<[u8; 7]> = new.into_iter().filter_map(prefix).collect();
    mine.iter().all(|p| {
        let sharing = others
            .iter()
            .filter(|addrs| addrs.iter().any(|a| prefix(a).as_ref() == Some(p)))
            .count();
        sharing < MAX_PER_PREFIX
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_takes_two_peers_per_public_prefix_and_any_number_from_loopback() {
        let two = vec![
            vec![a("/ip4/203.0.113.5/tcp/1")],
            vec![a("/ip4/203.0.113.9/udp/2/quic-v1")],
        ];
        assert!(
            !may_join(&[a("/ip4/203.0.113.77/tcp/3")], &two),
            "a third of one /24"
        );
        assert!(
            may_join(&[a("/ip4/203.0.114.77/tcp/3")], &two),
            "another /24"
        );
        assert!(may_join(&[a("/ip4/203.0.113.77/tcp/3")], &two[..1]));
        let local: Vec<Vec<Multiaddr>> = (0..20)
            .map(|i| vec![a(&format!("/ip4/127.0.0.1/tcp/{i}"))])
            .collect();
        assert!(may_join(&[a("/ip4/127.0.0.1/tcp/99")], &local));
        for exempt in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.2/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/memory/5",
            "/ip4/100.64.0.1/tcp/1",
        ] {
            assert_eq!(prefix(&a(exempt)), None, "{exempt}");
        }
        let v6 = vec![
            vec![a("/ip6/2001:db8:1::1/tcp/1")],
            vec![a("/ip6/2001:db8:1:ffff::2/tcp/1")],
        ];
        assert!(
            !may_join(&[a("/ip6/2001:db8:1:7::3/tcp/1")], &v6),
            "one /48"
        );
        assert!(may_join(&[a("/ip6/2001:db8:2::3/tcp/1")], &v6));
        assert_eq!(
            prefix(&a("/ip6/::ffff:203.0.113.5/tcp/1")),
            prefix(&a("/ip4/203.0.113.200/tcp/1"))
        );
    }
}
