//! RE2's `Regexp::Simplify`: runs of repeats of one character are coalesced into one counted
//! repeat, then counted repeats are expanded into copies (`x{2,4}` → `xx(x(x)?)?`), which is
//! where most of a large program comes from.

use super::parse::{concat_of, equal, Op, Re, FOLD_CASE, NON_GREEDY};

/// The most copies a counted repeat is expanded to (see [`simplify_repeat`]).
const MAX_COPIES: usize = 200;

/// The simplified regexp, or `None` when expanding it would exceed `budget` nodes.
pub(crate) fn simplify(re: &Re, budget: usize) -> Option<Re> {
    let coalesced = coalesce(re.clone());
    let mut left = budget;
    simplify_node(coalesced, &mut left).map(|(re, _)| re)
}

/// Whether `re` is a star, plus, quest or repeat of a single character, class or any-char.
fn repeat_of_single(re: &Re) -> Option<&Re> {
    match &re.op {
        Op::Star(s) | Op::Plus(s) | Op::Quest(s) | Op::Repeat { sub: s, .. } => matches!(
            s.op,
            Op::Literal(_) | Op::CharClass(_) | Op::AnyChar | Op::AnyByte
        )
        .then_some(s),
        _ => None,
    }
}

fn can_coalesce(r1: &Re, r2: &Re) -> bool {
    let Some(sub1) = repeat_of_single(r1) else {
        return false;
    };
    let sub2 = match &r2.op {
        Op::Star(s) | Op::Plus(s) | Op::Quest(s) | Op::Repeat { sub: s, .. } => Some(s),
        _ => None,
    };
    if let Some(sub2) = sub2 {
        if equal(sub1, sub2) && (r1.flags & NON_GREEDY) == (r2.flags & NON_GREEDY) {
            return true;
        }
    }
    if equal(sub1, r2) {
        return true;
    }
    if let (Op::Literal(r), Op::LiteralString(s)) = (&sub1.op, &r2.op) {
        return s.first() == Some(r) && (sub1.flags & FOLD_CASE) == (r2.flags & FOLD_CASE);
    }
    false
}

/// Merges `r1` (a repeat of one character) with `r2` into one counted repeat: the pair
/// becomes (empty, repeat), or (repeat, rest of a literal string).
fn do_coalesce(r1: Re, r2: Re) -> (Re, Re) {
    let (sub, mut min, mut max) = match r1.op {
        Op::Star(s) => (s, 0, -1),
        Op::Plus(s) => (s, 1, -1),
        Op::Quest(s) => (s, 0, 1),
        Op::Repeat { sub, min, max } => (sub, min, max),
        _ => unreachable!("checked by can_coalesce"),
    };
    let flags = r1.flags;
    let empty = Re::new(Op::EmptyMatch, 0);
    let repeat = |sub: Box<Re>, min, max| Re::new(Op::Repeat { sub, min, max }, flags);
    match r2.op {
        Op::Star(_) => max = -1,
        Op::Plus(_) => {
            min += 1;
            max = -1;
        }
        Op::Quest(_) => {
            if max != -1 {
                max += 1;
            }
        }
        Op::Repeat {
            min: min2,
            max: max2,
            ..
        } => {
            min += min2;
            if max2 == -1 {
                max = -1;
            } else if max != -1 {
                max += max2;
            }
        }
        Op::LiteralString(runes) => {
            let Op::Literal(r) = sub.op else {
                unreachable!("checked by can_coalesce")
            };
            let n = runes.iter().take_while(|&&x| x == r).count();
            min += n as i32;
            if max != -1 {
                max += n as i32;
            }
            if n == runes.len() {
                return (empty, repeat(sub, min, max));
            }
            let rest = runes[n..].to_vec();
            let rest = if rest.len() == 1 {
                Re::new(Op::Literal(rest[0]), r2.flags)
            } else {
                Re::new(Op::LiteralString(rest), r2.flags)
            };
            return (repeat(sub, min, max), rest);
        }
        // A literal, class or any-char: one more.
        _ => {
            min += 1;
            if max != -1 {
                max += 1;
            }
        }
    }
    (empty, repeat(sub, min, max))
}

