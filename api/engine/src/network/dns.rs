//! berth's DNS server: one per network, on the network's gateway address (port 53, UDP)
//! inside berth's namespace. Containers on a user-defined network find each other by name,
//! `--network-alias` and short id; every other name is forwarded to the container's
//! `--dns` servers, or the host's resolvers, and the answer relayed back.
//!
//! Docker's containers see `nameserver 127.0.0.11` (an address inside their own network
//! namespace, rewritten by iptables). A berth container's VM has its own kernel and no such
//! rules, so its `/etc/resolv.conf` names its network's gateway, where this server listens.
//!
//! Queries are untrusted input from guests: [`parse_query`] reads at most one question,
//! with bounded labels and no compression pointers, iteratively; anything else gets
//! FORMERR or NOTIMP, or is dropped when not even a header is there.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A DNS type A record.
pub const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;
/// The longest name (RFC 1035).
const MAX_NAME_LEN: usize = 255;
/// Seconds a container's address is cached (Docker's embedded DNS answers with 600).
const TTL: u32 = 600;
/// How long a forwarded query may wait for the upstream's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded queries in flight per network at most: a container flooding its DNS server
/// gets SERVFAIL, not a share of every other container's.
pub const MAX_IN_FLIGHT: usize = 64;

pub const RCODE_OK: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// One question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The header's flags as sent (the opcode and RD are echoed).
    pub flags: u16,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message.
    pub question_end: usize,
}

/// Why a message is not a query this server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("shorter than a DNS header")]
    Short,
    #[error("malformed question")]
    Malformed { id: u16, flags: u16 },
    #[error("not a standard query with one question")]
    UnsupportedQuery { id: u16, flags: u16 },
}

/// Reads a query's header and only question.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Short);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if is_response {
        return Err(DnsError::Malformed { id, flags });
    }
    if opcode != 0 || qdcount != 1 {
        return Err(DnsError::UnsupportedQuery { id, flags });
    }
    let malformed = DnsError::Malformed { id, flags };
    let mut pos = HEADER_LEN;
    let mut name = String::new();
    loop {
        let len = *msg.get(pos).ok_or_else(|| malformed.clone())? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        // 0xc0: a compression pointer, which a question has no reason to use; 0x40 and 0x80
        // are reserved label types.
        if len > 63 {
            return Err(malformed);
        }
        let label = msg.get(pos..pos + len).ok_or_else(|| malformed.clone())?;
        pos += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(malformed);
            }
            name.push(b.to_ascii_lowercase() as char);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(malformed);
        }
    }
    let tail = msg.get(pos..pos + 4).ok_or_else(|| malformed.clone())?;
    Ok(Query {
        id,
        flags,
        name,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        question_end: pos + 4,
    })
}

/// The answer to `query` (whose bytes are `msg`): `rcode`, and an A record for each of
/// `addresses`.
pub fn answer(msg: &[u8], query: &Query, rcode: u8, addresses: &[Ipv4Addr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end + 16 * addresses.len());
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR, the query's opcode and RD, AA (berth is the authority for its containers' names)
    // and RA.
    let flags = 0x8000 | (query.flags & 0x7900) | 0x0400 | 0x0080 | u16::from(rcode & 0xf);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&msg[HEADER_LEN..query.question_end]);
    for a in addresses {
        // The name: a pointer to the question's.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// An error answer to a message that is not a query this server takes, or nothing for one
/// too short to answer.
pub fn error_answer(msg: &[u8], e: &DnsError) -> Option<Vec<u8>> {
    let (id, flags, rcode) = match e {
        DnsError::Short => return None,
        DnsError::Malformed { id, flags } => (*id, *flags, RCODE_FORMERR),
        DnsError::UnsupportedQuery { id, flags } => (*id, *flags, RCODE_NOTIMP),
    };
    if flags & 0x8000 != 0 {
        // Never answer an answer: two servers must not echo each other forever.
        return None;
    }
    let _ = msg;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&id.to_be_bytes());
    let flags = 0x8000 | (flags & 0x7900) | 0x0080 | u16::from(rcode);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// What the server needs to know about the network it serves.
pub trait Resolver: Send + Sync + 'static {
    /// Whether `source` may ask (an address of this network's containers), and if so the
    /// upstream servers for names that are not containers' (the asking container's `--dns`
    /// servers, or the host's resolvers).
    fn client(&self, source: Ipv4Addr) -> Option<Vec<SocketAddr>>;
    /// The addresses of the container(s) named `name` on this network (by name, alias or
    /// short id), if it is one of theirs.
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>>;
}

