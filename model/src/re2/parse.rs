//! RE2's parser in Latin-1 mode: the same grammar, the same errors and the same parse tree
//! (literal strings, factored alternations, single-character classes turned into literals),
//! because the program RE2 compiles — and so its size — follows from that tree.

use std::fmt;

use super::groups;

// RE2's parse flags (`Regexp::ParseFlags`), as far as Envoy's options set them.
pub(crate) const FOLD_CASE: u16 = 1 << 0;
const CLASS_NL: u16 = 1 << 2;
const DOT_NL: u16 = 1 << 3;
const ONE_LINE: u16 = 1 << 4;
const LATIN1: u16 = 1 << 5;
pub(crate) const NON_GREEDY: u16 = 1 << 6;
const PERL_CLASSES: u16 = 1 << 7;
const PERL_B: u16 = 1 << 8;
const PERL_X: u16 = 1 << 9;
const UNICODE_GROUPS: u16 = 1 << 10;
const WAS_DOLLAR: u16 = 1 << 13;
/// What `RE2::Options` without POSIX syntax gives, plus Latin-1 (see the module docs).
const ENVOY_FLAGS: u16 =
    CLASS_NL | ONE_LINE | PERL_CLASSES | PERL_B | PERL_X | UNICODE_GROUPS | LATIN1;

/// The largest rune of the encoding: Latin-1.
const RUNE_MAX: u32 = 0xFF;
/// The largest Unicode code point, which negated classes and groups start from.
const UNICODE_MAX: u32 = 0x10_FFFF;
/// RE2's limit on a counted repetition (and on nested repetitions multiplied).
const MAX_REPEAT: i32 = 1000;

/// A node of the parse tree (RE2's `Regexp`), with the flags it was parsed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Re {
    pub op: Op,
    pub flags: u16,
}

/// RE2's regexp operators, plus the two markers that only live on the parse stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    NoMatch,
    EmptyMatch,
    Literal(u32),
    LiteralString(Vec<u32>),
    Concat(Vec<Re>),
    Alternate(Vec<Re>),
    Star(Box<Re>),
    Plus(Box<Re>),
    Quest(Box<Re>),
    Repeat {
        sub: Box<Re>,
        min: i32,
        max: i32,
    },
    Capture {
        sub: Box<Re>,
        cap: i32,
        name: Option<String>,
    },
    AnyChar,
    AnyByte,
    BeginLine,
    EndLine,
    WordBoundary,
    NoWordBoundary,
    BeginText,
    EndText,
    CharClass(Class),
    LeftParen {
        cap: i32,
        name: Option<String>,
    },
    VerticalBar,
}

impl Re {
    pub fn new(op: Op, flags: u16) -> Re {
        Re { op, flags }
    }

    fn is_marker(&self) -> bool {
        matches!(self.op, Op::LeftParen { .. } | Op::VerticalBar)
    }

    /// The sub-expressions, in order.
    pub fn subs(&self) -> &[Re] {
        match &self.op {
            Op::Concat(s) | Op::Alternate(s) => s,
            Op::Star(s) | Op::Plus(s) | Op::Quest(s) => std::slice::from_ref(s),
            Op::Repeat { sub, .. } | Op::Capture { sub, .. } => std::slice::from_ref(sub),
            _ => &[],
        }
    }
}

/// A set of runes as sorted, disjoint, non-adjacent ranges (RE2's `CharClassBuilder`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Class {
    pub ranges: Vec<(u32, u32)>,
}

impl Class {
    /// Adds `lo..=hi`; whether the class grew.
    pub fn add_range(&mut self, lo: u32, hi: u32) -> bool {
        if hi < lo {
            return false;
        }
        if self.ranges.iter().any(|&(a, b)| a <= lo && hi <= b) {
            return false;
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.ranges {
            if b.saturating_add(1) < lo {
                out.push((a, b));
            } else if hi.saturating_add(1) < a {
                if !placed {
                    out.push((lo, hi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
        }
        out.sort_unstable();
        self.ranges = out;
        true
    }

    pub fn add_class(&mut self, other: &Class) {
        for &(lo, hi) in &other.ranges {
            self.add_range(lo, hi);
        }
    }

    pub fn contains(&self, r: u32) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= r && r <= b)
    }

    /// The number of runes in the class.
    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| u64::from(b - a) + 1).sum()
    }

    /// Complement within all of Unicode, as RE2 negates before cutting to the encoding.
    pub fn negate(&mut self) {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut next = 0u32;
        for &(a, b) in &self.ranges {
            if a > next {
                out.push((next, a - 1));
            }
            next = b + 1;
        }
        if next <= UNICODE_MAX {
            out.push((next, UNICODE_MAX));
        }
        self.ranges = out;
    }

    pub fn remove_above(&mut self, r: u32) {
        self.ranges.retain(|&(a, _)| a <= r);
        if let Some(last) = self.ranges.last_mut() {
            last.1 = last.1.min(r);
        }
    }

    /// Whether the class treats A-Z exactly as a-z (RE2's `FoldsASCII`), which lets the
    /// compiler match both cases with one case-folding instruction.
    pub fn folds_ascii(&self) -> bool {
        (b'A'..=b'Z').all(|c| self.contains(u32::from(c)) == self.contains(u32::from(c) + 32))
    }

    /// Adds `lo..=hi` and, when `flags` fold case, the other case of every ASCII letter in
    /// it (Latin-1 folding knows nothing beyond ASCII).
    fn add_range_flags(&mut self, lo: u32, hi: u32, flags: u16) {
        self.add_range(lo, hi);
        if flags & FOLD_CASE != 0 {
            for (a, b, delta) in [(u32::from(b'A'), u32::from(b'Z'), 32i64), (97, 122, -32)] {
                let (l, h) = (lo.max(a), hi.min(b));
                if l <= h {
                    let shift = |x: u32| (i64::from(x) + delta) as u32;
                    self.add_range(shift(l), shift(h));
                }
            }
        }
    }

    /// Adds a named group (`\d`, `[:alpha:]`, `\pL`) or, with `negated`, its complement.
    fn add_group(&mut self, ranges: &[(u32, u32)], negated: bool, flags: u16) {
        if !negated {
            for &(lo, hi) in ranges {
                self.add_range_flags(lo, hi, flags);
            }
            return;
        }
        // A folded negation excludes the folded group, as RE2 does in two steps.
        let mut positive = Class::default();
        for &(lo, hi) in ranges {
            positive.add_range_flags(lo, hi, flags & FOLD_CASE);
        }
        positive.negate();
        self.add_class(&positive);
    }
}

/// A parse error: RE2's error code text and the piece of pattern it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    code: &'static str,
    arg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.arg.is_empty() {
            f.write_str(self.code)
        } else {
            write!(f, "{}: {}", self.code, self.arg)
        }
    }
}