/// RE2's `CoalesceWalker`: bottom-up, merges neighbouring repeats of one character in every
/// concatenation.
fn coalesce(re: Re) -> Re {
    let flags = re.flags;
    let op = match re.op {
        Op::Concat(subs) => {
            let mut subs: Vec<Re> = subs.into_iter().map(coalesce).collect();
            if !subs.windows(2).any(|w| can_coalesce(&w[0], &w[1])) {
                return Re::new(Op::Concat(subs), flags);
            }
            for i in 0..subs.len() - 1 {
                if can_coalesce(&subs[i], &subs[i + 1]) {
                    let r1 = std::mem::replace(&mut subs[i], Re::new(Op::NoMatch, 0));
                    let r2 = std::mem::replace(&mut subs[i + 1], Re::new(Op::NoMatch, 0));
                    let (a, b) = do_coalesce(r1, r2);
                    subs[i] = a;
                    subs[i + 1] = b;
                }
            }
            subs.retain(|s| !matches!(s.op, Op::EmptyMatch));
            Op::Concat(subs)
        }
        Op::Alternate(subs) => Op::Alternate(subs.into_iter().map(coalesce).collect()),
        Op::Star(s) => Op::Star(Box::new(coalesce(*s))),
        Op::Plus(s) => Op::Plus(Box::new(coalesce(*s))),
        Op::Quest(s) => Op::Quest(Box::new(coalesce(*s))),
        Op::Repeat { sub, min, max } => Op::Repeat {
            sub: Box::new(coalesce(*sub)),
            min,
            max,
        },
        Op::Capture { sub, cap, name } => Op::Capture {
            sub: Box::new(coalesce(*sub)),
            cap,
            name,
        },
        op => op,
    };
    Re::new(op, flags)
}

/// RE2's `Regexp::Star`/`Plus`/`Quest`: `x**` is `x*`, and a star, plus or quest of another
/// one with the same flags is a star.
fn star_plus_quest(kind: u8, sub: Re, flags: u16) -> Re {
    let sub_kind = match sub.op {
        Op::Star(_) => Some(b'*'),
        Op::Plus(_) => Some(b'+'),
        Op::Quest(_) => Some(b'?'),
        _ => None,
    };
    if sub_kind == Some(kind) && flags == sub.flags {
        return sub;
    }
    if sub_kind.is_some() && flags == sub.flags {
        if sub_kind == Some(b'*') {
            return sub;
        }
        let inner = match sub.op {
            Op::Plus(s) | Op::Quest(s) => s,
            _ => unreachable!(),
        };
        return Re::new(Op::Star(inner), flags);
    }
    let b = Box::new(sub);
    let op = match kind {
        b'*' => Op::Star(b),
        b'+' => Op::Plus(b),
        _ => Op::Quest(b),
    };
    Re::new(op, flags)
}

fn is_empty_op(re: &Re) -> bool {
    matches!(
        re.op,
        Op::BeginLine
            | Op::EndLine
            | Op::WordBoundary
            | Op::NoWordBoundary
            | Op::BeginText
            | Op::EndText
    )
}

/// Rough node count of `re`, to charge expansions against the budget.
fn weight(re: &Re) -> usize {
    1 + re.subs().iter().map(weight).sum::<usize>()
        + match &re.op {
            Op::LiteralString(v) => v.len(),
            _ => 0,
        }
}

