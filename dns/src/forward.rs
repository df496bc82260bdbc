//! Forwarding a query for a name outside every zone to the configured recursors.
//!
//! The client's query is sent as it came (RD, CD, EDNS and its options kept) with a fresh random
//! id from a fresh socket (random source port), over UDP, then over TCP to the same recursor if
//! the UDP answer is truncated. A recursor that does not answer in its share of the time, or
//! fails, is skipped for the next. The caller relays what comes back.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout_at, Instant};

use crate::wire;

/// An unpredictable 16-bit id: SipHash with per-process random keys over a counter.
fn random_id() -> u16 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish() as u16
}

/// Asks `recursors` in turn within `total`; returns the first response (its id is the one sent
/// upstream, not the client's). A truncated UDP answer whose TCP retry failed is returned only
/// if no later recursor answers. `None`: nobody answered in time.
pub(crate) async fn forward(
    recursors: &[SocketAddr],
    total: Duration,
    query: &[u8],
    q_end: usize,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + total;
    let mut fallback = None;
    let mut sent = query.to_vec();
    for (i, &recursor) in recursors.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left = u32::try_from(recursors.len() - i).unwrap_or(u32::MAX);
        let until = now + (deadline - now) / left;
        sent[..2].copy_from_slice(&random_id().to_be_bytes());
        let resp = match timeout_at(until, ask_udp(recursor, &sent, q_end)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::debug!(%recursor, error = %e, "recursor failed over UDP");
                continue;
            }
            Err(_) => {
                tracing::debug!(%recursor, "recursor timed out over UDP");
                continue;
            }
        };
        if !wire::truncated(&resp) {
            return Some(resp);
        }
        match timeout_at(until, ask_tcp(recursor, &sent, q_end)).await {
            Ok(Ok(full)) => return Some(full),
            Ok(Err(e)) => tracing::debug!(%recursor, error = %e, "recursor failed over TCP"),
            Err(_) => tracing::debug!(%recursor, "recursor timed out over TCP"),
        }
        fallback.get_or_insert(resp);
    }
    fallback
}

/// Whether `resp` answers `sent`: same id, QR set, same opcode, and the same question (letter
/// case aside), or no question and an error rcode (some servers answer FORMERR that way).
fn answers(resp: &[u8], sent: &[u8], q_end: usize) -> bool {
    if resp.len() < 12 || resp[..2] != sent[..2] || resp[2] & 0x80 == 0 {
        return false;
    }
    if (resp[2] ^ sent[2]) & 0x78 != 0 {
        return false;
    }
    match wire::qdcount(resp) {
        1 => resp
            .get(12..q_end)
            .is_some_and(|q| q.eq_ignore_ascii_case(&sent[12..q_end])),
        0 => wire::rcode(resp) != 0,
        _ => false,
    }
}

fn unspecified(of: SocketAddr) -> SocketAddr {
    match of {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

async fn ask_udp(recursor: SocketAddr, sent: &[u8], q_end: usize) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(unspecified(recursor)).await?;
    sock.connect(recursor).await?;
    sock.send(sent).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        if answers(&buf[..n], sent, q_end) {
            buf.truncate(n);
            return Ok(buf);
        }
        // A stray or spoofed datagram: keep waiting for the real answer.
    }
}

async fn ask_tcp(recursor: SocketAddr, sent: &[u8], q_end: usize) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(recursor).await?;
    stream.set_nodelay(true)?;
    let len = u16::try_from(sent.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(sent.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(sent);
    stream.write_all(&framed).await?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await?;
        if answers(&buf, sent, q_end) {
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_vary() {
        let ids: std::collections::HashSet<u16> = (0..100).map(|_| random_id()).collect();
        assert!(ids.len() > 90);
    }

    #[test]
    fn matches_answers_only() {
        let sent = [
            0, 7, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ];
        let q_end = sent.len();
        let mut resp = sent.to_vec();
        resp[2] |= 0x80;
        assert!(answers(&resp, &sent, q_end));
        resp[13] = b'A';
        assert!(answers(&resp, &sent, q_end));
        resp[1] = 8;
        assert!(!answers(&resp, &sent, q_end));
        assert!(!answers(&sent, &sent, q_end)); // not a response
        let formerr = [0, 7, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(answers(&formerr, &sent, q_end));
    }
}
