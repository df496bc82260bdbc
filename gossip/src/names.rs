//! Which member holds a name when several live processes claim it.
//!
//! A name is a node's identity: its instances, its metadata and its place in the views are
//! keyed by it. A restarted node claims its name again with a higher generation from the same
//! gossip address, and replaces its previous process. A *different* address claiming a live
//! name is another host: a misconfigured twin, or a rogue that wants the name's instances
//! gone or replaced. The first holder keeps the name; the newcomer is refused and reported
//! (on both sides: the holder sees the claim, the newcomer sees the holder), never silently
//! swapped in.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A claim on a name that was refused: a live process at another address holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameConflict {
    /// The name.
    pub name: String,
    /// The process that keeps it.
    pub holder: (SocketAddr, u64),
    /// The process refused.
    pub refused: (SocketAddr, u64),
}

/// One process per name among `items` (live processes: name, generation, gossip address),
/// with the refused claims. Per name, in generation order: the oldest holds the name; a newer
/// one at the holder's address replaces it (a restart); a newer one elsewhere is refused.
pub(crate) fn hold<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> (&str, u64, SocketAddr),
) -> (Vec<T>, Vec<NameConflict>) {
    let mut by_name: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for item in items {
        let name = key(&item).0.to_string();
        by_name.entry(name).or_default().push(item);
    }
    let mut kept = Vec::with_capacity(by_name.len());
    let mut conflicts = Vec::new();
    for (name, mut claims) in by_name {
        claims.sort_by_key(|c| key(c).1);
        let mut claims = claims.into_iter();
        let Some(mut holder) = claims.next() else {
            continue;
        };
        for claim in claims {
            let (_, hg, ha) = key(&holder);
            let (_, cg, ca) = key(&claim);
            if ca == ha {
                holder = claim;
            } else {
                conflicts.push(NameConflict {
                    name: name.clone(),
                    holder: (ha, hg),
                    refused: (ca, cg),
                });
            }
        }
        kept.push(holder);
    }
    (kept, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn run(
        items: &[(&'static str, u64, u16)],
    ) -> (Vec<(&'static str, u64, u16)>, Vec<NameConflict>) {
        hold(items.iter().copied(), |&(n, g, p)| (n, g, a(p)))
    }

    #[test]
    fn a_restart_replaces_and_another_address_is_refused() {
        // A restart at the same address: the newest generation.
        assert_eq!(run(&[("h", 1, 1), ("h", 2, 1)]).0, [("h", 2, 1)]);
        // A twin or rogue elsewhere, newer: refused, the holder stays.
        let (kept, conflicts) = run(&[("h", 1, 1), ("h", 5, 2), ("x", 3, 3)]);
        assert_eq!(kept, [("h", 1, 1), ("x", 3, 3)]);
        assert_eq!(
            conflicts,
            [NameConflict {
                name: "h".into(),
                holder: (a(1), 1),
                refused: (a(2), 5)
            }]
        );
        // The holder restarts while the rogue is still there: the restart is the holder.
        let (kept, conflicts) = run(&[("h", 5, 2), ("h", 1, 1), ("h", 9, 1)]);
        assert_eq!(kept, [("h", 9, 1)]);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].refused, (a(2), 5));
    }
}
