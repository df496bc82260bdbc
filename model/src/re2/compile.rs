//! RE2's compiler (Latin-1), its peephole optimizer and its flattening. The flattened program
//! is what `RE2::ProgramSize` counts: every instruction that can follow an epsilon path from a
//! "root" is copied into that root's list, so the count depends on the exact instruction graph,
//! and the graph is built here in the same order and shape as RE2 builds it.

use std::collections::{HashMap, HashSet};

use super::parse::{concat_of, Op, Re, NON_GREEDY};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Fail,
    Alt,
    AltMatch,
    ByteRange,
    Capture,
    EmptyWidth,
    Match,
    Nop,
}

#[derive(Debug, Clone, Copy)]
struct Inst {
    code: Code,
    out: u32,
    out1: u32,
    lo: u8,
    hi: u8,
}

/// A list of holes (`inst << 1 | is_out1`) still to be pointed at the next fragment, threaded
/// through the holes themselves as RE2 does.
#[derive(Debug, Clone, Copy, Default)]
struct PatchList {
    head: u32,
    tail: u32,
}

impl PatchList {
    fn mk(p: u32) -> PatchList {
        PatchList { head: p, tail: p }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Frag {
    begin: u32,
    end: PatchList,
    nullable: bool,
}

struct Compiler {
    inst: Vec<Inst>,
    budget: usize,
    failed: bool,
}

impl Compiler {
    fn alloc(&mut self, code: Code) -> u32 {
        if self.inst.len() >= self.budget {
            self.failed = true;
            return 0;
        }
        self.inst.push(Inst {
            code,
            out: 0,
            out1: 0,
            lo: 0,
            hi: 0,
        });
        (self.inst.len() - 1) as u32
    }

    fn patch(&mut self, l: PatchList, p: u32) {
        let mut head = l.head;
        while head != 0 {
            let ip = &mut self.inst[(head >> 1) as usize];
            if head & 1 != 0 {
                head = ip.out1;
                ip.out1 = p;
            } else {
                head = ip.out;
                ip.out = p;
            }
        }
    }

    fn append(&mut self, l1: PatchList, l2: PatchList) -> PatchList {
        if l1.head == 0 {
            return l2;
        }
        if l2.head == 0 {
            return l1;
        }
        let ip = &mut self.inst[(l1.tail >> 1) as usize];
        if l1.tail & 1 != 0 {
            ip.out1 = l2.head;
        } else {
            ip.out = l2.head;
        }
        PatchList {
            head: l1.head,
            tail: l2.tail,
        }
    }

    fn cat(&mut self, a: Frag, b: Frag) -> Frag {
        if a.begin == 0 || b.begin == 0 {
            return Frag::default();
        }
        // A bare no-op in front disappears.
        let first = self.inst[a.begin as usize];
        if first.code == Code::Nop && a.end.head == a.begin << 1 && first.out == 0 {
            self.patch(a.end, b.begin);
            return b;
        }
        self.patch(a.end, b.begin);
        Frag {
            begin: a.begin,
            end: b.end,
            nullable: a.nullable && b.nullable,
        }
    }

    fn alt(&mut self, a: Frag, b: Frag) -> Frag {
        if a.begin == 0 {
            return b;
        }
        if b.begin == 0 {
            return a;
        }
        let id = self.alloc(Code::Alt);
        if self.failed {
            return Frag::default();
        }
        self.inst[id as usize].out = a.begin;
        self.inst[id as usize].out1 = b.begin;
        let end = self.append(a.end, b.end);
        Frag {
            begin: id,
            end,
            nullable: a.nullable || b.nullable,
        }
    }

    /// An Alt whose loop branch goes to `target`; the other branch is the returned hole.
    fn loop_alt(&mut self, target: u32, nongreedy: bool) -> (u32, PatchList) {
        let id = self.alloc(Code::Alt);
        if self.failed {
            return (0, PatchList::default());
        }
        if nongreedy {
            self.inst[id as usize].out1 = target;
            (id, PatchList::mk(id << 1))
        } else {
            self.inst[id as usize].out = target;
            (id, PatchList::mk((id << 1) | 1))
        }
    }

    fn plus(&mut self, a: Frag, nongreedy: bool) -> Frag {
        let (id, pl) = self.loop_alt(a.begin, nongreedy);
        if self.failed {
            return Frag::default();
        }
        self.patch(a.end, id);
        Frag {
            begin: a.begin,
            end: pl,
            nullable: a.nullable,
        }
    }

    fn star(&mut self, a: Frag, nongreedy: bool) -> Frag {
        // A nullable body needs a second Alt to keep priorities right: (a+)?.
        if a.nullable {
            let p = self.plus(a, nongreedy);
            return self.quest(p, nongreedy);
        }
        let (id, pl) = self.loop_alt(a.begin, nongreedy);
        if self.failed {
            return Frag::default();
        }
        self.patch(a.end, id);
        Frag {
            begin: id,
            end: pl,
            nullable: true,
        }
    }

    fn quest(&mut self, a: Frag, nongreedy: bool) -> Frag {
        if a.begin == 0 {
            return self.nop();
        }
        let (id, pl) = self.loop_alt(a.begin, nongreedy);
        if self.failed {
            return Frag::default();
        }
        let end = self.append(pl, a.end);
        Frag {
            begin: id,
            end,
            nullable: true,
        }
    }

    fn byte_range(&mut self, lo: u32, hi: u32) -> Frag {
        let id = self.alloc(Code::ByteRange);
        if self.failed {
            return Frag::default();
        }
        self.inst[id as usize].lo = lo.min(0xFF) as u8;
        self.inst[id as usize].hi = hi.min(0xFF) as u8;
        Frag {
            begin: id,
            end: PatchList::mk(id << 1),
            nullable: false,
        }
    }

    fn simple(&mut self, code: Code, nullable: bool) -> Frag {
        let id = self.alloc(code);
        if self.failed {
            return Frag::default();
        }
        Frag {
            begin: id,
            end: PatchList::mk(id << 1),
            nullable,
        }
    }

    fn nop(&mut self) -> Frag {
        self.simple(Code::Nop, true)
    }

    fn matcher(&mut self) -> Frag {
        let id = self.alloc(Code::Match);
        Frag {
            begin: id,
            end: PatchList::default(),
            nullable: false,
        }
    }

    fn capture(&mut self, a: Frag) -> Frag {
        if a.begin == 0 {
            return Frag::default();
        }
        let id = self.alloc(Code::Capture);
        let id1 = self.alloc(Code::Capture);
        if self.failed {
            return Frag::default();
        }
        self.inst[id as usize].out = a.begin;
        self.patch(a.end, id1);
        Frag {
            begin: id,
            end: PatchList::mk(id1 << 1),
            nullable: a.nullable,
        }
    }

    /// A class as an Alt chain of byte ranges, one per range. When the class treats A-Z
    /// like a-z, the A-Z ranges are dropped and the others match case-insensitively.
    fn class(&mut self, ranges: &[(u32, u32)], folds_ascii: bool) -> Frag {
        let (upper_a, upper_z) = (u32::from(b'A'), u32::from(b'Z'));
        let mut begin = 0u32;
        let mut end = PatchList::default();
        for &(lo, hi) in ranges {
            if folds_ascii && upper_a <= lo && hi <= upper_z {
                continue;
            }
            if lo > 0xFF {
                continue;
            }
            let f = self.byte_range(lo, hi);
            if self.failed {
                return Frag::default();
            }
            end = self.append(end, f.end);
            if begin == 0 {
                begin = f.begin;
            } else {
                let alt = self.alloc(Code::Alt);
                if self.failed {
                    return Frag::default();
                }
                self.inst[alt as usize].out = begin;
                self.inst[alt as usize].out1 = f.begin;
                begin = alt;
            }
        }
        Frag {
            begin,
            end,
            nullable: false,
        }
    }

    fn walk(&mut self, re: &Re) -> Frag {
        if self.failed {
            return Frag::default();
        }
        let nongreedy = re.flags & NON_GREEDY != 0;
        match &re.op {
            Op::NoMatch => Frag::default(),
            Op::EmptyMatch => self.nop(),
            Op::Concat(subs) => {
                let mut frags = subs
                    .iter()
                    .map(|s| self.walk(s))
                    .collect::<Vec<_>>()
                    .into_iter();
                let Some(mut f) = frags.next() else {
                    return self.nop();
                };
                for g in frags {
                    f = self.cat(f, g);
                }
                f
            }
            Op::Alternate(subs) => {
                let mut frags = subs
                    .iter()
                    .map(|s| self.walk(s))
                    .collect::<Vec<_>>()
                    .into_iter();
                let Some(mut f) = frags.next() else {
                    return Frag::default();
                };
                for g in frags {
                    f = self.alt(f, g);
                }
                f
            }
            Op::Star(s) => {
                let f = self.walk(s);
                self.star(f, nongreedy)
            }
            Op::Plus(s) => {
                let f = self.walk(s);
                self.plus(f, nongreedy)
            }
            Op::Quest(s) => {
                let f = self.walk(s);
                self.quest(f, nongreedy)
            }
            Op::Literal(r) => self.byte_range(*r, *r),
            Op::LiteralString(runes) => {
                let mut f: Option<Frag> = None;
                for &r in runes {
                    let g = self.byte_range(r, r);
                    f = Some(match f {
                        None => g,
                        Some(f) => self.cat(f, g),
                    });
                }
                f.unwrap_or_else(|| self.nop())
            }
            Op::AnyChar | Op::AnyByte => self.byte_range(0x00, 0xFF),
            Op::CharClass(cc) => self.class(&cc.ranges, cc.folds_ascii()),
            Op::Capture { sub, cap, .. } => {
                let f = self.walk(sub);
                if *cap < 0 {
                    f
                } else {
                    self.capture(f)
                }
            }
            Op::BeginLine
            | Op::EndLine
            | Op::BeginText
            | Op::EndText
            | Op::WordBoundary
            | Op::NoWordBoundary => self.simple(Code::EmptyWidth, true),
            // Repeats are gone after simplification; markers never leave the parser.
            Op::Repeat { .. } | Op::LeftParen { .. } | Op::VerticalBar => {
                self.failed = true;
                Frag::default()
            }
        }
    }
}

/// Removes a leading `^` (RE2's `IsAnchorStart`, which looks four levels deep): the program
/// is then anchored and needs no leading `.*?` loop.
fn strip_anchor(re: &mut Re, depth: u32, start: bool) -> bool {
    if depth >= 4 {
        return false;
    }
    let flags = re.flags;
    match &mut re.op {
        Op::Concat(subs) if !subs.is_empty() => {
            let i = if start { 0 } else { subs.len() - 1 };
            if strip_anchor(&mut subs[i], depth + 1, start) {
                let subs = std::mem::take(subs);
                *re = concat_of(subs, flags);
                return true;
            }
            false
        }
        Op::Capture { sub, .. } => strip_anchor(sub, depth + 1, start),
        Op::BeginText if start => {
            *re = Re::new(Op::EmptyMatch, flags);
            true
        }
        Op::EndText if !start => {
            *re = Re::new(Op::EmptyMatch, flags);
            true
        }
        _ => false,
    }
}

/// The flattened size of the program for the simplified regexp `re`, or `None` past
/// `budget` instructions.
pub(crate) fn program_size(mut re: Re, budget: usize) -> Option<usize> {
    let anchor_start = strip_anchor(&mut re, 0, true);
    // The end anchor only changes how the program is run, not its shape.
    strip_anchor(&mut re, 0, false);
    let mut c = Compiler {
        inst: Vec::new(),
        budget,
        failed: false,
    };
    c.alloc(Code::Fail);
    let all = c.walk(&re);
    let m = c.matcher();
    let all = c.cat(all, m);
    let start = all.begin;
    let mut start_unanchored = start;
    if !anchor_start {
        let any = c.byte_range(0x00, 0xFF);
        let dot_star = c.star(any, true);
        start_unanchored = c.cat(dot_star, all).begin;
    }
    if c.failed {
        return None;
    }
    if start == 0 && start_unanchored == 0 {
        // Nothing can match: only the Fail instruction is kept.
        return Some(1);
    }
    optimize(&mut c.inst, start);
    Some(flatten(&c.inst, start, start_unanchored))
}

/// An insertion-ordered set of instruction ids (RE2's `SparseSet`).
#[derive(Default)]
struct OrderedSet {
    order: Vec<u32>,
    seen: HashSet<u32>,
}

impl OrderedSet {
    fn insert(&mut self, id: u32) -> bool {
        if self.seen.insert(id) {
            self.order.push(id);
            true
        } else {
            false
        }
    }

    fn contains(&self, id: u32) -> bool {
        self.seen.contains(&id)
    }

    fn clear(&mut self) {
        self.order.clear();
        self.seen.clear();
    }
}

/// RE2's `Prog::Optimize`: skips no-ops reachable from `start`, and marks `.*` loops before
/// a match as AltMatch (which flattening emits as one more instruction).
fn optimize(inst: &mut [Inst], start: u32) {
    let skip_nops = |inst: &[Inst], mut j: u32| {
        while j != 0 && inst[j as usize].code == Code::Nop {
            j = inst[j as usize].out;
        }
        j
    };
    let mut q = OrderedSet::default();
    if start != 0 {
        q.insert(start);
    }
    let mut k = 0;
    while k < q.order.len() {
        let id = q.order[k] as usize;
        k += 1;
        let out = skip_nops(inst, inst[id].out);
        inst[id].out = out;
        if out != 0 {
            q.insert(out);
        }
        if inst[id].code == Code::Alt {
            let out1 = skip_nops(inst, inst[id].out1);
            inst[id].out1 = out1;
            if out1 != 0 {
                q.insert(out1);
            }
        }
    }

    let is_match = |inst: &[Inst], mut id: u32| loop {
        match inst[id as usize].code {
            Code::Capture | Code::Nop => id = inst[id as usize].out,
            Code::Match => return true,
            _ => return false,
        }
    };
    let any_loop = |inst: &[Inst], j: u32, id: u32| {
        let j = &inst[j as usize];
        j.code == Code::ByteRange && j.out == id && j.lo == 0x00 && j.hi == 0xFF
    };
    q.clear();
    if start != 0 {
        q.insert(start);
    }
    let mut k = 0;
    while k < q.order.len() {
        let id = q.order[k];
        k += 1;
        let ip = inst[id as usize];
        if ip.out != 0 {
            q.insert(ip.out);
        }
        if ip.code == Code::Alt && ip.out1 != 0 {
            q.insert(ip.out1);
        }
        if ip.code == Code::Alt
            && ((any_loop(inst, ip.out, id) && is_match(inst, ip.out1))
                || (is_match(inst, ip.out) && any_loop(inst, ip.out1, id)))
        {
            inst[id as usize].code = Code::AltMatch;
        }
    }
}

/// RE2's `Prog::Flatten`, counting instead of emitting: the number of instructions of the
/// flattened program.
fn flatten(inst: &[Inst], start: u32, start_unanchored: u32) -> usize {
    // Roots, in the order RE2 numbers them.
    let mut roots = OrderedSet::default();
    roots.insert(0);
    roots.insert(start_unanchored);
    roots.insert(start);

    // Successor roots, and the Alt predecessors of every instruction.
    let mut preds: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut reachable = OrderedSet::default();
    let mut stack = vec![start_unanchored];
    while let Some(mut id) = stack.pop() {
        loop {
            if !reachable.insert(id) {
                break;
            }
            let ip = inst[id as usize];
            match ip.code {
                Code::Alt | Code::AltMatch => {
                    preds.entry(ip.out).or_default().push(id);
                    preds.entry(ip.out1).or_default().push(id);
                    stack.push(ip.out1);
                    id = ip.out;
                }
                Code::ByteRange | Code::Capture | Code::EmptyWidth => {
                    roots.insert(ip.out);
                    id = ip.out;
                }
                Code::Nop => id = ip.out,
                Code::Match | Code::Fail => break,
            }
        }
    }

    // Dominator roots: an instruction reached by epsilon from a root, but also from an Alt
    // outside that root's tree, becomes a root of its own.
    let mut sorted = roots.order.clone();
    sorted.sort_unstable();
    for &root in sorted.iter().skip(1).rev() {
        if root == start_unanchored || root == start {
            continue;
        }
        reachable.clear();
        let mut stack = vec![root];
        while let Some(mut id) = stack.pop() {
            loop {
                if !reachable.insert(id) {
                    break;
                }
                if id != root && roots.contains(id) {
                    break;
                }
                let ip = inst[id as usize];
                match ip.code {
                    Code::Alt | Code::AltMatch => {
                        stack.push(ip.out1);
                        id = ip.out;
                    }
                    Code::Nop => id = ip.out,
                    _ => break,
                }
            }
        }
        for &id in &reachable.order {
            if let Some(ps) = preds.get(&id) {
                if ps.iter().any(|p| !reachable.contains(*p)) {
                    roots.insert(id);
                }
            }
        }
    }

    // Each root's list: the instructions reachable by epsilon, with one Nop for each other
    // root reached (and one extra instruction for an AltMatch).
    let mut size = 0;
    for &root in &roots.order {
        reachable.clear();
        let mut stack = vec![root];
        while let Some(mut id) = stack.pop() {
            loop {
                if !reachable.insert(id) {
                    break;
                }
                if id != root && roots.contains(id) {
                    size += 1;
                    break;
                }
                let ip = inst[id as usize];
                match ip.code {
                    Code::AltMatch => {
                        size += 1;
                        stack.push(ip.out1);
                        id = ip.out;
                    }
                    Code::Alt => {
                        stack.push(ip.out1);
                        id = ip.out;
                    }
                    Code::Nop => id = ip.out,
                    Code::ByteRange
                    | Code::Capture
                    | Code::EmptyWidth
                    | Code::Match
                    | Code::Fail => {
                        size += 1;
                        break;
                    }
                }
            }
        }
    }
    size
}
