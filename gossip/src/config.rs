//! Settings of one gossip member.

use std::net::SocketAddr;
use std::time::Duration;

/// Default gossip port (UDP), as in Consul/Serf.
pub const DEFAULT_PORT: u16 = 7946;

/// How one gossip member runs: who it is, where it listens, whom it asks first, and how fast
/// it decides that a peer is dead.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Unique node name (e.g. `server-1` or the hostname). A node keeps its name across restarts;
    /// two processes with the same name in one cluster hide each other.
    pub name: String,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Address the other nodes gossip to (differs from `listen` behind NAT or when listening on
    /// `0.0.0.0`); must be a concrete IP and port.
    pub advertise: SocketAddr,
    /// Gossip addresses (`host:port`, re-resolved periodically) of members to contact first
    /// (`--join`). Empty for the first node of a cluster.
    pub seeds: Vec<String>,
    /// Name shared by all nodes of one cluster; peers with another id are refused, which keeps
    /// two clusters on one network apart (it is not authentication).
    pub cluster_id: String,
    /// Time between gossip rounds; also the prior heartbeat interval of the failure detector.
    pub gossip_interval: Duration,
    /// Phi-accrual threshold above which a silent peer is declared dead; higher is slower but
    /// more tolerant of pauses.
    pub phi_threshold: f64,
    /// How long the state of a dead node is kept (half of it still gossiped) before it is
    /// forgotten.
    pub dead_node_grace: Duration,
    /// How long a deleted key's tombstone (e.g. a withdrawn instance) is kept and gossiped
    /// after the deletion; a peer cut off for longer than this cannot replay the deletion and
    /// gets that node's whole state again instead. Longer costs memory per deleted key, shorter
    /// costs full-state transfers after partitions.
    pub marked_for_deletion_grace: Duration,
    /// Keys every datagram is sealed and opened with (AES-256-GCM, see [`crate::Keyring`]);
    /// none: plaintext gossip that anyone on the network can read and forge.
    pub keyring: Option<crate::Keyring>,
}

impl GossipConfig {
    /// A config with the defaults: advertise = `listen`, no seeds, cluster id `shoal`, 200 ms
    /// gossip interval, phi threshold 8, 1 h dead-node grace, 15 min tombstone grace.
    pub fn new(name: impl Into<String>, listen: SocketAddr) -> Self {
        GossipConfig {
            name: name.into(),
            listen,
            advertise: listen,
            seeds: Vec::new(),
            cluster_id: "shoal".to_string(),
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(60 * 60),
            marked_for_deletion_grace: Duration::from_secs(15 * 60),
            keyring: None,
        }
    }

    /// Rejects settings chitchat would misbehave with (a zero interval panics its timer, an
    /// unspecified advertise address makes the node unreachable).
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > crate::keys::MAX_KEY_LEN {
            return Err(format!(
                "node name must be 1 to {} bytes",
                crate::keys::MAX_KEY_LEN
            ));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > crate::keys::MAX_KEY_LEN {
            return Err(format!(
                "cluster id must be 1 to {} bytes",
                crate::keys::MAX_KEY_LEN
            ));
        }
        if self.advertise.ip().is_unspecified() || self.advertise.port() == 0 {
            return Err(format!(
                "advertise address {} must be a concrete IP and port",
                self.advertise
            ));
        }
        if self.gossip_interval.is_zero() {
            return Err("gossip interval must be positive".into());
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(format!(
                "phi threshold {} must be a positive number",
                self.phi_threshold
            ));
        }
        if self.dead_node_grace.is_zero() || self.marked_for_deletion_grace.is_zero() {
            return Err("grace periods must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_advertise_listen() {
        let listen: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let cfg = GossipConfig::new("server-1", listen);
        assert_eq!(cfg.advertise, listen);
        assert_eq!(cfg.cluster_id, "shoal");
        assert_eq!(cfg.gossip_interval, Duration::from_millis(200));
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let ok = GossipConfig::new("n", "127.0.0.1:7946".parse().unwrap());
        let cases: Vec<GossipConfig> = vec![
            GossipConfig {
                name: String::new(),
                ..ok.clone()
            },
            GossipConfig {
                cluster_id: String::new(),
                ..ok.clone()
            },
            GossipConfig {
                advertise: "0.0.0.0:7946".parse().unwrap(),
                ..ok.clone()
            },
            GossipConfig {
                advertise: "127.0.0.1:0".parse().unwrap(),
                ..ok.clone()
            },
            GossipConfig {
                gossip_interval: Duration::ZERO,
                ..ok.clone()
            },
            GossipConfig {
                phi_threshold: f64::NAN,
                ..ok.clone()
            },
            GossipConfig {
                phi_threshold: 0.0,
                ..ok.clone()
            },
            GossipConfig {
                dead_node_grace: Duration::ZERO,
                ..ok.clone()
            },
        ];
        for cfg in cases {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
