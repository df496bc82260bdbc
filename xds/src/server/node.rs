//! Who is connecting: the node id and the options in the node's bootstrap metadata.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use crate::proxy::{BadNodeId, ProxyId, ProxyOptions};

/// Why a connecting Envoy was refused before anything was sent to it. The message goes back to
/// Envoy as an `INVALID_ARGUMENT` status, which Envoy logs, so it says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    /// The first request of the stream carried no `node` (Envoy always sends it; a hand-made
    /// client may forget).
    #[error("the first discovery request of a stream must carry node.id (mesh/<mesh>/virtualNode/<name>)")]
    MissingNode,
    /// The node id is not one of the forms shoal knows.
    #[error(transparent)]
    BadId(#[from] BadNodeId),
    /// A `shoal.*` metadata value is not usable.
    #[error("node metadata {key}: {value:?} is not {expected}")]
    BadMetadata {
        /// The metadata key, e.g. `shoal.ingress_port`.
        key: &'static str,
        /// The value as received (rendered as text).
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
}

/// Parses the proxy identity and its options from the node of the first discovery request.
///
/// Options come from `node.metadata`, either as flat keys (`"shoal.ingress_port": 15000`) or as a
/// nested struct (`"shoal": {"ingress_port": 15000}`), because both are natural to write in an
/// Envoy bootstrap's YAML; ports may be numbers or strings (environment substitution in
/// bootstrap templates produces strings). Missing keys take App Mesh's defaults; a present but
/// unusable value is refused rather than silently replaced, so a typo in a bootstrap shows up in
/// Envoy's log instead of as a listener on an unexpected port.
pub fn parse_node(node: Option<&Node>) -> Result<(ProxyId, ProxyOptions), NodeError> {
    let node = node.ok_or(NodeError::MissingNode)?;
    if node.id.is_empty() {
        return Err(NodeError::MissingNode);
    }
    let id = ProxyId::parse(&node.id)?;
    let mut opts = ProxyOptions::default();
    if let Some(meta) = &node.metadata {
        if let Some(v) = lookup(meta, "ingress_port") {
            opts.ingress_port = port("shoal.ingress_port", v)?;
        }
        if let Some(v) = lookup(meta, "egress_port") {
            opts.egress_port = port("shoal.egress_port", v)?;
        }
        if let Some(v) = lookup(meta, "app_address") {
            opts.app_address = address("shoal.app_address", v)?;
        }
        if let Some(v) = lookup(meta, "listen_address") {
            opts.listen_address = address("shoal.listen_address", v)?;
        }
    }
    Ok((id, opts))
}

/// `shoal.<key>` as a flat key, else `shoal` → `<key>` as a nested struct.
fn lookup<'a>(meta: &'a Struct, key: &str) -> Option<&'a Value> {
    if let Some(v) = meta.fields.get(&format!("shoal.{key}")) {
        return Some(v);
    }
    match meta.fields.get("shoal").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s.fields.get(key),
        _ => None,
    }
}

fn render(v: &Value) -> String {
    match &v.kind {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NullValue(_)) | None => "null".into(),
        Some(Kind::StructValue(_)) => "{…}".into(),
        Some(Kind::ListValue(_)) => "[…]".into(),
    }
}

fn port(key: &'static str, v: &Value) -> Result<u16, NodeError> {
    let bad = || NodeError::BadMetadata {
        key,
        value: render(v),
        expected: "a port number from 1 to 65535",
    };
    let n = match &v.kind {
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && *n >= 1.0 && *n <= 65535.0 => *n as u16,
        Some(Kind::StringValue(s)) => s.trim().parse::<u16>().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    Ok(n)
}

fn address(key: &'static str, v: &Value) -> Result<String, NodeError> {
    match &v.kind {
        Some(Kind::StringValue(s)) if s.trim().parse::<IpAddr>().is_ok() => {
            Ok(s.trim().to_string())
        }
        _ => Err(NodeError::BadMetadata {
            key,
            value: render(v),
            expected: "an IPv4 or IPv6 address",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }
    fn n(v: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(v)),
        }
    }
    fn node(id: &str, fields: Vec<(&str, Value)>) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_flat_and_nested_metadata() {
        let (id, opts) = parse_node(Some(&node("mesh/m/virtualNode/a", vec![]))).unwrap();
        assert_eq!(id.to_string(), "mesh/m/virtualNode/a");
        assert_eq!(opts, ProxyOptions::default());

        let flat = node(
            "mesh/m/virtualNode/a",
            vec![
                ("shoal.ingress_port", n(8000.0)),
                ("shoal.egress_port", s("8001")),
                ("shoal.app_address", s("10.0.0.5")),
                ("shoal.listen_address", s("::")),
            ],
        );
        let (_, opts) = parse_node(Some(&flat)).unwrap();
        assert_eq!(
            opts,
            ProxyOptions {
                ingress_port: 8000,
                egress_port: 8001,
                app_address: "10.0.0.5".into(),
                listen_address: "::".into(),
            }
        );

        let nested = node(
            "mesh/m/virtualGateway/g",
            vec![(
                "shoal",
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("ingress_port".to_string(), s("9000"))].into(),
                    })),
                },
            )],
        );
        let (_, opts) = parse_node(Some(&nested)).unwrap();
        assert_eq!(opts.ingress_port, 9000);
        assert_eq!(opts.egress_port, 15001);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert_eq!(parse_node(None), Err(NodeError::MissingNode));
        assert_eq!(
            parse_node(Some(&node("", vec![]))),
            Err(NodeError::MissingNode)
        );
        let e = parse_node(Some(&node("sidecar~1.2.3.4", vec![]))).unwrap_err();
        assert!(e.to_string().contains("sidecar~1.2.3.4"), "{e}");
        for (k, v) in [
            ("shoal.ingress_port", n(0.0)),
            ("shoal.ingress_port", n(70000.0)),
            ("shoal.egress_port", n(1.5)),
            ("shoal.egress_port", s("http")),
            ("shoal.app_address", s("localhost")),
            ("shoal.listen_address", n(1.0)),
        ] {
            let e = parse_node(Some(&node("mesh/m/virtualNode/a", vec![(k, v)]))).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}