const BAD_ESCAPE: &str = "invalid escape sequence";
const BAD_CHAR_RANGE: &str = "invalid character class range";
const MISSING_BRACKET: &str = "missing ]";
const MISSING_PAREN: &str = "missing )";
const UNEXPECTED_PAREN: &str = "unexpected )";
const TRAILING_BACKSLASH: &str = "trailing \\";
const REPEAT_ARGUMENT: &str = "no argument for repetition operator";
const REPEAT_SIZE: &str = "invalid repetition size";
const REPEAT_OP: &str = "bad repetition operator";
const BAD_PERL_OP: &str = "invalid perl operator";
const BAD_NAMED_CAPTURE: &str = "invalid named capture group";

/// Runes back to text for error messages. In Latin-1 mode every rune is one byte of the
/// original UTF-8 pattern, so the bytes are reassembled rather than re-encoded one by one.
fn text(runes: &[u32]) -> String {
    let bytes: Vec<u8> = runes.iter().map(|&r| r as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn err(code: &'static str, arg: &[u32]) -> ParseError {
    ParseError {
        code,
        arg: text(arg),
    }
}

const fn c(ch: char) -> u32 {
    ch as u32
}

/// Parses `pattern` into RE2's regexp tree.
pub(crate) fn parse(pattern: &str) -> Result<Re, ParseError> {
    // Latin-1 mode: every byte of the pattern is one character.
    let t: Vec<u32> = pattern.bytes().map(u32::from).collect();
    let mut p = Parser {
        flags: ENVOY_FLAGS,
        stack: Vec::new(),
        ncap: 0,
        whole: &t,
    };
    let mut i = 0;
    let mut last_unary: Option<usize> = None;
    while i < t.len() {
        let mut is_unary = None;
        let ch = t[i];
        match ch {
            x if x == c('(') => {
                if t.get(i + 1) == Some(&c('?')) {
                    i = p.parse_perl_flags(&t, i)?;
                } else {
                    p.do_left_paren(None);
                    i += 1;
                }
            }
            x if x == c('|') => {
                p.do_vertical_bar();
                i += 1;
            }
            x if x == c(')') => {
                p.do_right_paren()?;
                i += 1;
            }
            x if x == c('^') => {
                p.push_caret();
                i += 1;
            }
            x if x == c('$') => {
                p.push_dollar();
                i += 1;
            }
            x if x == c('.') => {
                p.push_dot();
                i += 1;
            }
            x if x == c('[') => {
                let (re, next) = p.parse_char_class(&t, i)?;
                p.push_regexp(re);
                i = next;
            }
            x if x == c('*') || x == c('+') || x == c('?') => {
                let op = if x == c('*') {
                    RepOp::Star
                } else if x == c('+') {
                    RepOp::Plus
                } else {
                    RepOp::Quest
                };
                let start = i;
                i += 1;
                let nongreedy = t.get(i) == Some(&c('?'));
                if nongreedy {
                    i += 1;
                }
                if let Some(lu) = last_unary {
                    // Stacked repetition operators (`a**`, `a*+`) are an error in Perl mode.
                    return Err(err(REPEAT_OP, &t[lu..i]));
                }
                p.push_repeat_op(op, &t[start..i], nongreedy)?;
                is_unary = Some(start);
            }
            x if x == c('{') => match maybe_parse_repetition(&t, i) {
                None => {
                    p.push_literal(c('{'));
                    i += 1;
                }
                Some((lo, hi, next)) => {
                    let start = i;
                    i = next;
                    let nongreedy = t.get(i) == Some(&c('?'));
                    if nongreedy {
                        i += 1;
                    }
                    if let Some(lu) = last_unary {
                        return Err(err(REPEAT_OP, &t[lu..i]));
                    }
                    p.push_repetition(lo, hi, &t[start..i], nongreedy)?;
                    is_unary = Some(start);
                }
            },
            x if x == c('\\') => {
                i = p.parse_backslash(&t, i)?;
            }
            _ => {
                p.push_literal(ch);
                i += 1;
            }
        }
        last_unary = is_unary;
    }
    p.do_finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepOp {
    Star,
    Plus,
    Quest,
}

/// `{n}`, `{n,}` or `{n,m}` at `t[i]`: the bounds (`-1` for none) and where it ends. Anything
/// else (`{,n}`, `{x}`, leading zeros) is not a repetition, and `{` is then a literal.
fn maybe_parse_repetition(t: &[u32], i: usize) -> Option<(i32, i32, usize)> {
    let mut j = i + 1;
    let lo = parse_integer(t, &mut j)?;
    let hi;
    if t.get(j) == Some(&c(',')) {
        j += 1;
        if t.get(j) == Some(&c('}')) {
            hi = -1;
        } else {
            hi = parse_integer(t, &mut j)?;
        }
    } else {
        hi = lo;
    }
    if t.get(j) != Some(&c('}')) {
        return None;
    }
    Some((lo, hi, j + 1))
}

fn parse_integer(t: &[u32], j: &mut usize) -> Option<i32> {
    let is_digit = |r: Option<&u32>| r.is_some_and(|&r| (c('0')..=c('9')).contains(&r));
    if !is_digit(t.get(*j)) {
        return None;
    }
    if t[*j] == c('0') && is_digit(t.get(*j + 1)) {
        return None;
    }
    let mut n: i32 = 0;
    while is_digit(t.get(*j)) {
        if n >= 100_000_000 {
            return None;
        }
        n = n * 10 + (t[*j] - c('0')) as i32;
        *j += 1;
    }
    Some(n)
}

fn is_hex(r: u32) -> bool {
    char::from_u32(r).is_some_and(|ch| ch.is_ascii_hexdigit())
}

fn unhex(r: u32) -> u32 {
    char::from_u32(r)
        .and_then(|ch| ch.to_digit(16))
        .unwrap_or(0)
}

/// An escape sequence at `t[i]` (a backslash) standing for one character: the character and
/// where the sequence ends.
fn parse_escape(t: &[u32], i: usize) -> Result<(u32, usize), ParseError> {
    let Some(&ch) = t.get(i + 1) else {
        return Err(err(TRAILING_BACKSLASH, &[]));
    };
    let mut j = i + 2;
    let bad = |j: usize| err(BAD_ESCAPE, &t[i..j.min(t.len())]);
    let octal = |r: Option<&u32>| r.is_some_and(|&r| (c('0')..=c('7')).contains(&r));
    match char::from_u32(ch).unwrap_or('\u{0}') {
        '1'..='7' | '0' => {
            // A single non-zero digit would be a backreference, which RE2 lacks.
            if ch != c('0') && !octal(t.get(j)) {
                return Err(bad(j));
            }
            let mut code = ch - c('0');
            for _ in 0..2 {
                if octal(t.get(j)) {
                    code = code * 8 + (t[j] - c('0'));
                    j += 1;
                } else {
                    break;
                }
            }
            if code > RUNE_MAX {
                return Err(bad(j));
            }
            Ok((code, j))
        }
        'x' => {
            let Some(&x) = t.get(j) else {
                return Err(bad(j));
            };
            j += 1;
            if x == c('{') {
                let mut nhex = 0;
                let mut code: u32 = 0;
                loop {
                    let Some(&d) = t.get(j) else {
                        return Err(bad(j));
                    };
                    j += 1;
                    if !is_hex(d) {
                        if d != c('}') || nhex == 0 {
                            return Err(bad(j));
                        }
                        return Ok((code, j));
                    }
                    nhex += 1;
                    code = code * 16 + unhex(d);
                    if code > RUNE_MAX {
                        return Err(bad(j));
                    }
                }
            }
            let Some(&y) = t.get(j) else {
                return Err(bad(j));
            };
            j += 1;
            if !is_hex(x) || !is_hex(y) {
                return Err(bad(j));
            }
            Ok((unhex(x) * 16 + unhex(y), j))
        }
        'n' => Ok((c('\n'), j)),
        'r' => Ok((c('\r'), j)),
        't' => Ok((c('\t'), j)),
        'a' => Ok((7, j)),
        'f' => Ok((12, j)),
        'v' => Ok((11, j)),
        other if ch < 0x80 && !other.is_ascii_alphanumeric() => Ok((ch, j)),
        _ => Err(bad(j)),
    }
}

/// A Perl class escape (`\d`, `\S`, …) at `t[i]`: its ranges, whether negated.
fn perl_group(t: &[u32], i: usize) -> Option<(&'static [(u32, u32)], bool)> {
    if t.get(i) != Some(&c('\\')) {
        return None;
    }
    let name = char::from_u32(*t.get(i + 1)?)?;
    let ranges = groups::perl(name.to_ascii_lowercase())?;
    Some((ranges, name.is_ascii_uppercase()))
}

/// A Unicode group `\pN`, `\p{Name}`, `\P{^Name}` at `t[i]`: its ranges (within Latin-1),
/// whether negated, and where it ends. `None` if `t[i]` does not start one.
#[allow(clippy::type_complexity)]
fn unicode_group(
    t: &[u32],
    i: usize,
) -> Result<Option<(&'static [(u32, u32)], bool, usize)>, ParseError> {
    if t.get(i) != Some(&c('\\')) || !matches!(t.get(i + 1), Some(&x) if x == c('p') || x == c('P'))
    {
        return Ok(None);
    }
    let mut negated = t[i + 1] == c('P');
    let mut j = i + 2;
    let Some(&first) = t.get(j) else {
        return Err(err(BAD_CHAR_RANGE, &t[i..]));
    };
    j += 1;
    let name: &[u32] = if first != c('{') {
        &t[j - 1..j]
    } else {
        let Some(end) = t[j..].iter().position(|&r| r == c('}')) else {
            return Err(err(BAD_CHAR_RANGE, &t[i..]));
        };
        let name = &t[j..j + end];
        j += end + 1;
        name
    };
    let mut name = name;
    if name.first() == Some(&c('^')) {
        negated = !negated;
        name = &name[1..];
    }
    match groups::unicode(&text(name)) {
        Some(ranges) => Ok(Some((ranges, negated, j))),
        None => Err(err(BAD_CHAR_RANGE, &t[i..j])),
    }
}

/// RE2 named-capture names: word characters (RE2 also takes non-ASCII letters; shoal keeps
/// to ASCII, which every engine agrees on).
fn valid_capture_name(name: &[u32]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&r| char::from_u32(r).is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
}

struct Parser<'a> {
    flags: u16,
    stack: Vec<Re>,
    ncap: i32,
    whole: &'a [u32],
}

impl Parser<'_> {
    fn push_regexp(&mut self, mut re: Re) {
        self.maybe_concat_string(None, 0);
        // A class of one character is that character, and [Aa] is a case-folded `a`.
        if let Op::CharClass(cc) = &mut re.op {
            cc.remove_above(RUNE_MAX);
            if cc.size() == 1 {
                re = Re::new(Op::Literal(cc.ranges[0].0), self.flags);
            } else if cc.size() == 2 {
                let r = cc.ranges[0].0;
                if (c('A')..=c('Z')).contains(&r) && cc.contains(r + 32) {
                    re = Re::new(Op::Literal(r + 32), self.flags | FOLD_CASE);
                }
            }
        }
        self.stack.push(re);
    }

    fn push_literal(&mut self, r: u32) {
        if self.flags & FOLD_CASE != 0
            && char::from_u32(r).is_some_and(|ch| ch.is_ascii_alphabetic())
        {
            let mut cc = Class::default();
            cc.add_range_flags(r, r, FOLD_CASE);
            self.push_regexp(Re::new(Op::CharClass(cc), self.flags & !FOLD_CASE));
            return;
        }
        if self.maybe_concat_string(Some(r), self.flags) {
            return;
        }
        self.push_regexp(Re::new(Op::Literal(r), self.flags));
    }

    /// Joins the two literals on top of the stack into a string. With `r`, the top one is
    /// then reused for the literal `r` about to be pushed (which is what the caller wanted).
    fn maybe_concat_string(&mut self, r: Option<u32>, flags: u16) -> bool {
        let n = self.stack.len();
        if n < 2 {
            return false;
        }
        let is_lit = |re: &Re| matches!(re.op, Op::Literal(_) | Op::LiteralString(_));
        if !is_lit(&self.stack[n - 1]) || !is_lit(&self.stack[n - 2]) {
            return false;
        }
        if (self.stack[n - 1].flags ^ self.stack[n - 2].flags) & FOLD_CASE != 0 {
            return false;
        }
        let top = match &self.stack[n - 1].op {
            Op::Literal(x) => vec![*x],
            Op::LiteralString(v) => v.clone(),
            _ => unreachable!(),
        };
        let below = &mut self.stack[n - 2].op;
        let mut runes = match below {
            Op::Literal(x) => vec![*x],
            Op::LiteralString(v) => std::mem::take(v),
            _ => unreachable!(),
        };
        runes.extend(top);
        *below = Op::LiteralString(runes);
        match r {
            Some(r) => {
                self.stack[n - 1] = Re::new(Op::Literal(r), flags);
                true
            }
            None => {
                self.stack.pop();
                false
            }
        }
    }

    fn push_simple(&mut self, op: Op) {
        let re = Re::new(op, self.flags);
        self.push_regexp(re);
    }

    fn push_caret(&mut self) {
        if self.flags & ONE_LINE != 0 {
            self.push_simple(Op::BeginText);
        } else {
            self.push_simple(Op::BeginLine);
        }
    }

    fn push_dollar(&mut self) {
        if self.flags & ONE_LINE != 0 {
            let re = Re::new(Op::EndText, self.flags | WAS_DOLLAR);
            self.push_regexp(re);
        } else {
            self.push_simple(Op::EndLine);
        }
    }

    fn push_dot(&mut self) {
        if self.flags & DOT_NL != 0 {
            self.push_simple(Op::AnyChar);
            return;
        }
        let mut cc = Class::default();
        cc.add_range(0, c('\n') - 1);
        cc.add_range(c('\n') + 1, RUNE_MAX);
        self.push_regexp(Re::new(Op::CharClass(cc), self.flags & !FOLD_CASE));
    }

    fn top_or_repeat_error(&self, s: &[u32]) -> Result<(), ParseError> {
        match self.stack.last() {
            Some(top) if !top.is_marker() => Ok(()),
            _ => Err(err(REPEAT_ARGUMENT, s)),
        }
    }

    fn push_repeat_op(&mut self, op: RepOp, s: &[u32], nongreedy: bool) -> Result<(), ParseError> {
        self.top_or_repeat_error(s)?;
        let fl = if nongreedy {
            self.flags ^ NON_GREEDY
        } else {
            self.flags
        };
        let top = self.stack.last_mut().expect("checked");
        // (a*)* is a*, and mixed stars, pluses and quests collapse to a star.
        let top_op = match &top.op {
            Op::Star(_) => Some(RepOp::Star),
            Op::Plus(_) => Some(RepOp::Plus),
            Op::Quest(_) => Some(RepOp::Quest),
            _ => None,
        };
        if top_op == Some(op) && fl == top.flags {
            return Ok(());
        }
        if top_op.is_some() && fl == top.flags {
            let sub = match std::mem::replace(&mut top.op, Op::NoMatch) {
                Op::Star(s) | Op::Plus(s) | Op::Quest(s) => s,
                _ => unreachable!(),
            };
            top.op = Op::Star(sub);
            return Ok(());
        }
        let sub = Box::new(self.stack.pop().expect("checked"));
        let op = match op {
            RepOp::Star => Op::Star(sub),
            RepOp::Plus => Op::Plus(sub),
            RepOp::Quest => Op::Quest(sub),
        };
        self.stack.push(Re::new(op, fl));
        Ok(())
    }

    fn push_repetition(
        &mut self,
        min: i32,
        max: i32,
        s: &[u32],
        nongreedy: bool,
    ) -> Result<(), ParseError> {
        if (max != -1 && max < min) || min > MAX_REPEAT || max > MAX_REPEAT {
            return Err(err(REPEAT_SIZE, s));
        }
        self.top_or_repeat_error(s)?;
        let fl = if nongreedy {
            self.flags ^ NON_GREEDY
        } else {
            self.flags
        };
        let sub = Box::new(self.stack.pop().expect("checked"));
        let re = Re::new(Op::Repeat { sub, min, max }, fl);
        // Nested repetitions multiply: RE2 allows at most 1000 copies of the innermost.
        if (min >= 2 || max >= 2) && repetition_budget(&re, MAX_REPEAT) == 0 {
            return Err(err(REPEAT_SIZE, s));
        }
        self.stack.push(re);
        Ok(())
    }

    fn do_left_paren(&mut self, name: Option<String>) {
        self.ncap += 1;
        let cap = self.ncap;
        self.push_simple(Op::LeftParen { cap, name });
    }

    fn do_left_paren_no_capture(&mut self) {
        self.push_simple(Op::LeftParen {
            cap: -1,
            name: None,
        });
    }

    fn do_vertical_bar(&mut self) {
        self.maybe_concat_string(None, 0);
        self.do_concatenation();
        let n = self.stack.len();
        if n >= 2 && matches!(self.stack[n - 2].op, Op::VerticalBar) {
            if n >= 3 {
                let r1 = &self.stack[n - 1].op;
                let r3 = &self.stack[n - 3].op;
                let single =
                    |op: &Op| matches!(op, Op::Literal(_) | Op::CharClass(_) | Op::AnyChar);
                // `.` subsumes a single character or class next to it in an alternation.
                if matches!(r3, Op::AnyChar) && single(r1) {
                    self.stack.pop();
                    return;
                }
                if matches!(r1, Op::AnyChar) && single(r3) {
                    let r1 = self.stack.pop().expect("n >= 3");
                    self.stack[n - 3] = r1;
                    return;
                }
            }
            self.stack.swap(n - 1, n - 2);
            return;
        }
        self.push_simple(Op::VerticalBar);
    }

    fn do_right_paren(&mut self) -> Result<(), ParseError> {
        self.do_alternation();
        let n = self.stack.len();
        if n < 2 || !matches!(self.stack[n - 2].op, Op::LeftParen { .. }) {
            return Err(err(UNEXPECTED_PAREN, self.whole));
        }
        let r1 = self.stack.pop().expect("n >= 2");
        let paren = self.stack.pop().expect("n >= 2");
        self.flags = paren.flags;
        let re = match paren.op {
            Op::LeftParen { cap, name } if cap > 0 => Re::new(
                Op::Capture {
                    sub: Box::new(r1),
                    cap,
                    name,
                },
                paren.flags,
            ),
            _ => r1,
        };
        self.push_regexp(re);
        Ok(())
    }

    fn do_finish(mut self) -> Result<Re, ParseError> {
        self.do_alternation();
        if self.stack.len() != 1 {
            return Err(err(MISSING_PAREN, self.whole));
        }
        Ok(self.stack.pop().expect("one left"))
    }

    fn do_concatenation(&mut self) {
        if self.stack.last().is_none_or(Re::is_marker) {
            self.push_simple(Op::EmptyMatch);
        }
        self.do_collapse(false);
    }

    fn do_alternation(&mut self) {
        self.do_vertical_bar();
        // The vertical bar is on top now.
        self.stack.pop();
        self.do_collapse(true);
    }

    /// Replaces everything above the topmost marker with its concatenation (or alternation),
    /// flattening nested ones.
    fn do_collapse(&mut self, alternate: bool) {
        let start = self
            .stack
            .iter()
            .rposition(Re::is_marker)
            .map_or(0, |i| i + 1);
        if self.stack.len() - start == 1 {
            return;
        }
        let items: Vec<Re> = self.stack.drain(start..).collect();
        let mut subs = Vec::new();
        for it in items {
            match it.op {
                Op::Alternate(s) if alternate => subs.extend(s),
                Op::Concat(s) if !alternate => subs.extend(s),
                op => subs.push(Re::new(op, it.flags)),
            }
        }
        let re = if alternate {
            alternate_of(subs, self.flags, true)
        } else {
            concat_of(subs, self.flags)
        };
        self.stack.push(re);
    }

    /// `(?flags)`, `(?flags:`, `(?P<name>`, `(?<name>` at `t[i]`; where it ends.
    fn parse_perl_flags(&mut self, t: &[u32], i: usize) -> Result<usize, ParseError> {
        let s = &t[i..];
        let at = |k: usize| s.get(k).copied().unwrap_or(0);
        // Lookaround is reported as an unsupported Perl operator.
        if (s.len() > 3 && (at(2) == c('=') || at(2) == c('!')))
            || (s.len() > 4 && at(2) == c('<') && (at(3) == c('=') || at(3) == c('!')))
        {
            let n = if at(2) == c('<') { 4 } else { 3 };
            return Err(err(BAD_PERL_OP, &s[..n]));
        }
        if (s.len() > 4 && at(2) == c('P') && at(3) == c('<')) || (s.len() > 3 && at(2) == c('<')) {
            let begin = if at(2) == c('P') { 4 } else { 3 };
            let Some(end) = s[begin..]
                .iter()
                .position(|&r| r == c('>'))
                .map(|e| e + begin)
            else {
                return Err(err(BAD_NAMED_CAPTURE, s));
            };
            let name = &s[begin..end];
            if !valid_capture_name(name) {
                return Err(err(BAD_NAMED_CAPTURE, &s[..=end]));
            }
            self.do_left_paren(Some(text(name)));
            return Ok(i + end + 1);
        }
        let mut k = 2;
        let mut negated = false;
        let mut saw_flag = false;
        let mut nflags = self.flags;
        loop {
            let Some(&ch) = s.get(k) else {
                return Err(err(BAD_PERL_OP, &s[..k]));
            };
            k += 1;
            let flag = match char::from_u32(ch).unwrap_or('\u{0}') {
                'i' => FOLD_CASE,
                // `m` is the opposite of RE2's one-line mode.
                'm' => ONE_LINE,
                's' => DOT_NL,
                'U' => NON_GREEDY,
                '-' => {
                    if negated {
                        return Err(err(BAD_PERL_OP, &s[..k]));
                    }
                    negated = true;
                    // Negating nothing is an error: (?-) or (?i-:…).
                    saw_flag = false;
                    continue;
                }
                ':' => {
                    // The group remembers the flags outside it.
                    self.do_left_paren_no_capture();
                    break;
                }
                ')' => break,
                _ => return Err(err(BAD_PERL_OP, &s[..k])),
            };
            saw_flag = true;
            let set = if flag == ONE_LINE { negated } else { !negated };
            if set {
                nflags |= flag;
            } else {
                nflags &= !flag;
            }
        }
        if negated && !saw_flag {
            return Err(err(BAD_PERL_OP, &s[..k]));
        }
        self.flags = nflags;
        Ok(i + k)
    }

    /// A backslash sequence at `t[i]`; where it ends.
    fn parse_backslash(&mut self, t: &[u32], i: usize) -> Result<usize, ParseError> {
        let next = t.get(i + 1).copied();
        if next == Some(c('b')) || next == Some(c('B')) {
            if next == Some(c('b')) {
                self.push_simple(Op::WordBoundary);
            } else {
                self.push_simple(Op::NoWordBoundary);
            }
            return Ok(i + 2);
        }
        match next.and_then(char::from_u32) {
            Some('A') => {
                self.push_simple(Op::BeginText);
                return Ok(i + 2);
            }
            Some('z') => {
                self.push_simple(Op::EndText);
                return Ok(i + 2);
            }
            // `\Z` is not recognized: RE2 cannot implement Perl's meaning.
            Some('C') => {
                self.push_simple(Op::AnyByte);
                return Ok(i + 2);
            }
            Some('Q') => {
                let mut j = i + 2;
                while j < t.len() {
                    if t[j] == c('\\') && t.get(j + 1) == Some(&c('E')) {
                        j += 2;
                        break;
                    }
                    self.push_literal(t[j]);
                    j += 1;
                }
                return Ok(j);
            }
            _ => {}
        }
        if let Some((ranges, negated, j)) = unicode_group(t, i)? {
            let mut cc = Class::default();
            cc.add_group(ranges, negated, self.flags);
            self.push_regexp(Re::new(Op::CharClass(cc), self.flags & !FOLD_CASE));
            return Ok(j);
        }
        if let Some((ranges, negated)) = perl_group(t, i) {
            let mut cc = Class::default();
            cc.add_group(ranges, negated, self.flags);
            self.push_regexp(Re::new(Op::CharClass(cc), self.flags & !FOLD_CASE));
            return Ok(i + 2);
        }
        let (r, j) = parse_escape(t, i)?;
        self.push_literal(r);
        Ok(j)
    }

    /// A bracketed class at `t[i]`; the class and where it ends.
    fn parse_char_class(&self, t: &[u32], i: usize) -> Result<(Re, usize), ParseError> {
        let whole = &t[i..];
        let mut cc = Class::default();
        let mut j = i + 1;
        let mut negated = false;
        if t.get(j) == Some(&c('^')) {
            negated = true;
            j += 1;
        }
        let mut first = true;
        while j < t.len() && (t[j] != c(']') || first) {
            // `-` may appear anywhere in Perl mode.
            first = false;
            if t[j] == c('[') && t.get(j + 1) == Some(&c(':')) && t.len() - j > 2 {
                if let Some(end) = (j + 2..t.len().saturating_sub(1))
                    .find(|&k| t[k] == c(':') && t[k + 1] == c(']'))
                {
                    let name = &t[j..end + 2];
                    let Some((ranges, negated)) = groups::posix(&text(name)) else {
                        return Err(err(BAD_CHAR_RANGE, name));
                    };
                    cc.add_group(ranges, negated, self.flags);
                    j = end + 2;
                    continue;
                }
            }
            if t.len() - j > 2 {
                if let Some((ranges, negated, next)) = unicode_group(t, j)? {
                    cc.add_group(ranges, negated, self.flags);
                    j = next;
                    continue;
                }
            }
            if let Some((ranges, negated)) = perl_group(t, j) {
                cc.add_group(ranges, negated, self.flags);
                j += 2;
                continue;
            }
            let start = j;
            let (lo, next) = self.class_char(t, j, whole)?;
            j = next;
            let mut hi = lo;
            // `a-` before `]` is `a` and `-`.
            if t.len() - j >= 2 && t[j] == c('-') && t[j + 1] != c(']') {
                let (h, next) = self.class_char(t, j + 1, whole)?;
                j = next;
                if h < lo {
                    return Err(err(BAD_CHAR_RANGE, &t[start..j]));
                }
                hi = h;
            }
            cc.add_range_flags(lo, hi, self.flags);
        }
        if j >= t.len() {
            return Err(err(MISSING_BRACKET, whole));
        }
        if negated {
            cc.negate();
        }
        Ok((Re::new(Op::CharClass(cc), self.flags & !FOLD_CASE), j + 1))
    }

    fn class_char(&self, t: &[u32], j: usize, whole: &[u32]) -> Result<(u32, usize), ParseError> {
        match t.get(j) {
            None => Err(err(MISSING_BRACKET, whole)),
            Some(&r) if r == c('\\') => parse_escape(t, j),
            Some(&r) => Ok((r, j + 1)),
        }
    }
}

/// RE2's check that nested counted repetitions stay within 1000 copies: the budget left
/// after dividing by every enclosing repeat count, at the tightest place.
fn repetition_budget(re: &Re, parent: i32) -> i32 {
    let mut arg = parent;
    if let Op::Repeat { min, max, .. } = re.op {
        let m = if max < 0 { min } else { max };
        if m > 0 {
            arg /= m;
        }
    }
    re.subs()
        .iter()
        .map(|s| repetition_budget(s, arg))
        .fold(arg, i32::min)
}

/// A concatenation of `subs` (RE2's `Regexp::Concat`): nothing is the empty match and one
/// is itself.
pub(crate) fn concat_of(mut subs: Vec<Re>, flags: u16) -> Re {
    match subs.len() {
        0 => Re::new(Op::EmptyMatch, flags),
        1 => subs.pop().expect("one"),
        _ => Re::new(Op::Concat(subs), flags),
    }
}

/// An alternation of `subs`, factored unless `factor` is false (RE2's
/// `Regexp::Alternate` and `AlternateNoFactor`).
pub(crate) fn alternate_of(subs: Vec<Re>, flags: u16, factor: bool) -> Re {
    let mut subs = if factor && subs.len() > 1 {
        factor_alternation(subs, flags)
    } else {
        subs
    };
    match subs.len() {
        0 => Re::new(Op::NoMatch, flags),
        1 => subs.pop().expect("one"),
        _ => Re::new(Op::Alternate(subs), flags),
    }
}

/// The leading literal string of `re` (looking into leading concatenations) and its flags.
fn leading_string(re: &Re) -> (Vec<u32>, u16) {
    let mut re = re;
    while let Op::Concat(s) = &re.op {
        if s.is_empty() {
            break;
        }
        re = &s[0];
    }
    let flags = re.flags & (FOLD_CASE | LATIN1);
    match &re.op {
        Op::Literal(r) => (vec![*r], flags),
        Op::LiteralString(v) => (v.clone(), flags),
        _ => (Vec::new(), flags),
    }
}

/// Removes the first `n` runes of the leading literal string of `re`.
fn remove_leading_string(re: &mut Re, n: usize) {
    fn walk(re: &mut Re, n: usize, depth: usize) {
        if let Op::Concat(s) = &mut re.op {
            if !s.is_empty() {
                walk(&mut s[0], n, depth + 1);
            }
            // RE2 fixes up at most four levels of concatenation.
            if depth < 4 && matches!(s.first().map(|f| &f.op), Some(Op::EmptyMatch)) {
                s.remove(0);
                if s.len() == 1 {
                    *re = s.pop().expect("one");
                }
            }
            return;
        }
        match &mut re.op {
            Op::Literal(_) => re.op = Op::EmptyMatch,
            Op::LiteralString(v) => {
                if n >= v.len() {
                    re.op = Op::EmptyMatch;
                } else if n == v.len() - 1 {
                    re.op = Op::Literal(v[v.len() - 1]);
                } else {
                    v.drain(..n);
                }
            }
            _ => {}
        }
    }
    walk(re, n, 0);
}

/// The leading regexp of `re` for round 2 of factoring.
fn leading_regexp(re: &Re) -> Option<&Re> {
    match &re.op {
        Op::EmptyMatch => None,
        Op::Concat(s) if s.len() >= 2 => {
            if matches!(s[0].op, Op::EmptyMatch) {
                None
            } else {
                Some(&s[0])
            }
        }
        _ => Some(re),
    }
}

fn remove_leading_regexp(re: Re) -> Re {
    match re.op {
        Op::EmptyMatch => re,
        Op::Concat(mut s) if s.len() >= 2 => {
            if matches!(s[0].op, Op::EmptyMatch) {
                return Re::new(Op::Concat(s), re.flags);
            }
            s.remove(0);
            if s.len() == 1 {
                s.pop().expect("one")
            } else {
                Re::new(Op::Concat(s), re.flags)
            }
        }
        _ => Re::new(Op::EmptyMatch, re.flags),
    }
}

/// Factors common prefixes out of an alternation, as RE2 does in three rounds: common
/// literal prefixes (`abc|abd` → `ab(?:c|d)`), common simple leading pieces, and runs of
/// single characters and classes merged into one class.
fn factor_alternation(subs: Vec<Re>, flags: u16) -> Vec<Re> {
    let subs = round1(subs, flags);
    let subs = round2(subs, flags);
    round3(subs, flags)
}

fn round1(mut subs: Vec<Re>, flags: u16) -> Vec<Re> {
    // Runs of alternatives sharing a leading literal: (start, end, prefix length).
    let mut runs = Vec::new();
    let mut start = 0;
    let mut rune: Vec<u32> = Vec::new();
    let mut runeflags = 0u16;
    for i in 0..=subs.len() {
        let mut next = None;
        if i < subs.len() {
            let (rune_i, flags_i) = leading_string(&subs[i]);
            if flags_i == runeflags {
                let same = rune.iter().zip(&rune_i).take_while(|(a, b)| a == b).count();
                if same > 0 {
                    rune.truncate(same);
                    continue;
                }
            }
            next = Some((rune_i, flags_i));
        }
        if i - start >= 2 {
            runs.push((start, i, rune.clone(), runeflags));
        }
        if let Some((rune_i, flags_i)) = next {
            start = i;
            rune = rune_i;
            runeflags = flags_i;
        }
    }
    if runs.is_empty() {
        return subs;
    }
    for (s, e, prefix, _) in &runs {
        for sub in &mut subs[*s..*e] {
            remove_leading_string(sub, prefix.len());
        }
    }
    splice(
        subs,
        runs.into_iter().map(|(s, e, prefix, pflags)| {
            let prefix = literal_string(prefix, pflags);
            (
                s,
                e,
                Box::new(move |suffixes: Vec<Re>| {
                    let suffixes = factor_alternation(suffixes, flags);
                    Re::new(
                        Op::Concat(vec![prefix, alternate_of(suffixes, flags, false)]),
                        flags,
                    )
                }) as Box<dyn FnOnce(Vec<Re>) -> Re>,
            )
        }),
    )
}

fn round2(mut subs: Vec<Re>, flags: u16) -> Vec<Re> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut first: Option<Re> = None;
    for i in 0..=subs.len() {
        let mut first_i = None;
        if i < subs.len() {
            first_i = leading_regexp(&subs[i]).cloned();
            if let (Some(f), Some(fi)) = (&first, &first_i) {
                let factorable = match &f.op {
                    Op::BeginLine
                    | Op::EndLine
                    | Op::WordBoundary
                    | Op::NoWordBoundary
                    | Op::BeginText
                    | Op::EndText
                    | Op::CharClass(_)
                    | Op::AnyChar
                    | Op::AnyByte => true,
                    Op::Repeat { sub, min, max } => {
                        min == max
                            && matches!(
                                sub.op,
                                Op::Literal(_) | Op::CharClass(_) | Op::AnyChar | Op::AnyByte
                            )
                    }
                    _ => false,
                };
                if factorable && equal(f, fi) {
                    continue;
                }
            }
        }
        if i - start >= 2 {
            runs.push((start, i, first.clone().expect("a run has a first")));
        }
        if i < subs.len() {
            start = i;
            first = first_i;
        }
    }
    if runs.is_empty() {
        return subs;
    }
    for (s, e, _) in &runs {
        for sub in &mut subs[*s..*e] {
            let taken = std::mem::replace(sub, Re::new(Op::NoMatch, 0));
            *sub = remove_leading_regexp(taken);
        }
    }
    splice(
        subs,
        runs.into_iter().map(|(s, e, prefix)| {
            (
                s,
                e,
                Box::new(move |suffixes: Vec<Re>| {
                    let suffixes = factor_alternation(suffixes, flags);
                    Re::new(
                        Op::Concat(vec![prefix, alternate_of(suffixes, flags, false)]),
                        flags,
                    )
                }) as Box<dyn FnOnce(Vec<Re>) -> Re>,
            )
        }),
    )
}

