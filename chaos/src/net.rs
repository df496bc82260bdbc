//! Hosts as network namespaces, and the faults nftables can make inside them.
//!
//! Why namespaces: a partition or a lossy link has to cut real sockets the way a real network
//! would, without touching the machine's own network. Every run creates its own namespaces,
//! named `shoalchaos-<pid>-<host>`, with one veth pair each into a bridge that lives in a hub
//! namespace of the run (so no bridge and no filtering rule ever exists in the root namespace),
//! plus one veth pair from the root namespace into the bridge for the harness's clients and
//! its fault-injecting proxy. Addresses are in 198.18.0.0/15 (RFC 2544, benchmark testing).
//!
//! Faults are nftables rules in the faulty host's own namespace (`table inet chaos`): drop
//! rules by peer address for partitions, `numgen random mod 100 < N drop` for loss. Port
//! redirections to the proxy are `table ip chaosnat` (DNAT in the output hook).
//!
//! Cleanup: [`Net`]'s `Drop` kills every process left in its namespaces and deletes them (the
//! veth pairs go with them); [`sweep_stale`] does the same for the namespaces of runs whose
//! process is gone (a run killed with SIGKILL).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// What can go wrong while building or changing the test network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command (`ip`, `nft`) could not be run at all.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its stderr.
        stderr: String,
    },
}

/// Namespace names of every run start with this.
pub const NS_PREFIX: &str = "shoalchaos-";
/// Interface names (at most 15 bytes) of every run start with this.
pub const IF_PREFIX: &str = "shc";

/// Runs `program args…` (optionally feeding `stdin`) and returns stdout.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            cmd: match stdin {
                Some(s) => format!("{cmd} <<< {s}"),
                None => cmd,
            },
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args, None)
}

/// Checks what the suite needs from the machine: root, `ip netns`, and `nft` usable inside a
/// namespace. The error says what is missing and how to get it.
pub fn preflight() -> Result<(), String> {
    let uid = run("id", &["-u"], None).map_err(|e| e.to_string())?;
    if uid.trim() != "0" {
        return Err(format!(
            "the chaos suite needs root (network namespaces and nftables); running as uid {}",
            uid.trim()
        ));
    }
    run("ip", &["-V"], None)
        .map_err(|e| format!("`ip` (iproute2) is needed: {e}; apt-get install iproute2"))?;
    run("nft", &["--version"], None).map_err(|e| {
        format!("`nft` is needed: {e}; run scripts/install-tools (apt-get install nftables)")
    })?;
    let probe = format!("{NS_PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let nft = run(
        "ip",
        &["netns", "exec", &probe, "nft", "-f", "-"],
        Some("table inet probe {\n chain input {\n type filter hook input priority 0;\n numgen random mod 100 < 1 drop\n }\n}\n"),
    );
    let _ = ip(&["netns", "del", &probe]);
    nft.map_err(|e| format!("nftables does not work inside a namespace: {e}"))?;
    Ok(())
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every process inside namespace `ns` (SIGKILL).
fn kill_inside(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid], None);
        }
    }
}

/// Deletes the namespaces and interfaces of earlier runs whose process is gone (and kills what
/// still runs inside them). Returns the names removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let list = ip(&["netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| p != std::process::id() && !alive(p)) {
            kill_inside(name);
            let _ = ip(&["netns", "del", name]);
            removed.push(name.to_string());
        }
    }
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let Some(rest) = name.strip_prefix(IF_PREFIX) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(pid) = digits.parse::<u32>() {
            if pid != std::process::id() && !alive(pid) {
                let _ = ip(&["link", "del", name]);
                removed.push(name.to_string());
            }
        }
    }
    removed
}

