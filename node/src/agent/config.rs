//! An agent's configuration: flags or a TOML file (`shoal agent --config FILE`), checked before
//! anything is opened or bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::registration::Registration;

/// Default DNS address of an agent.
const DEFAULT_DNS: &str = "127.0.0.1:8600";
/// Default HTTP API address of an agent (the same port as a server's: a host runs one or the
/// other, and `shoal register` finds either at the default address).
const DEFAULT_API: &str = "127.0.0.1:7070";
/// Default xDS address of an agent.
const DEFAULT_XDS: &str = "127.0.0.1:18000";

fn default_gossip() -> SocketAddr {
    "127.0.0.1:7946".parse().expect("literal")
}

fn default_ttl() -> u32 {
    5
}

/// An agent's configuration. One definition per key: each field is a flag of `shoal agent`
/// (`--dns-ttl`, kebab-case) and a key of its TOML file (`dns_ttl`), with one default for both;
/// flags override the file (see `crate::config::layered`). Only `[[instance]]` has no flag (`shoal
/// register` is its command-line form).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's gossip name: stable across restarts, unique in the cluster (default: the
    /// host name). A restarted agent keeps its name and replaces its old state.
    #[arg(long)]
    #[serde(default)]
    pub name: Option<String>,
    /// Where registrations and the model cache live (required).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = crate::config::path_or_empty)]
    #[serde(default)]
    pub data_dir: PathBuf,
    /// Gossip address (UDP); this host's own address when it joins others.
    #[arg(long, default_value_t = default_gossip())]
    #[serde(default = "default_gossip")]
    pub gossip: SocketAddr,
    /// Gossip address of an existing member, server or agent (repeatable).
    #[arg(long)]
    #[serde(default)]
    pub join: Vec<String>,
    /// HTTP API address (registration, status, metrics); none when a server embeds the agent
    /// and serves its routes on its own API.
    #[arg(long, default_value = DEFAULT_API)]
    #[serde(default = "default_api_opt")]
    pub api: Option<SocketAddr>,
    /// DNS address, UDP and TCP (`--no-dns` turns DNS off).
    #[arg(long, default_value = DEFAULT_DNS)]
    #[serde(default = "default_dns_opt")]
    pub dns: Option<SocketAddr>,
    /// xDS (ADS) address for the local Envoys (`--no-xds` turns xDS off).
    #[arg(long, default_value = DEFAULT_XDS)]
    #[serde(default = "default_xds_opt")]
    pub xds: Option<SocketAddr>,
    /// DNS server for names outside the mesh, `ip:port` (repeatable); none: such names get
    /// REFUSED.
    #[arg(long = "recursor")]
    #[serde(default)]
    pub recursors: Vec<SocketAddr>,
    /// TTL of DNS answers, seconds.
    #[arg(long, default_value_t = default_ttl())]
    #[serde(default = "default_ttl")]
    pub dns_ttl: u32,
    /// Availability zone of this host, gossiped with its metadata.
    #[arg(long)]
    #[serde(default)]
    pub zone: Option<String>,
    /// gRPC URL of a server to follow besides those gossip finds (repeatable).
    #[arg(long = "server")]
    #[serde(default)]
    pub servers: Vec<String>,
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
    /// A file holding a join token (`shoal tls token create --role agent`): without
    /// `--tls-cert`, this agent gets its certificate from `--join-api` with it (its key made
    /// here, kept in `<data-dir>/tls`).
    #[arg(long)]
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// API URL of a server to join with `--join-token-file`.
    #[arg(long)]
    #[serde(default)]
    pub join_api: Option<String>,
    /// Serve each Envoy only its own configuration: an ADS stream must carry the proxy's token
    /// (`shoal envoy bootstrap --proxy-token-key <data-dir>/proxy-token.key` puts it in the
    /// bootstrap), made from a key in the data dir that only its owner can read.
    #[arg(long)]
    #[serde(default)]
    pub xds_auth: bool,
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
    /// Lifetime of the workload certificates this agent asks the mesh CA for its proxies,
    /// seconds (renewed at half-life; 20 s to a day).
    #[arg(long, default_value_t = default_workload_cert_ttl())]
    #[serde(default = "default_workload_cert_ttl")]
    pub workload_cert_ttl: u64,
    /// Instances registered by the config file (re-read at every start).
    #[arg(skip)]
    #[serde(default, rename = "instance")]
    pub instances: Vec<Registration>,
}

fn default_workload_cert_ttl() -> u64 {
    shoal_pki::mesh::WORKLOAD_VALIDITY.as_secs()
}

fn default_api_opt() -> Option<SocketAddr> {
    DEFAULT_API.parse().ok()
}

fn default_xds_opt() -> Option<SocketAddr> {
    DEFAULT_XDS.parse().ok()
}

fn default_dns_opt() -> Option<SocketAddr> {
    DEFAULT_DNS.parse().ok()
}

impl AgentConfig {
    /// A configuration with defaults for everything but the data dir and gossip address (the
    /// same defaults a config file gets).
    pub fn new(data_dir: PathBuf, gossip: SocketAddr) -> Self {
        Self::deserialize(serde_json::json!({"data_dir": data_dir, "gossip": gossip}))
            .expect("the defaults make a configuration")
    }

