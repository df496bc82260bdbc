//! An agent's configuration: flags or a TOML file (`shoal agent --config FILE`), checked before
//! anything is opened or bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::registration::Registration;

/// Default DNS address of an agent.
pub fn default_dns() -> SocketAddr {
    "127.0.0.1:8600".parse().expect("literal")
}

/// Default HTTP API address of an agent (the same port as a server's: a host runs one or the
/// other, and `shoal register` finds either at the default address).
pub fn default_api() -> SocketAddr {
    "127.0.0.1:7070".parse().expect("literal")
}

fn default_ttl() -> u32 {
    5
}

/// An agent's configuration, from flags or a TOML file (`shoal agent --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name in gossip: stable across restarts, unique in the cluster (default: the
    /// host name). A restarted agent keeps its name and replaces its old state.
    #[serde(default)]
    pub name: Option<String>,
    /// Where registrations and the model cache live.
    pub data_dir: PathBuf,
    /// Gossip address (UDP).
    pub gossip: SocketAddr,
    /// Gossip addresses of existing members (servers or agents).
    #[serde(default)]
    pub join: Vec<String>,
    /// HTTP API address (registration, status, metrics); `None` when a server embeds the agent
    /// and serves its routes on its own API.
    #[serde(default = "default_api_opt")]
    pub api: Option<SocketAddr>,
    /// DNS address (UDP and TCP); `None` turns DNS off.
    #[serde(default = "default_dns_opt")]
    pub dns: Option<SocketAddr>,
    /// xDS (ADS) address the local Envoys connect to; `None` turns xDS off.
    #[serde(default = "default_xds_opt")]
    pub xds: Option<SocketAddr>,
    /// DNS servers for names outside the mesh; none: such names get REFUSED.
    #[serde(default)]
    pub recursors: Vec<SocketAddr>,
    /// TTL of DNS answers, seconds.
    #[serde(default = "default_ttl")]
    pub dns_ttl: u32,
    /// Availability zone of the host, gossiped with its metadata.
    #[serde(default)]
    pub zone: Option<String>,
    /// gRPC URLs of servers to follow besides those found through gossip.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Instances registered by the config file (re-read at every start).
    #[serde(default, rename = "instance")]
    pub instances: Vec<Registration>,
}

fn default_api_opt() -> Option<SocketAddr> {
    Some(default_api())
}

/// Default xDS address of an agent.
pub fn default_xds() -> SocketAddr {
    "127.0.0.1:18000".parse().expect("literal")
}

fn default_xds_opt() -> Option<SocketAddr> {
    Some(default_xds())
}

fn default_dns_opt() -> Option<SocketAddr> {
    Some(default_dns())
}

impl AgentConfig {
    /// A configuration with defaults for everything but the data dir and gossip address.
    pub fn new(data_dir: PathBuf, gossip: SocketAddr) -> Self {
        AgentConfig {
            name: None,
            data_dir,
            gossip,
            join: Vec::new(),
            api: Some(default_api()),
            dns: Some(default_dns()),
            xds: Some(default_xds()),
            recursors: Vec::new(),
            dns_ttl: default_ttl(),
            zone: None,
            servers: Vec::new(),
            instances: Vec::new(),
        }
    }

    /// Checks the configuration before anything is opened or bound.
    pub fn validate(&self) -> anyhow::Result<()> {
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
    fn bad_configs_are_refused_before_anything_starts() {
        let mut c = AgentConfig::new("/tmp/x".into(), "0.0.0.0:7946".parse().unwrap());
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
