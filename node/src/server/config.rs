//! A server's configuration: flags or a TOML file (`shoal server --config FILE`), checked before
//! any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// A server's configuration. One definition per key: each field is a flag of `shoal server`
/// (`--node-id`, kebab-case) and a key of its TOML file (`node_id`), with one default for both;
/// flags override the file (see `crate::config::layered`).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Raft id of this server: unique in the cluster, never reused (required).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    #[serde(default)]
    pub node_id: u64,
    /// Where the Raft log, vote and snapshots live (required).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = crate::config::path_or_empty)]
    #[serde(default)]
    pub data_dir: PathBuf,
    /// HTTP API address.
    #[arg(long, default_value_t = default_api())]
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// Raft (and watch) gRPC address.
    #[arg(long, default_value_t = default_raft())]
    #[serde(default = "default_raft")]
    pub raft: SocketAddr,
    /// Gossip address; none: a lone server that bootstraps by itself.
    #[arg(long)]
    #[serde(default)]
    pub gossip: Option<SocketAddr>,
    /// Gossip address of an existing member (repeatable).
    #[arg(long)]
    #[serde(default)]
    pub join: Vec<String>,
    /// Servers to wait for before forming a new cluster. Not given: 1 without `--join` (a
    /// cluster of one), and never with `--join` (the server joins the cluster it finds and
    /// never bootstraps a second one beside it).
    #[arg(long)]
    #[serde(default)]
    pub bootstrap_expect: Option<u32>,
    /// The SPIFFE trust domain of the mesh CA's workload identities
    /// (`spiffe://<trust-domain>/mesh/<mesh>/virtualNode/<name>`). Used when the first leader
    /// makes the mesh CA; fixed from then on.
    #[arg(long, default_value_t = default_trust_domain())]
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Account id written into ARNs (12 digits).
    #[arg(long, default_value_t = default_account())]
    #[serde(default = "default_account")]
    pub account: String,
    /// Region written into ARNs.
    #[arg(long, default_value_t = default_region())]
    #[serde(default = "default_region")]
    pub region: String,
    /// Raft heartbeat interval, ms (every AppendEntries must answer within it).
    #[arg(long, default_value_t = default_heartbeat())]
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Raft election timeout, lower bound, ms.
    #[arg(long, default_value_t = default_election_min())]
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ms: u64,
    /// Raft election timeout, upper bound, ms.
    #[arg(long, default_value_t = default_election_max())]
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ms: u64,
    /// Log entries between snapshots.
    #[arg(long, default_value_t = default_snapshot())]
    #[serde(default = "default_snapshot")]
    pub snapshot_after_logs: u64,
    /// DNS address of the agent role a clustered server runs (UDP and TCP; servers run the agent
    /// role too: registration API, health checks, gossip of instances); none: no DNS.
    #[arg(long)]
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// DNS server for names outside the mesh, `ip:port` (repeatable).
    #[arg(long = "recursor")]
    #[serde(default)]
    pub recursors: Vec<SocketAddr>,
    /// xDS address of the agent role a clustered server runs, for Envoys on its host; none: no
    /// xDS.
    #[arg(long)]
    #[serde(default)]
    pub xds: Option<SocketAddr>,
    /// When the Raft store cannot be trusted (damaged, a part missing), move it aside
    /// (`raft.untrusted-<time>`) and start empty as a new member that the cluster re-replicates,
    /// instead of refusing to start. Only in a cluster: a lone server would lose everything.
    #[arg(long)]
    #[serde(default)]
    pub discard_untrusted_store: bool,
    /// The cluster CA certificate (PEM) that peers' certificates must chain to; with
    /// `--tls-cert` and `--tls-key`, the cluster gRPC port takes mutual TLS only.
    #[arg(long)]
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM), from `shoal tls cert create`.
    #[arg(long)]
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Readable by shoal only.
    #[arg(long)]
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's private key: put into the replicated state (with `--tls-ca`) when this
    /// server leads and none is there, so that the servers sign the certificates of members
    /// joining with a token. Needed once, on one server; remove the file afterwards.
    #[arg(long)]
    #[serde(default)]
    pub tls_ca_key: Option<PathBuf>,
    /// Found the cluster's trust on this server, its first: at its first start it makes the
    /// cluster CA and its own certificate (`<data-dir>/tls`: `ca.pem`, the CA certificate to
    /// hand out; `server.pem` and `server-key.pem`), puts the CA into the replicated state once
    /// it leads (the CA key's file is deleted as soon as that commits), and renews its own
    /// certificate from it. The other servers and the agents then join with tokens. Only with
    /// `--bootstrap-expect 1` (or no gossip), and none of the other `--tls-*` files.
    #[arg(long)]
    #[serde(default)]
    pub tls_bootstrap: bool,
    /// A file holding a join token (`shoal tls token create --role server`): without
    /// `--tls-cert`, this server gets its certificate from `--join-api` with it (its key made
    /// here, kept in `<data-dir>/tls`).
    #[arg(long)]
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// API URL of a server of the cluster to join with `--join-token-file`.
    #[arg(long)]
    #[serde(default)]
    pub join_api: Option<String>,
    /// How long the certificates this server signs for joining and renewing members are valid,
    /// in seconds (members renew after two thirds of it).
    #[arg(long, default_value_t = default_cert_ttl())]
    #[serde(default = "default_cert_ttl")]
    pub tls_cert_ttl_seconds: u64,
    /// A file holding the gossip key (base64, from `shoal gossip keygen`): every gossip
    /// datagram is sealed with AES-256-GCM. It seeds `<data-dir>/gossip-keyring.json` at first
    /// start; from then on that keyring (changed by `shoal gossip keyring`) is used.
    #[arg(long)]
    #[serde(default)]
    pub gossip_key_file: Option<PathBuf>,
    /// Run without TLS or a gossip key beyond loopback: anyone who reaches the cluster gRPC
    /// port can forge Raft messages (servers) or read the model, and anyone who reaches the
    /// gossip port can read it and inject members and instances. Refused without this flag;
    /// warned about at every start with it.
    #[arg(long)]
    #[serde(default)]
    pub insecure: bool,
    /// Require AWS Signature Version 4 on the API, with access keys shoal issues
    /// (`shoal acl bootstrap` creates the first) and their policies.
    #[arg(long)]
    #[serde(default)]
    pub api_auth: bool,
    /// Serve the API over HTTPS with this server's certificate (`--tls-cert`; it must be valid
    /// for the address clients dial: `shoal tls cert create --ip`).
    #[arg(long)]
    #[serde(default)]
    pub api_tls: bool,
}

