//! The checks run on a scenario's recorded history: linearizability of every register, no
//! acknowledged write lost, and at most one leader per term.
//!
//! Why separate from the runner: these are pure functions of the history, unit-tested here
//! with histories that must pass and histories that must be rejected.

use std::collections::{BTreeMap, BTreeSet};

use crate::linearize::{check_register, Action, RegOp, Verdict};
use crate::workload::{Op, Sample};

/// A register's value as read at one moment outside the workload (the initial and final
/// reads of a scenario), with the read's interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The value read.
    pub value: u64,
    /// When the read was invoked.
    pub invoke: u64,
    /// When it completed.
    pub complete: u64,
}

/// What the register checks found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterReport {
    /// Acknowledged writes.
    pub acked: u64,
    /// Writes whose outcome is unknown.
    pub unknown: u64,
    /// Successful reads checked (the workload's and the final reads).
    pub reads: u64,
    /// Acknowledged writes the final state contradicts.
    pub lost: Vec<String>,
    /// Linearizability violations, one per register.
    pub violations: Vec<String>,
    /// Registers the checker gave up on.
    pub undecided: Vec<usize>,
}

/// Checks every register: `initial[i]` was read before any operation of `ops` was invoked,
/// `last[i]` after every one completed (or was abandoned).
pub fn check_registers(initial: &[Snapshot], ops: &[Op], last: &[Snapshot]) -> RegisterReport {
    let mut rep = RegisterReport::default();
    for (reg, (init, fin)) in initial.iter().zip(last).enumerate() {
        let mine: Vec<&Op> = ops.iter().filter(|o| o.register == reg).collect();
        let mut h: Vec<RegOp> = Vec::new();
        for o in &mine {
            if o.write {
                if o.complete.is_some() {
                    rep.acked += 1;
                } else {
                    rep.unknown += 1;
                }
            } else {
                rep.reads += 1;
            }
            h.push(RegOp {
                action: if o.write {
                    Action::Write(o.value)
                } else {
                    Action::Read(o.value)
                },
                invoke: o.invoke,
                complete: o.complete,
            });
        }
        h.push(RegOp {
            action: Action::Read(fin.value),
            invoke: fin.invoke,
            complete: Some(fin.complete),
        });
        rep.reads += 1;
        match check_register(init.value, &h) {
            Verdict::Linearizable => {}
            Verdict::Violation(m) => rep.violations.push(format!("reg-{reg}: {m}")),
            Verdict::Undecided => rep.undecided.push(reg),
        }
        // Lost writes: the final value was written by `w`; every acknowledged write invoked
        // after `w` completed must have been ordered after it, so it cannot be overwritten by
        // `w` — the final value should be it or newer.
        let writer_done = if fin.value == init.value {
            Some(init.complete)
        } else {
            mine.iter()
                .find(|o| o.write && o.value == fin.value)
                .map(|o| o.complete.unwrap_or(u64::MAX))
        };
        match writer_done {
            None => rep.lost.push(format!(
                "reg-{reg}: final value {} was never written in this scenario",
                fin.value
            )),
            Some(done) => {
                for o in mine.iter().filter(|o| o.write && o.complete.is_some()) {
                    if o.invoke > done && o.value != fin.value {
                        rep.lost.push(format!(
                            "reg-{reg}: write of {} acknowledged at {} ns is not in the final \
                             state (final value {} was written before it began)",
                            o.value,
                            o.complete.unwrap_or(0),
                            fin.value
                        ));
                    }
                }
            }
        }
    }
    rep
}

/// Terms in which more than one server claimed leadership, or servers named different leaders.
pub fn check_terms(samples: &[Sample]) -> Vec<String> {
    let mut claims: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut named: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for s in samples {
        if let Some(l) = s.leader {
            named.entry(s.term).or_default().insert(l);
            if l == s.node {
                claims.entry(s.term).or_default().insert(s.node);
            }
        }
    }
    let mut out = Vec::new();
    for (term, who) in &claims {
        if who.len() > 1 {
            out.push(format!(
                "term {term}: servers {who:?} each claimed leadership"
            ));
        }
    }
    for (term, who) in &named {
        if who.len() > 1 && claims.get(term).is_none_or(|c| c.len() <= 1) {
            out.push(format!(
                "term {term}: servers named different leaders {who:?}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(register: usize, write: bool, value: u64, a: u64, b: Option<u64>) -> Op {
        Op {
            register,
            write,
            value,
            invoke: a,
            complete: b,
            server: 1,
        }
    }
    fn snap(value: u64, a: u64, b: u64) -> Snapshot {
        Snapshot {
            value,
            invoke: a,
            complete: b,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = [
            op(0, true, 5, 10, Some(20)),
            op(0, false, 5, 25, Some(30)),
            op(0, true, 6, 31, None), // unknown, never seen: may not have happened
        ];
        let r = check_registers(&[snap(0, 0, 1)], &ops, &[snap(5, 100, 101)]);
        assert!(r.violations.is_empty() && r.lost.is_empty(), "{r:?}");
        assert_eq!((r.acked, r.unknown, r.reads), (1, 1, 2));
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        // 7 acknowledged after 5 was done, but the final read shows 5.
        let ops = [op(0, true, 5, 10, Some(20)), op(0, true, 7, 30, Some(40))];
        let r = check_registers(&[snap(0, 0, 1)], &ops, &[snap(5, 100, 101)]);
        assert_eq!(r.lost.len(), 1, "{r:?}");
        assert_eq!(r.violations.len(), 1, "{r:?}");
    }

    #[test]
    fn a_final_value_nobody_wrote_is_reported() {
        let r = check_registers(&[snap(0, 0, 1)], &[], &[snap(9, 100, 101)]);
        assert_eq!(r.lost.len(), 1, "{r:?}");
    }

    #[test]
    fn two_leaders_in_one_term_are_reported() {
        let s = |node, term, leader| Sample {
            at: 0,
            node,
            term,
            leader: Some(leader),
        };
        assert!(check_terms(&[s(1, 3, 1), s(2, 3, 1), s(3, 4, 3)]).is_empty());
        assert_eq!(check_terms(&[s(1, 3, 1), s(2, 3, 2)]).len(), 1);
        assert_eq!(check_terms(&[s(1, 3, 2), s(3, 3, 3)]).len(), 1);
    }
}