fn round3(subs: Vec<Re>, flags: u16) -> Vec<Re> {
    let single = |re: &Re| matches!(re.op, Op::Literal(_) | Op::CharClass(_));
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 0..=subs.len() {
        if i < subs.len() && i > start && single(&subs[start]) && single(&subs[i]) {
            continue;
        }
        if i - start >= 2 {
            runs.push((start, i));
        }
        start = i;
    }
    if runs.is_empty() {
        return subs;
    }
    splice(
        subs,
        runs.into_iter().map(|(s, e)| {
            (
                s,
                e,
                Box::new(move |members: Vec<Re>| {
                    let mut cc = Class::default();
                    for re in members {
                        match re.op {
                            Op::CharClass(c2) => {
                                for (lo, hi) in c2.ranges {
                                    cc.add_range_flags(lo, hi, re.flags);
                                }
                            }
                            Op::Literal(r) => cc.add_range_flags(r, r, re.flags),
                            _ => unreachable!("runs hold literals and classes"),
                        }
                    }
                    Re::new(Op::CharClass(cc), flags & !FOLD_CASE)
                }) as Box<dyn FnOnce(Vec<Re>) -> Re>,
            )
        }),
    )
}

type Splice = (usize, usize, Box<dyn FnOnce(Vec<Re>) -> Re>);

