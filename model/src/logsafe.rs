//! Identifiers from the network, made safe to log: control characters and quotes escaped (no
//! forged log lines), and cut to a bounded length (a megabyte-long node id costs a log line,
//! not a megabyte).

use std::fmt;

/// Longest part of an identifier a log line shows, in characters.
pub const MAX_LOGGED_CHARS: usize = 128;

/// `text` for a log: escaped as Rust escapes a string's `{:?}` (without the quotes), at most
/// [`MAX_LOGGED_CHARS`] characters of it, and when it is longer, how long it was.
pub struct LogSafe<'a>(pub &'a str);

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_LOGGED_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// [`LogSafe`] as an owned string.
pub fn log_safe(text: &str) -> String {
    LogSafe(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(log_safe("mesh/a/virtualNode/b"), "mesh/a/virtualNode/b");
        assert_eq!(
            log_safe("x\n2026-01-01 INFO forged\u{1b}[31m\""),
            "x\\n2026-01-01 INFO forged\\u{1b}[31m\\\""
        );
        let long = "a".repeat(1 << 20);
        let shown = log_safe(&long);
        assert_eq!(shown, format!("{}…(1048576 bytes)", "a".repeat(128)));
        assert_eq!(format!("{:?}", LogSafe("q\"")), "\"q\\\"\"");
    }
}