fn default_cert_ttl() -> u64 {
    365 * 24 * 3600
}
fn default_api() -> SocketAddr {
    "127.0.0.1:7070".parse().expect("literal")
}
fn default_raft() -> SocketAddr {
    "127.0.0.1:7071".parse().expect("literal")
}
/// The account id shoal uses when none is configured.
fn default_trust_domain() -> String {
    "shoal".into()
}

fn default_account() -> String {
    "000000000000".into()
}
/// The region shoal uses when none is configured.
fn default_region() -> String {
    "us-east-1".into()
}
// Failover takes about election_timeout_max (openraft's leader lease) plus a random election
// timeout after the last heartbeat: 600 + 400..600 ms keeps it near one second, and a
// heartbeat every 100 ms leaves four missed heartbeats before anyone moves.
fn default_heartbeat() -> u64 {
    100
}
fn default_election_min() -> u64 {
    400
}
fn default_election_max() -> u64 {
    600
}
fn default_snapshot() -> u64 {
    5000
}

impl ServerConfig {
    /// A single-server configuration with defaults for everything else (the same defaults a
    /// config file gets).
    pub fn new(node_id: u64, data_dir: PathBuf) -> Self {
        Self::deserialize(serde_json::json!({"node_id": node_id, "data_dir": data_dir}))
            .expect("the defaults make a configuration")
    }

