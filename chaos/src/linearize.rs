//! A small linearizability checker for read/write registers, in the style of Knossos and
//! Porcupine (the Wing–Gong search with Lowe's memoization of (linearized set, state) pairs).
//!
//! Why it exists: the chaos suite records every register operation with the time it was
//! invoked and the time it completed, and "reads never go back in time" is only meaningful as
//! "some order of the operations, consistent with real time, explains every read". Keys are
//! independent, so the caller checks one register at a time (P-compositionality), which keeps
//! each search small.
//!
//! An operation whose outcome is unknown (a write that timed out or failed in a way that does
//! not prove it was not applied) has no completion time: it may take effect at any point after
//! its invocation, or never. [`check_register`] drops unknown writes that no read observed
//! (they may simply not have happened, and dropping them cannot hide a violation), which keeps
//! the number of forever-pending operations small.

use std::collections::HashSet;

/// What an operation did to (or saw in) the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wrote this value.
    Write(u64),
    /// Read this value.
    Read(u64),
}

/// One operation on one register, with its real-time interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegOp {
    /// What it did.
    pub action: Action,
    /// When the client invoked it (any monotonic clock, same for every operation).
    pub invoke: u64,
    /// When the client saw it complete; `None` when the outcome is unknown.
    pub complete: Option<u64>,
}

/// The answer of [`check_register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some real-time-respecting order of the operations explains every read.
    Linearizable,
    /// No order does; the text names the operations the search could not place.
    Violation(String),
    /// The search gave up after its step budget (too many concurrent operations).
    Undecided,
}

/// Steps after which the search gives up and answers [`Verdict::Undecided`].
pub const STEP_BUDGET: u64 = 20_000_000;

/// Checks that `ops` on one register that held `initial` before any of them is linearizable.
pub fn check_register(initial: u64, ops: &[RegOp]) -> Verdict {
    let observed: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.action {
            Action::Read(v) => Some(v),
            Action::Write(_) => None,
        })
        .collect();
    let kept: Vec<RegOp> = ops
        .iter()
        .copied()
        .filter(|o| match o.action {
            Action::Write(v) => o.complete.is_some() || observed.contains(&v),
            Action::Read(_) => true,
        })
        .collect();
    search(initial, &kept)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    time: u64,
}

