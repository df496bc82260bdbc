//! The architecture invariants ARCHITECTURE.md states, checked on the source tree so that they
//! stay true: `model/` is pure (no async, no I/O, no clock), the subsystem crates do not depend
//! on each other, and no module of the `shoal` crate imports another in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The names in the `[dependencies]` table of a crate's manifest.
fn dependencies(krate: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim().trim_end_matches(".workspace").to_string();
                if !name.is_empty() && !name.starts_with('#') {
                    out.insert(name);
                }
            }
        }
    }
    out
}

#[test]
fn the_model_crate_is_pure() {
    let allowed: BTreeSet<String> = [
        "serde",
        "serde_json",
        "thiserror",
        "regex",
        "serde_path_to_error",
    ]
    .map(String::from)
    .into();
    let deps = dependencies("model");
    let extra: Vec<_> = deps.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "model/ must stay pure: no async runtime, I/O or clock crate among its dependencies, found {extra:?} (allow a pure one here on purpose)"
    );
    let forbidden = [
        "async fn",
        ".await",
        "std::fs",
        "std::net::TcpStream",
        "std::net::TcpListener",
        "std::net::UdpSocket",
        "SystemTime::now",
        "Instant::now",
        "std::thread::spawn",
        "std::env::var",
    ];
    let mut found = Vec::new();
    for f in rust_files(&root().join("model/src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    found.push(format!("{}:{}: {word}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "model/ does I/O, async or clock reads: {found:#?}"
    );
}

#[test]
fn subsystem_crates_do_not_depend_on_each_other() {
    let subsystems = ["raft", "gossip", "dns", "xds", "pki", "auth"];
    for krate in subsystems {
        let deps = dependencies(krate);
        for other in subsystems {
            assert!(
                !deps.contains(&format!("shoal-{other}")),
                "shoal-{krate} depends on shoal-{other}: subsystems meet only in node/"
            );
        }
    }
}

/// The module path of a file of `node/src` (`server/appmesh.rs` → `server::appmesh`,
/// `server/mod.rs` → `server`, `lib.rs` → ``).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The modules of the crate a file names through `crate::a::b` or `super::b`, resolved to
/// the longest known module path.
fn references(module: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let parent: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let is_mod_rs = |m: &str| known.iter().any(|k| k.starts_with(&format!("{m}::")));
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // `super` of `a::b` (a file) is `a`; of `a` with children (a mod.rs) it is the crate.
            let mut p = parent.clone();
            if is_mod_rs(module) {
                p.pop();
            }
            p.pop();
            p
        }),
    ] {
        for (i, _) in text.match_indices(prefix) {
            let before = text[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[i + prefix.len()..];
            let path: Vec<&str> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .collect();
            let mut best = None;
            for n in 1..=path.len() {
                let mut full = base.clone();
                full.extend(&path[..n]);
                let name = full.join("::");
                if known.contains(&name) {
                    best = Some(name);
                }
            }
            if let Some(m) = best {
                if m != module {
                    out.insert(m);
                }
            }
        }
    }
    out
}

/// A cycle in `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap();
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// In `node/src`, the top-level modules (the roles: server, agent, cli, watch, …) use each
/// other without a circle, and so do the files inside each role (a child using its parent's
/// shared state through `super::` is how Rust modules work and is not counted).
#[test]
fn node_modules_import_without_circles() {
    let src = root().join("node/src");
    let files = rust_files(&src);
    let known: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| !m.is_empty())
        .collect();
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut roles: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        if m.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for r in references(&m, &text, &known) {
            if top(&r) != top(&m) {
                roles.entry(top(&m)).or_default().insert(top(&r));
            } else {
                // Inside a role: edges between modules that are not each other's ancestor.
                let related = r.starts_with(&format!("{m}::")) || m.starts_with(&format!("{r}::"));
                if !related {
                    siblings.entry(m.clone()).or_default().insert(r);
                }
            }
        }
    }
    assert!(
        roles.contains_key("server") && roles["server"].contains("agent"),
        "the scan must see that the server embeds the agent: {roles:?}"
    );
    if let Some(c) = cycle(&roles) {
        panic!(
            "node/ roles import each other in a circle: {}",
            c.join(" → ")
        );
    }
    if let Some(c) = cycle(&siblings) {
        panic!(
            "node/ modules import each other in a circle: {}",
            c.join(" → ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let mut acyclic = g.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(cycle(&acyclic), None);
}

#[test]
fn references_resolve_crate_and_super_paths() {
    let known: BTreeSet<String> = [
        "server",
        "server::forward",
        "server::appmesh",
        "http",
        "agent",
    ]
    .map(String::from)
    .into();
    let refs = references(
        "server::appmesh",
        "use super::forward::commit;\nuse crate::http::error_response;\nlet x = crate::agent::start();",
        &known,
    );
    assert_eq!(
        refs,
        ["server::forward", "http", "agent"]
            .map(String::from)
            .into()
    );
}
