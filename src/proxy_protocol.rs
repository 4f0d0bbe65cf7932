//! The real client address behind a load balancer: `trusted_proxies` (CIDRs), the PROXY
//! protocol (v1 text, v2 binary; parsed by the `ppp` crate) on listeners with
//! `proxy_protocol: true`, and `x-forwarded-for` from trusted peers.
//!
//! - PROXY protocol: the header is read before anything else (before TLS) within the header
//!   timeout. A peer outside `trusted_proxies`, a malformed or missing header: the connection is
//!   closed. The address it names is the client for `x-forwarded-for`, the per-IP connection
//!   cap and the access log. `LOCAL` (v2) and `UNKNOWN` (v1), the balancer's own health checks,
//!   keep the peer's address.
//! - `x-forwarded-for` without the PROXY protocol: only when the TCP peer is trusted, the client
//!   is the right-most entry that is not itself a trusted proxy (nginx's `real_ip_recursive
//!   on`); if every entry is trusted, the left-most. An entry that is not an IP address stops
//!   the walk and the peer stays the client. This happens per request, after the connection is
//!   accepted, so the per-IP connection cap still counts the peer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// An IP network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { net: addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `trusted_proxies`, compiled.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[Cidr]>);

impl TrustedProxies {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        Self(cidrs.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// Why a PROXY header was refused (the `connections_closed` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer is not in `trusted_proxies`.
    Untrusted,
    /// Not a PROXY header, or a broken one.
    Malformed,
    /// The header did not arrive within the header timeout (or the peer closed).
    Timeout,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "proxy_untrusted",
            Self::Malformed => "proxy_malformed",
            Self::Timeout => "proxy_timeout",
        }
    }
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// Reads the PROXY header a trusted `peer` sends first; consumes exactly its bytes. Returns the
/// client address it names (`None` for LOCAL / UNKNOWN: the peer speaks for itself).
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &TrustedProxies,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Refused> {
    if !trusted.contains(peer.ip()) {
        return Err(Refused::Untrusted);
    }
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(Ok(bytes)) => parse(&bytes),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Refused::Timeout),
    }
}

/// Reads one whole header, byte-exact: v2 by its length field, v1 up to its CRLF (read a byte
/// at a time, at most 107, so nothing after the header is taken from the stream).
async fn read_header(stream: &mut TcpStream) -> Result<Vec<u8>, Refused> {
    let io = |_| Refused::Malformed;
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf[..5]).await.map_err(io)?;
    if &buf[..5] == b"PROXY" {
        buf.truncate(5);
        loop {
            let b = stream.read_u8().await.map_err(io)?;
            buf.push(b);
            if buf.ends_with(b"\r\n") {
                return Ok(buf);
            }
            if buf.len() >= V1_MAX {
                return Err(Refused::Malformed);
            }
        }
    }
    stream.read_exact(&mut buf[5..12]).await.map_err(io)?;
    if buf[..12] != V2_SIGNATURE {
        return Err(Refused::Malformed);
    }
    let mut rest = [0u8; 4];
    stream.read_exact(&mut rest).await.map_err(io)?;
    buf.extend_from_slice(&rest);
    let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
    let start = buf.len();
    buf.resize(start + len, 0);
    stream.read_exact(&mut buf[start..]).await.map_err(io)?;
    Ok(buf)
}

/// Parses a complete header with `ppp`.
pub fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, Refused> {
    use ppp::{HeaderResult, v1, v2};
    match HeaderResult::parse(bytes) {
        HeaderResult::V1(Ok(h)) if h.header.len() == bytes.len() => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) if h.len() == bytes.len() => match h.command {
            v2::Command::Local => Ok(None),
            v2::Command::Proxy => match h.addresses {
                v2::Addresses::IPv4(a) => Ok(Some(SocketAddr::new(
                    a.source_address.into(),
                    a.source_port,
                ))),
                v2::Addresses::IPv6(a) => Ok(Some(SocketAddr::new(
                    a.source_address.into(),
                    a.source_port,
                ))),
                // UNSPEC / AF_UNIX: no IP client to speak of.
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Ok(None),
            },
        },
        _ => Err(Refused::Malformed),
    }
}

/// The client address of a request from `peer` by its `x-forwarded-for` (see the module doc);
/// `None` when the peer is not trusted or the header names no usable client.
pub fn client_from_xff(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    if trusted.is_empty() || !trusted.contains(peer) {
        return None;
    }
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all(&crate::headers::forwarding::X_FORWARDED_FOR) {
        entries.extend(v.to_str().ok()?.split(','));
    }
    let mut leftmost = None;
    for e in entries.iter().rev() {
        let ip = parse_xff_entry(e.trim())?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// The client address for `x-forwarded-for` and the access log: the connection's (the PROXY
/// header's, when there was one), or the one a trusted peer's `x-forwarded-for` names.
pub fn client_ip(
    trusted: &TrustedProxies,
    conn: &crate::conn::ConnInfo,
    headers: &HeaderMap,
) -> HeaderValue {
    if conn.proxy_peer().is_none()
        && let Some(ip) = client_from_xff(headers, conn.remote.ip(), trusted)
        && let Ok(v) = HeaderValue::try_from(ip.to_string())
    {
        return v;
    }
    conn.client_ip.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| Cidr::parse(c).expect("cidr")).collect())
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(t.contains("10.200.3.4".parse().expect("ip")));
        assert!(t.contains("::ffff:10.1.1.1".parse().expect("ip")));
        assert!(!t.contains("11.0.0.1".parse().expect("ip")));
        assert!(t.contains("192.168.1.7".parse().expect("ip")));
        assert!(!t.contains("192.168.1.8".parse().expect("ip")));
        assert!(t.contains("fd12::1".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("any")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn xff_takes_the_rightmost_untrusted_hop_from_a_trusted_peer_only() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        let lb: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(
            client_from_xff(&h, lb, &t),
            Some("1.2.3.4".parse().expect("ip"))
        );
        // An untrusted peer's header is not evidence of anything.
        assert_eq!(
            client_from_xff(&h, "8.8.8.8".parse().expect("ip"), &t),
            None
        );
        // Garbage stops the walk.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, bogus"),
        );
        assert_eq!(client_from_xff(&h, lb, &t), None);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.1.1.1, [2001:db8::1]:443"),
        );
        assert_eq!(
            client_from_xff(&h, lb, &t),
            Some("2001:db8::1".parse().expect("ip"))
        );
    }

    #[test]
    fn proxy_headers_parse_or_are_refused() {
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n"),
            Ok(Some("203.0.113.7:51000".parse().expect("addr")))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n"),
            Err(Refused::Malformed)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Refused::Malformed));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0xc3, 0x50, 1, 187,
        ]);
        assert_eq!(
            parse(&v2),
            Ok(Some("198.51.100.9:50000".parse().expect("addr")))
        );
        v2[13] = 0x99; // an unknown family
        assert_eq!(parse(&v2), Err(Refused::Malformed));
    }
}