    /// How many servers a new cluster waits for before it forms; 0: this server never forms
    /// one (it was given `--join` without `--bootstrap-expect`), it waits to be added.
    pub fn expect(&self) -> usize {
        match self.bootstrap_expect {
            Some(n) => n as usize,
            None if self.join.is_empty() => 1,
            None => 0,
        }
    }

    /// Checks the configuration before anything is opened or bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("--node-id must be at least 1");
        }
        if self.data_dir.as_os_str().is_empty() {
            bail!("--data-dir is required (or data_dir in the --config file)");
        }
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            bail!("account must be 12 digits, got {:?}", self.account);
        }
        if self.region.is_empty() || self.region.contains([':', '/']) {
            bail!("region {:?} cannot appear in an ARN", self.region);
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            bail!("need heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms");
        }
        if self.tls_cert_ttl_seconds < 10 {
            bail!("--tls-cert-ttl-seconds must be at least 10");
        }
        if self.bootstrap_expect == Some(0) {
            bail!("--bootstrap-expect must be at least 1");
        }
        if self.join_token_file.is_some() && (self.tls_ca.is_none() || self.join_api.is_none()) {
            bail!("--join-token-file needs --tls-ca (the cluster CA certificate) and --join-api (a server's API URL)");
        }
        if self.tls_bootstrap {
            if self.tls_ca.is_some()
                || self.tls_cert.is_some()
                || self.tls_key.is_some()
                || self.tls_ca_key.is_some()
                || self.join_token_file.is_some()
            {
                bail!("--tls-bootstrap makes this server's CA and certificate: give none of --tls-ca, --tls-cert, --tls-key, --tls-ca-key and --join-token-file with it");
            }
            if self.expect() != 1 {
                bail!("--tls-bootstrap founds a new cluster: only on its first server, with --bootstrap-expect 1 (the other servers join it with `shoal tls token create --role server` tokens)");
            }
        }
        if let Err(e) = shoal_pki::mesh::check_trust_domain(&self.trust_domain) {
            bail!("--trust-domain: {e}");
        }
        if self.api_tls
            && self.tls_cert.is_none()
            && self.join_token_file.is_none()
            && !self.tls_bootstrap
        {
            bail!("--api-tls serves this server's certificate: give --tls-ca, --tls-cert and --tls-key");
        }
        if self.tls_ca.is_none()
            && !self.tls_bootstrap
            && !self.raft.ip().is_loopback()
            && !self.insecure
        {
            bail!(
                "--raft {} is reachable beyond this host, and without TLS anyone who reaches it \
                 can forge Raft messages: give --tls-ca, --tls-cert and --tls-key (certificates \
                 from `shoal tls`), or --insecure to run without",
                self.raft
            );
        }
        let api_protected = self.api_auth && self.api_tls;
        if !(self.api.ip().is_loopback() || api_protected || self.insecure) {
            bail!(
                "--api {} is reachable beyond this host, and without --api-auth and --api-tls \
                 anyone who reaches it can read and change the mesh, in cleartext: give \
                 --api-auth --api-tls (with --tls-ca, --tls-cert and --tls-key), or --insecure \
                 to run without",
                self.api
            );
        }
        if let Some(g) = self.gossip {
            // Other servers dial these addresses as they are: 0.0.0.0 would make a peer dial
            // itself (openraft's leader must never replicate to itself).
            for (flag, addr) in [("--api", self.api), ("--raft", self.raft), ("--gossip", g)] {
                if addr.ip().is_unspecified() || addr.port() == 0 {
                    bail!("in a cluster {flag} must be this host's own address and a fixed port, not {addr}");
                }
            }
        }
        if self.gossip.is_none() && (self.dns.is_some() || self.xds.is_some()) {
            bail!("--dns and --xds need --gossip: the agent a server embeds gossips its instances");
        }
        if self.discard_untrusted_store && self.join.is_empty() {
            bail!("--discard-untrusted-store needs --join: a server started empty is re-replicated by the others, and a lone server would lose every resource");
        }
        if self.gossip.is_none() && (self.expect() > 1 || !self.join.is_empty()) {
            bail!("a multi-server cluster needs --gossip (servers find each other through gossip)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_example_config_is_valid() {
        let text = include_str!("../../../deploy/server.toml.example");
        let cfg: ServerConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.api.port(), 7070);
    }

    #[test]
    fn a_cluster_port_beyond_loopback_needs_tls_or_insecure() {
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.raft = "10.0.0.11:7071".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--tls-ca") && e.contains("--insecure"), "{e}");
        c.insecure = true;
        c.validate().unwrap();
        c.insecure = false;
        c.tls_ca = Some("/etc/shoal/tls/shoal-ca.pem".into());
        c.validate().unwrap();
    }

    #[test]
    fn an_api_beyond_loopback_needs_signatures_and_https_or_insecure() {
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.api = "10.0.0.11:7070".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--api-auth --api-tls") && e.contains("--insecure"),
            "{e}"
        );
        c.api_auth = true;
        assert!(c.validate().is_err(), "signatures without HTTPS");
        c.api_tls = true;
        c.tls_cert = Some("/etc/shoal/tls/server-1.pem".into());
        c.validate().unwrap();
        c.api_auth = false;
        assert!(c.validate().is_err(), "HTTPS without signatures");
        c.insecure = true;
        c.validate().unwrap();
    }

    #[test]
    fn tls_bootstrap_is_for_the_first_server_alone_and_makes_its_own_files() {
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.api = "10.0.0.11:7070".parse().unwrap();
        c.raft = "10.0.0.11:7071".parse().unwrap();
        c.gossip = Some("10.0.0.11:7946".parse().unwrap());
        c.api_auth = true;
        c.api_tls = true;
        c.tls_bootstrap = true;
        c.bootstrap_expect = Some(1);
        c.validate().unwrap();
        c.bootstrap_expect = Some(3);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--bootstrap-expect 1"), "{e}");
        c.bootstrap_expect = None;
        c.join = vec!["10.0.0.12:7946".into()];
        assert!(c.validate().is_err(), "a joining server founds nothing");
        c.join.clear();
        c.bootstrap_expect = Some(1);
        c.tls_ca = Some("/etc/shoal/tls/shoal-ca.pem".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("give none of --tls-ca"), "{e}");
    }

    #[test]
    fn bad_configs_are_refused_before_anything_starts() {
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.validate().unwrap();
        c.node_id = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--node-id must be at least 1"
        );
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.account = "123".into();
        assert!(c.validate().unwrap_err().to_string().contains("12 digits"));
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.election_timeout_min_ms = 100;
        assert!(c.validate().is_err());
        let e = toml::from_str::<ServerConfig>("node_id = 1\ndata_dir = \"/d\"\nbogus = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let mut c = ServerConfig::new(1, "/tmp/x".into());
        c.insecure = true; // (what TLS needs is checked above)
        c.gossip = Some("10.0.0.1:7946".parse().unwrap());
        c.api = "0.0.0.0:7070".parse().unwrap();
        c.raft = "10.0.0.1:7071".parse().unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "in a cluster --api must be this host's own address and a fixed port, not 0.0.0.0:7070"
        );
        c.api = "10.0.0.1:7070".parse().unwrap();
        c.validate().unwrap();
        // Starting empty is only safe where others hold the data.
        c.discard_untrusted_store = true;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--discard-untrusted-store needs --join"));
        c.join = vec!["10.0.0.2:7946".into()];
        c.validate().unwrap();
    }
}
