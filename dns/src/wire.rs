//! Byte-level helpers for the hot path and for relaying: a strict parser of plain queries (the
//! cache key), patching a cached response for a new query, and the few small responses built
//! without hickory (SERVFAIL and truncated relays).
//!
//! Why by hand: decoding every query into hickory's `Message` and encoding every answer costs
//! several allocations per query; the cache needs only the question, a few header bits and
//! whether EDNS is present.

/// Longest cache key: a name of at most 254 wire bytes, type, class and one flags byte.
pub(crate) const KEY_MAX: usize = 254 + 4 + 1;

/// The UDP payload size this server advertises in the OPT record of its responses (how much
/// it can receive); the same for every response so that cached answers fit every client.
pub(crate) const ADVERTISED_PAYLOAD: u16 = 4096;

/// Largest UDP response sent, whatever the client advertises: larger ones are truncated and the
/// client retries over TCP (avoids IP fragmentation of huge datagrams).
pub(crate) const MAX_UDP_RESPONSE: u16 = 4096;

/// RFC 1035 UDP limit, used without EDNS and as the floor of advertised sizes.
pub(crate) const MIN_UDP_RESPONSE: u16 = 512;

const TYPE_OPT: u16 = 41;
const EDNS_NSID: u16 = 3;
const EDNS_DAU: u16 = 5;
const EDNS_SUBNET: u16 = 8;

/// What the fast path needs from a query that [`parse_query`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Question {
    /// End of the question section: the response's bytes `12..q_end` are the client's question.
    pub q_end: usize,
    /// Length of the key written into the caller's buffer.
    pub key_len: usize,
    /// The client's EDNS UDP payload size, if it sent an OPT record.
    pub edns_payload: Option<u16>,
}

/// The largest UDP response for a client: 512 without EDNS, else its payload size within
/// 512..=4096.
pub(crate) fn udp_limit(edns_payload: Option<u16>) -> usize {
    usize::from(edns_payload.map_or(MIN_UDP_RESPONSE, |p| {
        p.clamp(MIN_UDP_RESPONSE, MAX_UDP_RESPONSE)
    }))
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Parses a plain query, the only kind the cache serves: QR=0, opcode QUERY, one question with
/// an uncompressed name, no answer or authority records, at most an OPT record (version 0, no
/// extended rcode, options hickory stores as opaque bytes) and nothing after it. Writes the
/// cache key into `key`: the lowercased name, type, class, and the request bits that shape the
/// response (RD, CD, EDNS present). Anything else gives `None` and takes the slow path, which
/// is the authority on what is valid: the fast path only ever serves a response that the slow
/// path produced for a query with the same key.
pub(crate) fn parse_query(msg: &[u8], key: &mut [u8; KEY_MAX]) -> Option<Question> {
    if msg.len() < 12 + 5 {
        return None;
    }
    let (b2, b3) = (msg[2], msg[3]);
    if b2 & 0x80 != 0 || (b2 >> 3) & 0x0f != 0 {
        return None;
    }
    if u16_at(msg, 4)? != 1 || u16_at(msg, 6)? != 0 || u16_at(msg, 8)? != 0 {
        return None;
    }
    let arcount = u16_at(msg, 10)?;
    if arcount > 1 {
        return None;
    }
    let mut i = 12;
    let mut k = 0;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len & 0xc0 != 0 {
            return None;
        }
        if k + len + 1 > 254 {
            return None;
        }
        let label = msg.get(i..i + 1 + len)?;
        for (dst, src) in key[k..k + 1 + len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        k += 1 + len;
        i += 1 + len;
        if len == 0 {
            break;
        }
    }
    key[k..k + 4].copy_from_slice(msg.get(i..i + 4)?);
    k += 4;
    i += 4;
    let q_end = i;
    let mut edns_payload = None;
    if arcount == 1 {
        // OPT: root name, type 41, class = payload, ttl = ext rcode | version | flags, rdata.
        if *msg.get(i)? != 0 || u16_at(msg, i + 1)? != TYPE_OPT {
            return None;
        }
        let payload = u16_at(msg, i + 3)?;
        if *msg.get(i + 5)? != 0 || *msg.get(i + 6)? != 0 {
            return None;
        }
        let rdlen = usize::from(u16_at(msg, i + 9)?);
        i += 11;
        let end = i + rdlen;
        if end != msg.len() {
            return None;
        }
        while i < end {
            let code = u16_at(msg, i)?;
            let len = usize::from(u16_at(msg, i + 2)?);
            // hickory decodes these (and may reject them); the slow path decides.
            if matches!(code, EDNS_NSID | EDNS_DAU | EDNS_SUBNET) {
                return None;
            }
            i += 4 + len;
        }
        if i != end {
            return None;
        }
        edns_payload = Some(payload);
    } else if i != msg.len() {
        return None;
    }
    let rd = b2 & 0x01;
    let cd = (b3 >> 4) & 0x01;
    key[k] = rd | (cd << 1) | (u8::from(edns_payload.is_some()) << 2);
    k += 1;
    Some(Question {
        q_end,
        key_len: k,
        edns_payload,
    })
}

/// Turns `out`, a cached response to a query with the same key, into the response to `query`:
/// the client's id and its question bytes (same length, possibly other letter case: DNS 0x20).
pub(crate) fn patch(out: &mut [u8], query: &[u8], q_end: usize) {
    out[..2].copy_from_slice(&query[..2]);
    out[12..q_end].copy_from_slice(&query[12..q_end]);
}

/// Number of records in the question section of `msg`.
pub(crate) fn qdcount(msg: &[u8]) -> u16 {
    u16_at(msg, 4).unwrap_or(0)
}

/// Whether `msg` has the TC bit.
pub(crate) fn truncated(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & 0x02 != 0)
}

