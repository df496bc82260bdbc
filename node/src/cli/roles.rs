//! `shoal server` and `shoal agent`: the long-running roles. Their flags are their configuration
//! types themselves (`ServerConfig`, `AgentConfig`), layered over an optional TOML file.

use std::path::PathBuf;

use clap::Args;

use crate::agent::AgentConfig;
use crate::config::layered;
use crate::server::ServerConfig;

/// `shoal server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML file with the same keys as the flags (`node_id`, `data_dir`, `api`, …); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ServerConfig,
}

/// `shoal agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Read the configuration from this TOML file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not serve DNS.
    #[arg(long)]
    pub no_dns: bool,
    /// Do not serve xDS.
    #[arg(long)]
    pub no_xds: bool,
    #[command(flatten)]
    pub settings: AgentConfig,
}

/// The server's configuration: its flags over its `--config` file, checked.
pub(super) fn server_config(
    args: ServerArgs,
    matches: &clap::ArgMatches,
) -> anyhow::Result<ServerConfig> {
    let cfg = layered(args.settings, matches, args.config.as_deref())?;
    cfg.validate()?;
    Ok(cfg)
}

/// The agent's configuration: its flags over its `--config` file, with `--no-dns` and
/// `--no-xds` last, checked.
pub(super) fn agent_config(
    args: AgentArgs,
    matches: &clap::ArgMatches,
) -> anyhow::Result<AgentConfig> {
    let mut cfg = layered(args.settings, matches, args.config.as_deref())?;
    if args.no_dns {
        cfg.dns = None;
    }
    if args.no_xds {
        cfg.xds = None;
    }
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn matches(args: &[&str]) -> clap::ArgMatches {
        super::super::Cli::command()
            .try_get_matches_from(std::iter::once("shoal").chain(args.iter().copied()))
            .unwrap()
    }

    fn server(args: &[&str]) -> anyhow::Result<ServerConfig> {
        let m = matches(args);
        let cli = super::super::Cli::from_arg_matches(&m)?;
        let super::super::Command::Server(a) = cli.command else {
            panic!("not a server command")
        };
        server_config(a, m.subcommand_matches("server").unwrap())
    }

    fn agent(args: &[&str]) -> anyhow::Result<AgentConfig> {
        let m = matches(args);
        let cli = super::super::Cli::from_arg_matches(&m)?;
        let super::super::Command::Agent(a) = cli.command else {
            panic!("not an agent command")
        };
        agent_config(a, m.subcommand_matches("agent").unwrap())
    }

    #[test]
    fn server_flags_alone_and_over_the_example_file() {
        let c = server(&[
            "server",
            "--node-id",
            "3",
            "--data-dir",
            "/d",
            "--recursor",
            "10.0.0.2:53",
        ])
        .unwrap();
        assert_eq!((c.node_id, c.api.port(), c.heartbeat_ms), (3, 7070, 100));
        assert_eq!(
            c.recursors,
            vec!["10.0.0.2:53".parse::<std::net::SocketAddr>().unwrap()]
        );
        let e = server(&["server", "--data-dir", "/d"]).unwrap_err();
        assert_eq!(e.to_string(), "--node-id must be at least 1");
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/server.toml.example");
        let c = server(&["server", "--config", example]).unwrap();
        assert_eq!(c.node_id, 1);
        let c = server(&[
            "server",
            "--config",
            example,
            "--node-id",
            "7",
            "--heartbeat-ms",
            "150",
        ])
        .unwrap();
        assert_eq!(
            (c.node_id, c.heartbeat_ms),
            (7, 150),
            "flags win over the file"
        );
        assert_eq!(c.api.port(), 7070);
    }

    #[test]
    fn agent_flags_alone_and_over_the_example_file() {
        let c = agent(&[
            "agent",
            "--data-dir",
            "/d",
            "--no-xds",
            "--server",
            "http://s:7071",
        ])
        .unwrap();
        assert_eq!(c.gossip, "127.0.0.1:7946".parse().unwrap());
        assert_eq!(c.dns, Some("127.0.0.1:8600".parse().unwrap()));
        assert_eq!(c.xds, None);
        assert_eq!(c.servers, vec!["http://s:7071".to_string()]);
        let e = agent(&["agent"]).unwrap_err();
        assert!(e.to_string().contains("--data-dir is required"), "{e}");
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.toml.example");
        let c = agent(&["agent", "--config", example, "--dns-ttl", "30", "--no-dns"]).unwrap();
        assert_eq!(c.instances.len(), 1, "[[instance]] comes from the file");
        assert_eq!((c.dns_ttl, c.dns), (30, None));
        assert_eq!(c.zone.as_deref(), Some("us-east-1a"));
    }
}
