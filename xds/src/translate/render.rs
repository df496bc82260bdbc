//! A deterministic, readable text form of a snapshot, for golden tests and for people.

use std::fmt::Debug;
use std::sync::OnceLock;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::{Message, Name};
use regex::{Captures, Regex};

use super::util::SortedFileAccessLog;
use crate::snapshot::{ResourceType, Snapshot};

fn pretty<T: Message + Default + Debug>(bytes: &[u8]) -> Option<String> {
    T::decode(bytes).ok().map(|m| format!("{m:#?}"))
}

/// A secret with its private key replaced: the rendered form is for people and the agent's
/// API, and a workload's key goes to its proxy only.
fn redacted_secret(bytes: &[u8]) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;
    let mut s = Secret::decode(bytes).ok()?;
    if let Some(secret::Type::TlsCertificate(c)) = &mut s.r#type {
        if c.private_key.is_some() {
            c.private_key = Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString("[redacted]".into())),
                ..Default::default()
            });
        }
    }
    Some(format!("{s:#?}"))
}

/// The pretty `Debug` form of a packed message of a type shoal generates.
fn decoded(type_url: &str, bytes: &[u8]) -> Option<String> {
    if type_url == Secret::type_url() {
        return redacted_secret(bytes);
    }
    macro_rules! by_url {
        ($($t:ty),*) => {
            $(if type_url == <$t>::type_url() { return pretty::<$t>(bytes); })*
        };
    }
    by_url!(
        Listener,
        Cluster,
        ClusterLoadAssignment,
        RouteConfiguration,
        HttpConnectionManager,
        Router,
        TcpProxy,
        RbacFilter,
        OriginalDst,
        TlsInspector,
        UpstreamTlsContext,
        DownstreamTlsContext,
        HttpProtocolOptions
    );
    if type_url == FileAccessLog::type_url() {
        // Decoded through the mirror that keeps JSON keys in order (the generated type's
        // map would print them in a random order).
        return pretty::<SortedFileAccessLog>(bytes);
    }
    None
}

fn any_block() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r#"Any \{\n(?P<ind> *)type_url: "(?P<url>[^"]*)",\n *value: \[(?P<bytes>[0-9,\s]*)\],\n *\}"#,
        )
        .expect("valid regex")
    })
}

fn default_line() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"^ *[a-z_0-9#]+: (None|\[\]|0|false|""|\{\}),$"#).expect("valid regex")
    })
}

fn collapse_paren() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?P<id>[A-Za-z_][A-Za-z0-9_]*)\(\n *(?P<inner>[^\n]*),\n *\)")
            .expect("valid regex")
    })
}

fn collapse_brace() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?P<id>[A-Za-z_][A-Za-z0-9_]*) \{\n *(?P<inner>[^\n]*),\n *\}")
            .expect("valid regex")
    })
}

/// Puts a wrapper or a struct with one member on one line: `Some(UInt32Value { value: 2 })`.
fn collapse(text: String) -> String {
    let mut text = text;
    loop {
        let next = collapse_paren()
            .replace_all(&text, "$id($inner)")
            .into_owned();
        let next = collapse_brace()
            .replace_all(&next, "$id { $inner }")
            .into_owned();
        if next == text {
            return text;
        }
        text = next;
    }
}

/// Replaces every packed `Any` in a pretty `Debug` text by the message it holds, recursively.
fn expand(text: &str) -> String {
    any_block()
        .replace_all(text, |c: &Captures<'_>| {
            let url = &c["url"];
            let bytes: Vec<u8> = c["bytes"]
                .split(|ch: char| ch == ',' || ch.is_whitespace())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect();
            match decoded(url, &bytes) {
                Some(inner) => {
                    let indent = " ".repeat(c["ind"].len().saturating_sub(4));
                    let inner = expand(&inner).replace('\n', &format!("\n{indent}"));
                    format!(
                        "Any({}) {inner}",
                        url.trim_start_matches("type.googleapis.com/")
                    )
                }
                None => c[0].to_string(),
            }
        })
        .into_owned()
}

/// Every resource of `s`, by type (in push order) and name, as the pretty `Debug` form of the
/// decoded message with packed messages expanded in place and members at their default value
/// left out. The same snapshot always renders the same text.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    for ty in ResourceType::ALL {
        for (name, r) in s.resources(ty) {
            out.push_str(&format!("=== {ty:?} {name}\n"));
            let text = decoded(&r.any.type_url, &r.any.value)
                .map(|t| expand(&t))
                .unwrap_or_else(|| format!("{} ({} bytes)", r.any.type_url, r.any.value.len()));
            let mut kept = String::new();
            for line in text.lines() {
                if !default_line().is_match(line) {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            out.push_str(&collapse(kept));
        }
    }
    out
}