/// Replaces each run `start..end` of `subs` by what its function makes of the run.
fn splice(subs: Vec<Re>, runs: impl Iterator<Item = Splice>) -> Vec<Re> {
    let mut out = Vec::new();
    let mut items = subs.into_iter().enumerate().peekable();
    for (s, e, make) in runs {
        while items.peek().is_some_and(|(i, _)| *i < s) {
            out.push(items.next().expect("peeked").1);
        }
        let run: Vec<Re> = items.by_ref().take(e - s).map(|(_, re)| re).collect();
        out.push(make(run));
    }
    out.extend(items.map(|(_, re)| re));
    out
}

fn literal_string(runes: Vec<u32>, flags: u16) -> Re {
    match runes.len() {
        0 => Re::new(Op::EmptyMatch, flags),
        1 => Re::new(Op::Literal(runes[0]), flags),
        _ => Re::new(Op::LiteralString(runes), flags),
    }
}

/// Structural equality as RE2 compares regexps when factoring and coalescing.
pub(crate) fn equal(a: &Re, b: &Re) -> bool {
    let flag = |f: u16| (a.flags ^ b.flags) & f == 0;
    let top = match (&a.op, &b.op) {
        (Op::NoMatch, Op::NoMatch)
        | (Op::EmptyMatch, Op::EmptyMatch)
        | (Op::AnyChar, Op::AnyChar)
        | (Op::AnyByte, Op::AnyByte)
        | (Op::BeginLine, Op::BeginLine)
        | (Op::EndLine, Op::EndLine)
        | (Op::WordBoundary, Op::WordBoundary)
        | (Op::NoWordBoundary, Op::NoWordBoundary)
        | (Op::BeginText, Op::BeginText) => true,
        (Op::EndText, Op::EndText) => flag(WAS_DOLLAR),
        (Op::Literal(x), Op::Literal(y)) => x == y && flag(FOLD_CASE),
        (Op::LiteralString(x), Op::LiteralString(y)) => x == y && flag(FOLD_CASE),
        (Op::Alternate(x), Op::Alternate(y)) | (Op::Concat(x), Op::Concat(y)) => x.len() == y.len(),
        (Op::Star(_), Op::Star(_)) | (Op::Plus(_), Op::Plus(_)) | (Op::Quest(_), Op::Quest(_)) => {
            flag(NON_GREEDY)
        }
        (
            Op::Repeat {
                min: m1, max: x1, ..
            },
            Op::Repeat {
                min: m2, max: x2, ..
            },
        ) => flag(NON_GREEDY) && m1 == m2 && x1 == x2,
        (
            Op::Capture {
                cap: c1, name: n1, ..
            },
            Op::Capture {
                cap: c2, name: n2, ..
            },
        ) => c1 == c2 && n1 == n2,
        (Op::CharClass(x), Op::CharClass(y)) => x == y,
        _ => false,
    };
    top && a.subs().len() == b.subs().len()
        && a.subs().iter().zip(b.subs()).all(|(x, y)| equal(x, y))
}

/// RE2's required prefix: for `^` followed by a literal string, RE2 matches the string with a
/// comparison and compiles only the rest (without the `^`). That rest, if the pattern has
/// this shape.
pub(crate) fn required_prefix_suffix(re: &Re) -> Option<Re> {
    let Op::Concat(subs) = &re.op else {
        return None;
    };
    let mut i = 0;
    while i < subs.len() && matches!(subs[i].op, Op::BeginText) {
        i += 1;
    }
    if i == 0 || i >= subs.len() {
        return None;
    }
    if !matches!(subs[i].op, Op::Literal(_) | Op::LiteralString(_)) {
        return None;
    }
    let rest = &subs[i + 1..];
    Some(if rest.is_empty() {
        Re::new(Op::EmptyMatch, re.flags)
    } else {
        concat_of(rest.to_vec(), re.flags)
    })
}