/// The Wing–Gong search over a doubly linked list of call/return entries.
fn search(initial: u64, ops: &[RegOp]) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        entries.push(Entry {
            op: i,
            is_call: true,
            time: o.invoke,
        });
        entries.push(Entry {
            op: i,
            is_call: false,
            time: o.complete.unwrap_or(u64::MAX),
        });
    }
    // Calls sort before returns at the same time: operations that touch are concurrent.
    entries.sort_by_key(|e| (e.time, !e.is_call));
    // Linked list over entry indices; index `len` is the head sentinel.
    let len = entries.len();
    let head = len;
    let mut next: Vec<usize> = (1..=len).collect(); // next[len-1] = len means end
    next.push(0);
    // prev[i] = i - 1, the first entry's is the head.
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..len).collect();
    let end = len; // the head doubles as the end marker
    let mut call_of = vec![0usize; n];
    let mut ret_of = vec![0usize; n];
    for (idx, e) in entries.iter().enumerate() {
        if e.is_call {
            call_of[e.op] = idx;
        } else {
            ret_of[e.op] = idx;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, idx: usize| {
        let (p, nx) = (prev[idx], next[idx]);
        next[p] = nx;
        if nx != end {
            prev[nx] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, idx: usize| {
        let (p, nx) = (prev[idx], next[idx]);
        next[p] = idx;
        if nx != end {
            prev[nx] = idx;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, u64)> = HashSet::new();
    let mut stack: Vec<(usize, u64)> = Vec::new();
    let mut state = initial;
    let mut entry = next[head];
    let mut steps: u64 = 0;
    let mut deepest = 0usize;
    loop {
        steps += 1;
        if steps > STEP_BUDGET {
            return Verdict::Undecided;
        }
        if next[head] == end {
            return Verdict::Linearizable;
        }
        let e = entries[entry];
        if e.is_call {
            let (ok, new_state) = match ops[e.op].action {
                Action::Write(v) => (true, v),
                Action::Read(v) => (v == state, state),
            };
            let mut fresh = false;
            if ok {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                fresh = cache.insert((linearized.clone(), new_state));
                if !fresh {
                    linearized[e.op / 64] &= !(1 << (e.op % 64));
                }
            }
            if ok && fresh {
                stack.push((e.op, state));
                deepest = deepest.max(stack.len());
                state = new_state;
                lift(&mut next, &mut prev, call_of[e.op]);
                lift(&mut next, &mut prev, ret_of[e.op]);
                entry = next[head];
            } else {
                entry = next[entry];
            }
        } else {
            // A return reached while its call is not linearized: undo the last choice.
            let Some((op, old)) = stack.pop() else {
                return Verdict::Violation(describe_stuck(ops, e.op, deepest));
            };
            state = old;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut next, &mut prev, ret_of[op]);
            unlift(&mut next, &mut prev, call_of[op]);
            entry = next[call_of[op]];
        }
    }
}

fn describe_stuck(ops: &[RegOp], op: usize, deepest: usize) -> String {
    let o = ops[op];
    format!(
        "no linearization: {:?} invoked at {} and completed at {:?} cannot be placed \
         (at most {deepest} of {} operations linearized)",
        o.action,
        o.invoke,
        o.complete,
        ops.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: u64, a: u64, b: u64) -> RegOp {
        RegOp {
            action: Action::Write(v),
            invoke: a,
            complete: Some(b),
        }
    }
    fn r(v: u64, a: u64, b: u64) -> RegOp {
        RegOp {
            action: Action::Read(v),
            invoke: a,
            complete: Some(b),
        }
    }
    fn unknown_write(v: u64, a: u64) -> RegOp {
        RegOp {
            action: Action::Write(v),
            invoke: a,
            complete: None,
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_eq!(check_register(0, &[]), Verdict::Linearizable);
        let h = [r(0, 1, 2), w(1, 3, 4), r(1, 5, 6), w(2, 7, 8), r(2, 9, 10)];
        assert_eq!(check_register(0, &h), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        // The read overlaps the write: old or new value are both fine.
        assert_eq!(
            check_register(0, &[w(1, 10, 20), r(0, 12, 18)]),
            Verdict::Linearizable
        );
        assert_eq!(
            check_register(0, &[w(1, 10, 20), r(1, 12, 18)]),
            Verdict::Linearizable
        );
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_rejected() {
        // The write completed before the read began, yet the read saw the old value.
        let v = check_register(0, &[w(1, 1, 2), r(0, 3, 4)]);
        assert!(matches!(v, Verdict::Violation(_)), "{v:?}");
    }

    #[test]
    fn read_going_back_in_time_is_rejected() {
        // Two reads in sequence see 2 then 1, though 1 was written strictly before 2.
        let h = [w(1, 1, 2), w(2, 3, 4), r(2, 5, 6), r(1, 7, 8)];
        let v = check_register(0, &h);
        assert!(matches!(v, Verdict::Violation(_)), "{v:?}");
    }

    #[test]
    fn read_from_the_future_is_rejected() {
        // The read returned before the write of its value was invoked.
        let v = check_register(0, &[r(5, 1, 2), w(5, 3, 4)]);
        assert!(matches!(v, Verdict::Violation(_)), "{v:?}");
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        // Observed long after its invocation: fine (it may have been applied late).
        let h = [unknown_write(7, 1), w(8, 2, 3), r(8, 4, 5), r(7, 6, 7)];
        assert_eq!(check_register(0, &h), Verdict::Linearizable);
        // Never observed: dropped, and the rest must still be explained.
        let h = [unknown_write(7, 1), r(0, 2, 3)];
        assert_eq!(check_register(0, &h), Verdict::Linearizable);
        // But once seen, it cannot be unseen by a later read of an older write.
        let h = [w(1, 0, 1), unknown_write(7, 2), r(7, 3, 4), r(1, 5, 6)];
        let v = check_register(0, &h);
        assert!(matches!(v, Verdict::Violation(_)), "{v:?}");
    }

    #[test]
    fn many_concurrent_operations_are_checked_quickly() {
        // 3 clients, 600 operations with overlapping intervals, a real linearizable history:
        // the true order is by "effect" time, inside each interval.
        let mut ops = Vec::new();
        let mut state = 0;
        for i in 0..600u64 {
            let t = i * 10;
            if i % 3 == 0 {
                state = i + 1;
                ops.push(w(state, t.saturating_sub(12), t + 12));
            } else {
                ops.push(r(state, t.saturating_sub(12), t + 12));
            }
        }
        assert_eq!(check_register(0, &ops), Verdict::Linearizable);
        // Make one read in the middle see a value two writes old: rejected.
        ops[301] = r(ops[294].action_value(), 3010 - 12, 3010 + 12);
        let v = check_register(0, &ops);
        assert!(matches!(v, Verdict::Violation(_)), "{v:?}");
    }

    impl RegOp {
        fn action_value(&self) -> u64 {
            match self.action {
                Action::Write(v) | Action::Read(v) => v,
            }
        }
    }
}