/// The response code in the header (low 4 bits).
pub(crate) fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0, |b| b & 0x0f)
}

fn push_opt(out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&ADVERTISED_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// A response with only the header (`flags`: bytes 2 and 3), the client's question and, if the
/// client sent EDNS, an empty OPT record.
fn header_only(query: &[u8], q_end: usize, flags: [u8; 2], edns: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(q_end + 11);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&flags);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    out.extend_from_slice(&query[12..q_end]);
    if edns {
        push_opt(&mut out);
    }
    out
}

/// SERVFAIL for a forwarded `query` (which decoded and has one question ending at `q_end`):
/// RD and CD copied, RA set (this server does offer recursion).
pub(crate) fn servfail(query: &[u8], q_end: usize, edns: bool) -> Vec<u8> {
    let b2 = 0x80 | (query[2] & 0x79); // QR, opcode and RD as asked
    let b3 = 0x80 | (query[3] & 0x10) | 0x02; // RA, CD as asked, SERVFAIL
    header_only(query, q_end, [b2, b3], edns)
}

/// A recursor's `response` that is too large for the client's UDP limit, cut down to its header
/// (rcode kept, TC set) and the client's question, so that the client retries over TCP.
pub(crate) fn truncate_relay(response: &[u8], query: &[u8], q_end: usize, edns: bool) -> Vec<u8> {
    let flags = [response[2] | 0x02, response[3]];
    header_only(query, q_end, flags, edns)
}

/// FORMERR with only a header, for a TCP message whose header decodes but whose body does not.
pub(crate) fn formerr_header(query: &[u8]) -> Vec<u8> {
    let b2 = 0x80 | (query[2] & 0x79);
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[b2, 0x01]);
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::op::{Edns, Message, Query};
    use hickory_server::proto::rr::{Name, RecordType};

    fn query(name: &str, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn keys_ignore_case_and_id_but_not_shape() {
        let mut k1 = [0u8; KEY_MAX];
        let mut k2 = [0u8; KEY_MAX];
        let a = parse_query(&query("Web.NS.local.", None), &mut k1).unwrap();
        let mut other = query("web.ns.local.", None);
        other[0] = 9;
        let b = parse_query(&other, &mut k2).unwrap();
        assert_eq!(k1[..a.key_len], k2[..b.key_len]);
        assert_eq!(a.q_end, 12 + 14 + 4);
        assert_eq!(a.edns_payload, None);

        let c = parse_query(&query("web.ns.local.", Some(1232)), &mut k2).unwrap();
        assert_eq!(c.edns_payload, Some(1232));
        assert_ne!(k1[..a.key_len], k2[..c.key_len]);
        assert_eq!(udp_limit(None), 512);
        assert_eq!(udp_limit(Some(100)), 512);
        assert_eq!(udp_limit(Some(65000)), 4096);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let mut k = [0u8; KEY_MAX];
        let q = query("web.ns.local.", None);
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(parse_query(&response, &mut k).is_none());
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(parse_query(&trailing, &mut k).is_none());
        let mut pointer = q.clone();
        pointer[12] = 0xc0;
        assert!(parse_query(&pointer, &mut k).is_none());
        assert!(parse_query(&q[..q.len() - 1], &mut k).is_none());
        assert!(parse_query(&[], &mut k).is_none());
    }

    #[test]
    fn small_responses_decode() {
        let q = query("x.example.org.", Some(1232));
        let mut k = [0u8; KEY_MAX];
        let p = parse_query(&q, &mut k).unwrap();
        let m = Message::from_vec(&servfail(&q, p.q_end, true)).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(u16::from(m.metadata.response_code), 2);
        assert_eq!(m.queries.len(), 1);
        assert!(m.edns.is_some());
        let t = Message::from_vec(&truncate_relay(
            &servfail(&q, p.q_end, false),
            &q,
            p.q_end,
            false,
        ))
        .unwrap();
        assert!(t.metadata.truncation);
        assert!(t.edns.is_none());
    }
}