/// Serves queries arriving on `socket` until the task is aborted.
pub async fn serve(socket: tokio::net::UdpSocket, resolver: Arc<dyn Resolver>) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("dns: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer4) = peer else {
            continue;
        };
        let msg = &buf[..n];
        let Some(upstreams) = resolver.client(*peer4.ip()) else {
            // Not one of this network's containers (another network's, reaching this
            // gateway address through the namespace): names do not cross networks.
            if let Ok(q) = parse_query(msg) {
                let _ = socket
                    .send_to(&answer(msg, &q, RCODE_REFUSED, &[]), peer)
                    .await;
            }
            continue;
        };
        let query = match parse_query(msg) {
            Ok(q) => q,
            Err(e) => {
                if let Some(reply) = error_answer(msg, &e) {
                    let _ = socket.send_to(&reply, peer).await;
                }
                continue;
            }
        };
        if let Some(addresses) = resolver.lookup(&query.name) {
            let addresses = if query.qtype == TYPE_A && query.qclass == CLASS_IN {
                addresses
            } else {
                // The name exists, with no record of that type (AAAA: berth networks are
                // IPv4).
                vec![]
            };
            let _ = socket
                .send_to(&answer(msg, &query, RCODE_OK, &addresses), peer)
                .await;
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let _ = socket
                .send_to(&answer(msg, &query, RCODE_SERVFAIL, &[]), peer)
                .await;
            continue;
        };
        let socket = socket.clone();
        let msg = msg.to_vec();
        tokio::spawn(async move {
            let reply = match forward(&msg, &upstreams).await {
                Some(reply) => reply,
                None => answer(&msg, &query, RCODE_SERVFAIL, &[]),
            };
            let _ = socket.send_to(&reply, peer).await;
            drop(permit);
        });
    }
}

/// Asks each upstream in turn; the first answer with the query's id wins.
async fn forward(msg: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = msg.get(..2)?;
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(upstream).await.is_err() || sock.send(msg).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if n >= HEADER_LEN && &buf[..2] == id {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

/// The host's resolvers, from its `/etc/resolv.conf` (berthd forwards from the host's own
/// namespace, so loopback resolvers such as systemd-resolved's work too).
pub fn host_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn a_query_is_read_and_answered() {
        let m = query("Web.Alias", TYPE_A);
        let q = parse_query(&m).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x1234, "web.alias", TYPE_A)
        );
        let a = answer(&m, &q, RCODE_OK, &[Ipv4Addr::new(172, 18, 0, 2)]);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        // QR, RD echoed, AA, RA; one question, one answer.
        assert_eq!(u16::from_be_bytes([a[2], a[3]]), 0x8580);
        assert_eq!(&a[4..8], &[0, 1, 0, 1]);
        assert_eq!(&a[a.len() - 4..], &[172, 18, 0, 2]);
        let nx = answer(&m, &q, RCODE_NXDOMAIN, &[]);
        assert_eq!(nx[3] & 0xf, RCODE_NXDOMAIN);
        assert_eq!(nx.len(), m.len());
    }

    #[test]
    fn malformed_queries_are_refused_without_reading_past_the_message() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Short));
        let m = query("web", TYPE_A);
        for cut in HEADER_LEN..m.len() {
            assert!(
                matches!(parse_query(&m[..cut]), Err(DnsError::Malformed { .. })),
                "{cut}"
            );
        }
        // A compression pointer in the question.
        let mut p = m[..HEADER_LEN].to_vec();
        p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&p), Err(DnsError::Malformed { .. })));
        // Two questions, an inverse query, and an answer (never answered back).
        let mut two = m.clone();
        two[5] = 2;
        let e = parse_query(&two).unwrap_err();
        assert!(matches!(e, DnsError::UnsupportedQuery { .. }));
        assert_eq!(error_answer(&two, &e).unwrap()[3] & 0xf, RCODE_NOTIMP);
        let mut resp = m.clone();
        resp[2] |= 0x80;
        let e = parse_query(&resp).unwrap_err();
        assert_eq!(error_answer(&resp, &e), None);
        // A name longer than DNS allows.
        let long = vec!["a".repeat(63); 5].join(".");
        assert!(matches!(
            parse_query(&query(&long, TYPE_A)),
            Err(DnsError::Malformed { .. })
        ));
    }
}