/// One host: a namespace with one address on the run's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Short name (`s1`, `a2`, …).
    pub name: String,
    /// The namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl Host {
    /// The arguments for `ip` that run `program args…` inside this host's namespace (`ip netns
    /// exec` execs the program, so the spawned process id is the program's own).
    pub fn exec_args(&self, program: &str, args: &[String]) -> Vec<String> {
        let mut a = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns.clone(),
            program.to_string(),
        ];
        a.extend(args.iter().cloned());
        a
    }

    /// Runs an nftables script inside this host.
    pub fn nft(&self, script: &str) -> Result<(), NetError> {
        run(
            "ip",
            &["netns", "exec", &self.ns, "nft", "-f", "-"],
            Some(script),
        )
        .map(|_| ())
    }

    /// Replaces this host's fault rules with `rules` (nft rule bodies for the `input` and
    /// `output` chains of `table inet chaos`); no rules = no fault.
    pub fn set_faults(&self, input: &[String], output: &[String]) -> Result<(), NetError> {
        let mut s = String::from(
            "table inet chaos {\n chain input { type filter hook input priority 0; policy accept; }\n \
             chain output { type filter hook output priority 0; policy accept; }\n}\n\
             flush table inet chaos\n",
        );
        for r in input {
            s.push_str(&format!("add rule inet chaos input {r}\n"));
        }
        for r in output {
            s.push_str(&format!("add rule inet chaos output {r}\n"));
        }
        self.nft(&s)
    }

    /// Cuts this host off from `peers` in both directions (everything else still passes).
    pub fn isolate(&self, peers: &[Ipv4Addr]) -> Result<(), NetError> {
        let set = peers
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.set_faults(
            &[format!("ip saddr {{ {set} }} drop")],
            &[format!("ip daddr {{ {set} }} drop")],
        )
    }

    /// Drops `percent`% of the packets on this host's link, both ways (loopback untouched).
    pub fn lossy(&self, percent: u32) -> Result<(), NetError> {
        let rule = |dir: &str| format!("{dir} != \"lo\" numgen random mod 100 < {percent} drop");
        self.set_faults(&[rule("iifname")], &[rule("oifname")])
    }

    /// Removes every fault rule of this host.
    pub fn heal(&self) -> Result<(), NetError> {
        self.set_faults(&[], &[])
    }

    /// Sends this host's TCP connections to `to` (ip, port) through `via` instead:
    /// `(original destination, port, via)` triples, as DNAT in the output hook.
    pub fn redirect(
        &self,
        rules: &[(Ipv4Addr, u16, std::net::SocketAddrV4)],
    ) -> Result<(), NetError> {
        let mut s = String::from(
            "table ip chaosnat {\n chain output { type nat hook output priority -100; policy accept; }\n}\n\
             flush table ip chaosnat\n",
        );
        for (dst, port, via) in rules {
            s.push_str(&format!(
                "add rule ip chaosnat output ip daddr {dst} tcp dport {port} dnat to {via}\n"
            ));
        }
        self.nft(&s)
    }
}

/// The network of one run: a hub namespace with a bridge, one namespace per host, and a veth
/// from the root namespace (clients at `.1`, the fault proxy at `.2`).
#[derive(Debug)]
pub struct Net {
    run: String,
    hub: String,
    subnet: u8,
    hosts: Vec<Host>,
}

impl Net {
    /// Builds the network: hosts `(name, last address byte)` in `198.18.<subnet>.0/24`.
    pub fn create(subnet: u8, hosts: &[(&str, u8)]) -> Result<Net, NetError> {
        let pid = std::process::id();
        let run = format!("{NS_PREFIX}{pid}");
        let hub = format!("{run}-hub");
        let mut net = Net {
            run: run.clone(),
            hub: hub.clone(),
            subnet,
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &hub])?;
        let br = format!("{IF_PREFIX}{pid}br");
        ip(&["-n", &hub, "link", "add", &br, "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", &br, "up"])?;
        // The root namespace's leg: clients and the proxy.
        let root_if = format!("{IF_PREFIX}{pid}r");
        let root_peer = format!("{IF_PREFIX}{pid}h");
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &root_peer, "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", &root_peer, "master", &br])?;
        ip(&["-n", &hub, "link", "set", &root_peer, "up"])?;
        for last in [1u8, 2] {
            ip(&[
                "addr",
                "add",
                &format!("198.18.{subnet}.{last}/24"),
                "dev",
                &root_if,
            ])?;
        }
        ip(&["link", "set", &root_if, "up"])?;
        for (name, last) in hosts {
            let ns = format!("{run}-{name}");
            ip(&["netns", "add", &ns])?;
            let host = Host {
                name: name.to_string(),
                ns: ns.clone(),
                ip: Ipv4Addr::new(198, 18, subnet, *last),
            };
            net.hosts.push(host);
            let dev = format!("{IF_PREFIX}{pid}{name}");
            let peer = format!("{IF_PREFIX}{pid}{name}p");
            ip(&[
                "link", "add", &dev, "netns", &ns, "type", "veth", "peer", "name", &peer, "netns",
                &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &peer, "master", &br])?;
            ip(&["-n", &hub, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.{subnet}.{last}/24"),
                "dev",
                &dev,
            ])?;
            ip(&["-n", &ns, "link", "set", &dev, "up"])?;
        }
        Ok(net)
    }

    /// The address of the harness's clients (root namespace).
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 1)
    }

    /// The address of the fault-injecting proxy (root namespace).
    pub fn proxy_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 2)
    }

    /// The host named `name`. Panics on an unknown name (a harness bug).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Every host.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Removes every fault rule on every host.
    pub fn heal_all(&self) -> Result<(), NetError> {
        for h in &self.hosts {
            h.heal()?;
        }
        Ok(())
    }

    /// The run's namespace prefix (`shoalchaos-<pid>`).
    pub fn run_name(&self) -> &str {
        &self.run
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_inside(&h.ns);
            let _ = ip(&["netns", "del", &h.ns]);
        }
        kill_inside(&self.hub);
        let _ = ip(&["netns", "del", &self.hub]);
        let root_if = format!("{IF_PREFIX}{}r", std::process::id());
        let _ = ip(&["link", "del", &root_if]);
    }
}