    /// Checks the configuration before anything is opened or bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("--data-dir is required (or data_dir in the --config file)");
        }
        let (min, max) = (
            shoal_pki::mesh::MIN_WORKLOAD_VALIDITY.as_secs(),
            shoal_pki::mesh::WORKLOAD_VALIDITY.as_secs(),
        );
        if !(min..=max).contains(&self.workload_cert_ttl) {
            bail!("--workload-cert-ttl is between {min} and {max} seconds");
        }
        if self.tls_ca.is_none() && !self.gossip.ip().is_loopback() && !self.insecure {
            bail!(
                "this agent joins a cluster beyond this host ({}), and without TLS it would \
                 follow servers it cannot authenticate: give --tls-ca, --tls-cert and --tls-key \
                 (certificates from `shoal tls`), or --insecure to run without",
                self.gossip
            );
        }
        if let Some(api) = self.api {
            if !api.ip().is_loopback() && !self.insecure {
                bail!(
                    "--api {api} is reachable beyond this host, and the agent's API takes \
                     registrations without credentials: keep it on loopback (the default), or \
                     --insecure to run it so"
                );
            }
        }
        if let Some(xds) = self.xds {
            if !xds.ip().is_loopback() && !self.xds_auth && !self.insecure {
                bail!(
                    "--xds {xds} is reachable beyond this host, and without --xds-auth any \
                     client that names a proxy gets its whole configuration: give --xds-auth \
                     (`shoal envoy bootstrap --proxy-token-key` puts each proxy's token in its \
                     bootstrap), keep xDS on loopback, or --insecure"
                );
            }
        }
        if self.join_token_file.is_some() && (self.tls_ca.is_none() || self.join_api.is_none()) {
            bail!("--join-token-file needs --tls-ca (the cluster CA certificate) and --join-api (a server's API URL)");
        }
        if self.dns_ttl > 86_400 {
            bail!("--dns-ttl must be at most 86400 seconds");
        }
        if !self.join.is_empty() && (self.gossip.ip().is_unspecified() || self.gossip.port() == 0) {
            bail!(
                "--gossip must be this host's own address and a fixed port to join others, not {}",
                self.gossip
            );
        }
        for i in &self.instances {
            i.to_instance()
                .with_context(|| format!("instance {:?} in the config", i.name.instance_id))?;
        }
        Ok(())
    }

    /// The gossip name: the configured one, else the host name, else `agent-<gossip addr>`.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("agent-{}", self.gossip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_beyond_loopback_needs_tls_or_insecure() {
        let mut c = AgentConfig::new("/tmp/x".into(), "10.0.1.23:7946".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--tls-ca") && e.contains("--insecure"), "{e}");
        c.insecure = true;
        c.validate().unwrap();
        let local = AgentConfig::new("/tmp/x".into(), "127.0.0.1:7946".parse().unwrap());
        local.validate().unwrap();
    }

    #[test]
    fn the_deployed_example_config_is_valid() {
        let cfg: AgentConfig = toml::from_str(include_str!("../../../deploy/agent.toml.example"))
            .expect("the example parses");
        cfg.validate().unwrap();
        assert_eq!(cfg.instances.len(), 1);
        assert_eq!(
            cfg.instances[0].to_instance().unwrap().key(),
            "apps.local/colorteller/colorteller-red-1"
        );
        assert_eq!(cfg.dns, Some("127.0.0.1:8600".parse().unwrap()));
    }

    #[test]
    fn xds_beyond_loopback_needs_proxy_tokens_or_insecure() {
        let mut c = AgentConfig::new("/tmp/x".into(), "127.0.0.1:7946".parse().unwrap());
        c.xds = Some("10.0.1.23:18000".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--xds-auth") && e.contains("--insecure"), "{e}");
        c.xds_auth = true;
        c.validate().unwrap();
        c.xds_auth = false;
        c.insecure = true;
        c.validate().unwrap();
    }

    #[test]
    fn an_api_beyond_loopback_needs_insecure() {
        let mut c = AgentConfig::new("/tmp/x".into(), "127.0.0.1:7946".parse().unwrap());
        c.validate().unwrap();
        c.api = Some("10.0.1.23:7070".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("loopback") && e.contains("--insecure"), "{e}");
        c.insecure = true;
        c.validate().unwrap();
    }

    #[test]
    fn bad_configs_are_refused_before_anything_starts() {
        let mut c = AgentConfig::new("/tmp/x".into(), "0.0.0.0:7946".parse().unwrap());
        c.insecure = true; // (what TLS needs is checked above)
        c.validate().unwrap();
        c.join = vec!["10.0.0.1:7946".into()];
        assert!(c.validate().unwrap_err().to_string().contains("--gossip"));
        c.join.clear();
        c.instances.push(Registration {
            name: crate::registration::InstanceName {
                namespace: "apps.local".into(),
                service: "web".into(),
                instance_id: "bad/id".into(),
                ..Default::default()
            },
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            attributes: Vec::new(),
        });
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("bad/id") && e.contains("instance id"), "{e}");
        assert!(toml::from_str::<AgentConfig>(
            "data_dir = \"/x\"\ngossip = \"1.2.3.4:1\"\nnope = 1"
        )
        .is_err());
    }
}
