//! etcd through its v3 JSON gateway (plain HTTP and JSON, so the benchmarks need no gRPC
//! client of etcd's): the API prefix of the member's version, member status, the leader.

use serde_json::{json, Value};

use crate::system::{base_url, get_json, post_json, View};

/// Standard base64 with padding (etcd's JSON gateway carries keys and values so).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The v3 API prefix of an etcd member: `/v3` from 3.4 on, `/v3beta` on 3.3, `/v3alpha` before.
pub(crate) async fn etcd_prefix(http: &reqwest::Client, addr: &str) -> anyhow::Result<String> {
    let v = get_json(http, &format!("{}/version", base_url(addr))).await?;
    let version = v["etcdserver"].as_str().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok(match (major, minor) {
        (3, 0..=2) => "/v3alpha",
        (3, 3) => "/v3beta",
        _ => "/v3",
    }
    .to_string())
}

/// `maintenance/status` of one etcd member.
pub(crate) async fn etcd_status(
    http: &reqwest::Client,
    addr: &str,
    prefix: &str,
) -> anyhow::Result<Value> {
    post_json(
        http,
        &format!("{}{prefix}/maintenance/status", base_url(addr)),
        &json!({}),
    )
    .await
}

/// etcd's view: every given endpoint, and the one whose member id is the leader's.
pub(crate) async fn etcd_view(http: &reqwest::Client, addrs: &[String], prefix: &str) -> View {
    let mut leader = None;
    for a in addrs {
        if let Ok(st) = etcd_status(http, a, prefix).await {
            let me = &st["header"]["member_id"];
            if !me.is_null() && *me == st["leader"] {
                leader = Some(base_url(a));
            }
        }
    }
    View {
        leader,
        all: addrs.iter().map(|a| base_url(a)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