/// RE2's `SimplifyRepeat`: `x{n,m}` as n copies of `x` then nested optional copies.
fn simplify_repeat(re: Re, min: i32, max: i32, flags: u16, left: &mut usize) -> Option<Re> {
    let (mut min, mut max) = (min, max);
    // An empty-width assertion matches at most once where it matches at all.
    let all_empty = match &re.op {
        Op::Concat(s) | Op::Alternate(s) => s.iter().all(is_empty_op),
        _ => is_empty_op(&re),
    };
    if all_empty {
        min = min.min(1);
        max = max.min(1);
    }
    let copies = min.max(max).max(1) as usize;
    // Every copy compiles to at least one instruction of its own, so this many copies is
    // already far over Envoy's limit; stopping here also bounds the nesting `x{0,n}` builds.
    if copies > MAX_COPIES {
        return None;
    }
    let cost = copies.saturating_mul(weight(&re));
    *left = left.checked_sub(cost)?;
    if max == -1 {
        return Some(match min {
            0 => star_plus_quest(b'*', re, flags),
            1 => star_plus_quest(b'+', re, flags),
            _ => {
                let mut subs: Vec<Re> = (0..min - 1).map(|_| re.clone()).collect();
                subs.push(star_plus_quest(b'+', re, flags));
                concat_of(subs, flags)
            }
        });
    }
    if min == 0 && max == 0 {
        return Some(Re::new(Op::EmptyMatch, flags));
    }
    if min == 1 && max == 1 {
        return Some(re);
    }
    let mut prefix = None;
    if min > 0 {
        prefix = Some(concat_of((0..min).map(|_| re.clone()).collect(), flags));
    }
    if max > min {
        let mut suffix = star_plus_quest(b'?', re.clone(), flags);
        for _ in min + 1..max {
            let pair = Re::new(Op::Concat(vec![re.clone(), suffix]), flags);
            suffix = star_plus_quest(b'?', pair, flags);
        }
        prefix = Some(match prefix {
            None => suffix,
            Some(p) => Re::new(Op::Concat(vec![p, suffix]), flags),
        });
    }
    Some(prefix.unwrap_or_else(|| Re::new(Op::NoMatch, flags)))
}

/// RE2's `SimplifyWalker`, bottom-up. Returns the node and whether it changed.
fn simplify_node(re: Re, left: &mut usize) -> Option<(Re, bool)> {
    let flags = re.flags;
    Some(match re.op {
        Op::Concat(subs) => {
            let (subs, changed) = simplify_all(subs, left)?;
            (Re::new(Op::Concat(subs), flags), changed)
        }
        Op::Alternate(subs) => {
            let (subs, changed) = simplify_all(subs, left)?;
            (Re::new(Op::Alternate(subs), flags), changed)
        }
        Op::Capture { sub, cap, name } => {
            let (sub, changed) = simplify_node(*sub, left)?;
            (
                Re::new(
                    Op::Capture {
                        sub: Box::new(sub),
                        cap,
                        name,
                    },
                    flags,
                ),
                changed,
            )
        }
        op @ (Op::Star(_) | Op::Plus(_) | Op::Quest(_)) => {
            let (kind, sub) = match op {
                Op::Star(s) => (b'*', s),
                Op::Plus(s) => (b'+', s),
                Op::Quest(s) => (b'?', s),
                _ => unreachable!(),
            };
            let (sub, changed) = simplify_node(*sub, left)?;
            // Repeating the empty string is the empty string.
            if matches!(sub.op, Op::EmptyMatch) {
                return Some((sub, true));
            }
            let same_kind = matches!(
                (kind, &sub.op),
                (b'*', Op::Star(_)) | (b'+', Op::Plus(_)) | (b'?', Op::Quest(_))
            );
            if changed && same_kind && sub.flags == flags {
                return Some((sub, true));
            }
            let b = Box::new(sub);
            let op = match kind {
                b'*' => Op::Star(b),
                b'+' => Op::Plus(b),
                _ => Op::Quest(b),
            };
            (Re::new(op, flags), changed)
        }
        Op::Repeat { sub, min, max } => {
            let (sub, _) = simplify_node(*sub, left)?;
            if matches!(sub.op, Op::EmptyMatch) {
                return Some((sub, true));
            }
            (simplify_repeat(sub, min, max, flags, left)?, true)
        }
        Op::CharClass(cc) => {
            if cc.ranges.is_empty() {
                (Re::new(Op::NoMatch, flags), true)
            } else if cc.size() == 0x11_0000 {
                (Re::new(Op::AnyChar, flags), true)
            } else {
                (Re::new(Op::CharClass(cc), flags), false)
            }
        }
        op => (Re::new(op, flags), false),
    })
}

fn simplify_all(subs: Vec<Re>, left: &mut usize) -> Option<(Vec<Re>, bool)> {
    let mut changed = false;
    let mut out = Vec::with_capacity(subs.len());
    for s in subs {
        let (s, c) = simplify_node(s, left)?;
        changed |= c;
        out.push(s);
    }
    Some((out, changed))
}
