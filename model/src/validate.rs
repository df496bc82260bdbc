//! Field validation: the model's own constraints (generated in `api.rs`) collected with the
//! JSON path of each offending member, so that one `BadRequestException` names every problem.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// Something that can check itself against the App Mesh model's constraints.
pub trait Validate {
    /// Records every violation found in `self` (and its members) on `v`.
    fn validate(&self, v: &mut Validator);
}

/// One violated constraint, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the member, e.g. `spec.listeners[0].portMapping.port`.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Walks a value, keeping the current JSON path, and collects [`FieldError`]s.
#[derive(Debug, Default)]
pub struct Validator {
    path: Vec<String>,
    errors: Vec<FieldError>,
}

static PATTERNS: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
    crate::api::PATTERNS
        .iter()
        .map(|(shape, pattern)| (*shape, Regex::new(pattern).expect("model pattern compiles")))
        .collect()
});

impl Validator {
    /// A validator whose paths start at `root` (for example `spec`).
    pub fn at(root: &str) -> Self {
        let mut v = Validator::default();
        if !root.is_empty() {
            v.path.push(root.to_string());
        }
        v
    }

    /// The errors found so far, in the order they were found.
    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    /// True when nothing has been reported.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn path_with(&self, member: &str) -> String {
        let mut p = String::new();
        for seg in self.path.iter().map(String::as_str).chain(Some(member)) {
            if seg.is_empty() {
                continue;
            }
            if !p.is_empty() && !seg.starts_with('[') {
                p.push('.');
            }
            p.push_str(seg);
        }
        p
    }

    /// Reports a violation at `member` below the current path.
    pub fn error(&mut self, member: &str, message: impl Into<String>) {
        let path = self.path_with(member);
        self.errors.push(FieldError {
            path,
            message: message.into(),
        });
    }

    /// Runs `f` with `member` pushed on the path.
    pub fn within(&mut self, member: &str, f: impl FnOnce(&mut Validator)) {
        let pushed = !member.is_empty();
        if pushed {
            self.path.push(member.to_string());
        }
        f(self);
        if pushed {
            self.path.pop();
        }
    }

    /// Checks a nested structure.
    pub fn nested<T: Validate + ?Sized>(&mut self, member: &str, value: &T) {
        self.within(member, |v| value.validate(v));
    }

    /// Checks a string's length (in characters, as the model counts) and pattern.
    pub fn string(
        &mut self,
        member: &str,
        value: &str,
        min: Option<i64>,
        max: Option<i64>,
        pattern_of: Option<&str>,
    ) {
        let len = value.chars().count() as i64;
        if let Some(min) = min {
            if len < min {
                self.error(member, format!("must be at least {min} characters long"));
                return;
            }
        }
        if let Some(max) = max {
            if len > max {
                self.error(member, format!("must be at most {max} characters long"));
                return;
            }
        }
        if let Some(shape) = pattern_of {
            if let Some(re) = PATTERNS.get(shape) {
                if !re.is_match(value) {
                    self.error(member, format!("must match the pattern {}", re.as_str()));
                }
            }
        }
    }

    /// Checks that a number lies in `[min, max]`.
    pub fn number(&mut self, member: &str, value: i64, min: Option<i64>, max: Option<i64>) {
        match (min, max) {
            (Some(min), Some(max)) if value < min || value > max => self.error(
                member,
                format!("must be between {min} and {max}, got {value}"),
            ),
            (Some(min), None) if value < min => {
                self.error(member, format!("must be at least {min}, got {value}"))
            }
            (None, Some(max)) if value > max => {
                self.error(member, format!("must be at most {max}, got {value}"))
            }
            _ => {}
        }
    }

    /// Checks a list's length, then each item with `item`.
    pub fn list<T>(
        &mut self,
        member: &str,
        items: &[T],
        min: Option<i64>,
        max: Option<i64>,
        item: impl Fn(&mut Validator, &T),
    ) {
        let len = items.len() as i64;
        if let Some(min) = min {
            if len < min {
                self.error(member, format!("must have at least {min} items"));
            }
        }
        if let Some(max) = max {
            if len > max {
                self.error(member, format!("must have at most {max} items, got {len}"));
            }
        }
        self.within(member, |v| {
            for (i, x) in items.iter().enumerate() {
                v.within(&format!("[{i}]"), |v| item(v, x));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_list_items_and_members() {
        let mut v = Validator::at("spec");
        v.list("listeners", &[1, 2], None, Some(1), |v, x| {
            v.number("port", *x, Some(2), None)
        });
        let errs: Vec<String> = v.into_errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            [
                "spec.listeners: must have at most 1 items, got 2",
                "spec.listeners[0].port: must be at least 2, got 1"
            ]
        );
    }

    #[test]
    fn model_patterns_compile_and_apply() {
        let mut v = Validator::default();
        v.string(
            "key",
            "ok-key",
            Some(1),
            Some(255),
            Some("AwsCloudMapInstanceAttributeKey"),
        );
        assert!(v.is_ok());
        v.string(
            "key",
            "bad key",
            Some(1),
            Some(255),
            Some("AwsCloudMapInstanceAttributeKey"),
        );
        assert_eq!(v.into_errors().len(), 1);
    }
}
