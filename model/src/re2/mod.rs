//! RE2 as the Envoy that shoal configures runs it: which patterns it parses, and how large the
//! program it compiles them to is.
//!
//! Envoy compiles every `safe_regex` with RE2 and refuses a pattern whose compiled program has
//! more than [`ENVOY_MAX_PROGRAM_SIZE`] instructions (runtime key
//! `re2.max_program_size.error_level`). A pattern that reaches Envoy only fails when a proxy
//! loads its configuration, so shoal has to decide before commit what RE2 would decide: the
//! Rust `regex` crate accepts syntax RE2 does not (`(?x)`, `\u{..}`, `\p{Letter}`) and says
//! nothing about program size.
//!
//! This module is a model of RE2's front end (release 2024-07-02, the one Envoy 1.40 links),
//! following the algorithms of RE2's source: the parser with its rewrites (literal strings,
//! alternation factoring, `[Aa]` as a case-folded literal), the simplifier (runs of repeats
//! coalesced, counted repeats expanded), the required-prefix split `RE2` makes for
//! `^literal…`, the compiler, and the program flattening whose length is what Envoy compares
//! to its limit. Instructions are built in the order RE2 builds them, because flattening
//! depends on it.
//!
//! Envoy 1.40 compiles in Latin-1 mode (the reloadable feature
//! `envoy.reloadable_features.re2_use_latin1_mode`, on by default and left on by shoal's
//! bootstraps): the pattern's UTF-8 bytes are read as Latin-1 characters, classes stop at
//! U+00FF and `(?i)` folds ASCII letters only. The model does the same, so its size is the
//! size Envoy computes. It was compared with Envoy on some 20,000 generated patterns (sizes and
//! syntax errors alike); `re2_model_matches_envoy` in `model/tests/rules.rs` keeps a table of
//! sizes measured with the real Envoy. In UTF-8 mode programs with `.`, negated classes,
//! non-ASCII characters or `(?i)` on `k` and `s` are larger, so that feature must stay on.

mod compile;
mod groups;
mod parse;
mod simplify;

use std::fmt;

/// The largest RE2 program Envoy accepts by default (`re2.max_program_size.error_level`).
pub const ENVOY_MAX_PROGRAM_SIZE: usize = 100;

/// Expansions and programs are built up to this many nodes and instructions: anything larger
/// is far beyond what Envoy accepts, and stopping there bounds the time and memory a hostile
/// pattern can cost. (A program this large can only come out under Envoy's limit if most of
/// it can never match, like `[^\x00-\xff]{50}…`; shoal refuses those too.)
const INSTRUCTION_BUDGET: usize = 1000;

/// Why RE2 refuses a pattern, in RE2's own words (what Envoy reports too), e.g.
/// `invalid perl operator: (?x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError(String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SyntaxError {}

/// The size of the program RE2 compiles a pattern to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramSize {
    /// Exactly this many instructions.
    Exactly(usize),
    /// More than this many (Envoy's limit): the model stopped counting.
    MoreThan(usize),
}

impl ProgramSize {
    /// Whether Envoy accepts a program of this size.
    pub fn fits_envoy(self) -> bool {
        matches!(self, ProgramSize::Exactly(n) if n <= ENVOY_MAX_PROGRAM_SIZE)
    }
}

impl fmt::Display for ProgramSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramSize::Exactly(n) => write!(f, "{n}"),
            ProgramSize::MoreThan(n) => write!(f, "more than {n}"),
        }
    }
}

/// Parses `pattern` as Envoy's RE2 does and returns the size of its program.
pub fn program_size(pattern: &str) -> Result<ProgramSize, SyntaxError> {
    let re = parse::parse(pattern).map_err(|e| SyntaxError(e.to_string()))?;
    // RE2 compiles only what follows a required literal prefix (`^abc…`): the prefix is
    // matched with a string comparison instead.
    let re = parse::required_prefix_suffix(&re).unwrap_or(re);
    Ok(match simplify::simplify(&re, INSTRUCTION_BUDGET) {
        Some(sre) => match compile::program_size(sre, INSTRUCTION_BUDGET) {
            Some(n) => ProgramSize::Exactly(n),
            None => ProgramSize::MoreThan(ENVOY_MAX_PROGRAM_SIZE),
        },
        None => ProgramSize::MoreThan(ENVOY_MAX_PROGRAM_SIZE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(p: &str) -> usize {
        match program_size(p).unwrap() {
            ProgramSize::Exactly(n) => n,
            ProgramSize::MoreThan(n) => panic!("{p}: more than {n}"),
        }
    }

    #[test]
    fn sizes_envoy_reported() {
        // Measured with Envoy 1.40 (warn level 0 logs every program size).
        assert_eq!(size("/[a-z]{200}"), 205);
        assert_eq!(size("(abc|def){50}"), 404);
        assert_eq!(size("a"), 5);
        assert_eq!(size("^a"), 4);
        assert_eq!(size("^abc(:[0-9]+)?$"), 10);
        assert_eq!(size("(?i)^api.shop.example(:[0-9]+)?$"), 25);
        assert_eq!(size("."), 6);
        assert_eq!(size(r"\pL"), 11);
        assert_eq!(size(r"\p{Greek}"), 1);
    }

    #[test]
    fn worst_cases_stay_bounded() {
        // Deep nesting and large expansions are cut short, not recursed through.
        for p in [
            "a{0,1000}",
            "a{0,200}",
            "(?:a{0,200}){0,4}",
            "(?:a?){1000}",
            "(?:a{0,1000}){0,1}",
            "a{1000}a{1000}a{1000}a{1000}",
            &"(".repeat(120),
            &format!("{}a{}", "(".repeat(120), ")".repeat(120)),
            &format!("{}a{{0,200}}{}", "(".repeat(110), ")".repeat(110)),
            &format!("{}a{}", "(?:".repeat(80), "){2}".repeat(80)),
        ] {
            let _ = program_size(p);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_pattern_gets_an_answer(p in "[()\\[\\]{}|*+?^$.\\-:,<>=!PpxdDsSwWbBAzZCQE0-9aiUm_#&~ é]{0,60}") {
            let _ = program_size(&p);
        }
    }

    #[test]
    fn errors_are_re2s() {
        let e = |p: &str| program_size(p).unwrap_err().to_string();
        assert_eq!(e("(?x) /a b"), "invalid perl operator: (?x");
        assert_eq!(e(r"\x{100}"), r"invalid escape sequence: \x{100");
        assert_eq!(e("a**"), "bad repetition operator: **");
        assert_eq!(e("(?=a)"), "invalid perl operator: (?=");
    }
}
