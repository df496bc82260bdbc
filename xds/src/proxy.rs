//! Who a connecting Envoy is, from its node id and metadata.

use std::fmt;

/// What kind of App Mesh resource a proxy stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// A sidecar of a virtual node.
    VirtualNode,
    /// A virtual gateway's Envoy.
    VirtualGateway,
}

/// The identity of a proxy: `mesh/<mesh>/virtualNode/<name>` or `mesh/<mesh>/virtualGateway/<name>`
/// (App Mesh's node id form), or the ARN form ending in either.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    /// The mesh.
    pub mesh: String,
    /// Virtual node or gateway.
    pub kind: ProxyKind,
    /// Its name.
    pub name: String,
}

/// Why a node id was refused. Holds the id escaped and cut for logs and answers
/// ([`shoal_model::logsafe`]): it comes from the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id \"{0}\" is not mesh/<mesh>/virtualNode/<name>, mesh/<mesh>/virtualGateway/<name> or an App Mesh ARN ending in either")]
pub struct BadNodeId(pub String);

/// Longest mesh or resource name App Mesh allows (the botocore model's `ResourceName`).
const MAX_NAME: usize = 255;

impl ProxyId {
    /// Parses `mesh/M/virtualNode/N`, `mesh/M/virtualGateway/N`, or
    /// `arn:aws:appmesh:<region>:<account>:mesh/M/virtualNode/N` (and the gateway form).
    pub fn parse(node_id: &str) -> Result<ProxyId, BadNodeId> {
        let bad = || BadNodeId(shoal_model::logsafe::log_safe(node_id));
        let path = if node_id.starts_with("arn:") {
            // arn:partition:appmesh:region:account:resource — the resource holds no ':'.
            let parts: Vec<&str> = node_id.splitn(6, ':').collect();
            if parts.len() != 6 || parts[2] != "appmesh" {
                return Err(bad());
            }
            parts[5]
        } else {
            node_id
        };
        let segs: Vec<&str> = path.split('/').collect();
        let [m, mesh, kind, name] = segs.as_slice() else {
            return Err(bad());
        };
        let kind = match *kind {
            "virtualNode" => ProxyKind::VirtualNode,
            "virtualGateway" => ProxyKind::VirtualGateway,
            _ => return Err(bad()),
        };
        let fits =
            |s: &str| !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control);
        if *m != "mesh" || !fits(mesh) || !fits(name) {
            return Err(bad());
        }
        Ok(ProxyId {
            mesh: mesh.to_string(),
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ProxyKind::VirtualNode => "virtualNode",
            ProxyKind::VirtualGateway => "virtualGateway",
        };
        write!(f, "mesh/{}/{kind}/{}", self.mesh, self.name)
    }
}

/// The gRPC metadata (HTTP/2 header) an Envoy's ADS stream carries its proxy token in.
pub const PROXY_TOKEN_HEADER: &str = "x-shoal-proxy-token";

/// The proxy token of `proxy` under the agent's `secret`: HMAC-SHA256 of its node id, hex. An
/// agent started with `--xds-auth` serves a proxy's configuration only to a stream that
/// carries its token, and only `shoal envoy bootstrap` run by someone who can read the
/// secret file (the agent's data dir, mode 0600) can make one: a local client naming another
/// proxy's node id gets nothing.
pub fn proxy_token(secret: &[u8], proxy: &ProxyId) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    hex::encode(ring::hmac::sign(&key, proxy.to_string().as_bytes()).as_ref())
}

/// Whether `token` is `proxy`'s under `secret` (compared in constant time).
pub fn proxy_token_valid(secret: &[u8], proxy: &ProxyId, token: &str) -> bool {
    let Ok(tag) = hex::decode(token) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, proxy.to_string().as_bytes(), &tag).is_ok()
}

/// Per-proxy settings from the Envoy's bootstrap `node.metadata` (what App Mesh's Envoy image
/// took from its environment). Defaults are App Mesh's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyOptions {
    /// Port of the ingress listener (metadata `shoal.ingress_port`; App Mesh: 15000).
    pub ingress_port: u16,
    /// Port of the egress listener (metadata `shoal.egress_port`; App Mesh: 15001).
    pub egress_port: u16,
    /// Address the local application listens on, for the ingress clusters (metadata
    /// `shoal.app_address`; default 127.0.0.1).
    pub app_address: String,
    /// Address Envoy's listeners bind (metadata `shoal.listen_address`; default 0.0.0.0).
    pub listen_address: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            ingress_port: 15000,
            egress_port: 15001,
            app_address: "127.0.0.1".into(),
            listen_address: "0.0.0.0".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_in_every_form() {
        let vn = ProxyId::parse("mesh/colorapp/virtualNode/red").unwrap();
        assert_eq!(vn.mesh, "colorapp");
        assert_eq!(vn.kind, ProxyKind::VirtualNode);
        assert_eq!(vn.name, "red");
        assert_eq!(vn.to_string(), "mesh/colorapp/virtualNode/red");
        let gw = ProxyId::parse(
            "arn:aws:appmesh:us-east-1:111122223333:mesh/colorapp/virtualGateway/gw",
        )
        .unwrap();
        assert_eq!(gw.kind, ProxyKind::VirtualGateway);
        assert_eq!(gw.name, "gw");
        for bad in [
            "",
            "mesh/colorapp/virtualNode",
            "mesh//virtualNode/x",
            "mesh/m/virtualRouter/x",
            "arn:aws:s3:::bucket",
            "mesh/m/virtualNode/x/y",
        ] {
            assert!(ProxyId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_node_ids_are_refused_and_reported_cut_and_escaped() {
        let long = format!("mesh/m/virtualNode/{}", "n".repeat(1 << 20));
        let e = ProxyId::parse(&long).unwrap_err();
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
        assert!(e.to_string().contains("(1048595 bytes)"), "{e}");
        let e = ProxyId::parse("mesh/m/virtualNode/a\n2026 INFO forged").unwrap_err();
        assert!(e.to_string().contains("a\\n2026 INFO forged"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(ProxyId::parse(&format!("mesh/m/virtualNode/{}", "n".repeat(255))).is_ok());
    }

    #[test]
    fn a_proxy_token_is_its_own_and_no_one_elses() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let red = ProxyId::parse("mesh/m/virtualNode/red").unwrap();
        let blue = ProxyId::parse("mesh/m/virtualNode/blue").unwrap();
        let t = proxy_token(secret, &red);
        assert_eq!(t.len(), 64);
        assert!(proxy_token_valid(secret, &red, &t));
        assert!(!proxy_token_valid(secret, &blue, &t));
        assert!(!proxy_token_valid(
            b"another secret, another agent..",
            &red,
            &t
        ));
        assert!(!proxy_token_valid(secret, &red, "not hex"));
        assert!(!proxy_token_valid(secret, &red, ""));
    }
}
