//! Policies in IAM's shape, and the decision for one action on one resource.
//!
//! ```json
//! {"Version": "2012-10-17",
//!  "Statement": [
//!    {"Effect": "Allow", "Action": ["appmesh:Describe*", "appmesh:List*"], "Resource": "*"},
//!    {"Effect": "Allow", "Action": "appmesh:*",
//!     "Resource": "arn:aws:appmesh:us-east-1:000000000000:mesh/colorapp*"},
//!    {"Effect": "Deny", "Action": "appmesh:DeleteMesh", "Resource": "*"}]}
//! ```
//!
//! As in IAM: an explicit `Deny` wins over any `Allow`; without a matching `Allow` the answer
//! is no. Actions are `service:Operation` (App Mesh's own names under `appmesh:`, shoal's
//! operator actions under `shoal:`) and match case-insensitively; resources are ARNs and match
//! case-sensitively; both take `*` (any run of characters) and `?` (one character).

use serde::{Deserialize, Deserializer, Serialize};

/// A policy: statements, each allowing or denying actions on resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Policy {
    /// IAM's policy language version (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The statements, in any order.
    #[serde(deserialize_with = "one_or_many")]
    pub statement: Vec<Statement>,
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Statement {
    /// An optional label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Allow or deny.
    pub effect: Effect,
    /// Action patterns (`appmesh:Describe*`).
    #[serde(deserialize_with = "one_or_many")]
    pub action: Vec<String>,
    /// Resource patterns (ARNs, `*`).
    #[serde(deserialize_with = "one_or_many")]
    pub resource: Vec<String>,
}

/// A statement's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Grants the actions.
    Allow,
    /// Refuses the actions, whatever else allows them.
    Deny,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A statement allows it and none denies it.
    Allow,
    /// No statement allows it.
    ImplicitDeny,
    /// A statement denies it.
    ExplicitDeny,
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not JSON of the policy shape.
    #[error("the policy is not a valid policy document: {0}")]
    Shape(String),
    /// A statement or pattern that cannot mean anything.
    #[error("the policy is not valid: {0}")]
    Invalid(String),
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v,
    })
}

impl Policy {
    /// Parses and checks a policy document: at least one statement, each with at least one
    /// action of the form `service:pattern` (or `*`) and one resource.
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        let p: Policy =
            serde_json::from_str(json).map_err(|e| PolicyError::Shape(e.to_string()))?;
        if p.statement.is_empty() {
            return Err(PolicyError::Invalid("it has no statement".into()));
        }
        for (i, s) in p.statement.iter().enumerate() {
            if s.action.is_empty() || s.resource.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "statement {i} needs at least one Action and one Resource"
                )));
            }
            for a in &s.action {
                let ok = a == "*"
                    || a.split_once(':').is_some_and(|(svc, op)| {
                        !svc.is_empty()
                            && !op.is_empty()
                            && svc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    return Err(PolicyError::Invalid(format!(
                        "statement {i}: action {a:?} is not service:Operation"
                    )));
                }
            }
            if s.resource.iter().any(String::is_empty) {
                return Err(PolicyError::Invalid(format!(
                    "statement {i}: an empty resource"
                )));
            }
        }
        Ok(p)
    }

    /// Everything (`Action: *` on `Resource: *`).
    pub fn admin() -> Policy {
        Policy::allow(&["*"], &["*"])
    }

    /// Reading the mesh: App Mesh's `Describe*`, `List*`.
    pub fn read_only() -> Policy {
        Policy::allow(&["appmesh:Describe*", "appmesh:List*"], &["*"])
    }

    /// One statement allowing `actions` on `resources`.
    pub fn allow(actions: &[&str], resources: &[&str]) -> Policy {
        Policy {
            version: Some("2012-10-17".into()),
            statement: vec![Statement {
                sid: None,
                effect: Effect::Allow,
                action: actions.iter().map(|s| s.to_string()).collect(),
                resource: resources.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    /// The decision for `action` (`appmesh:CreateMesh`) on `resource` (an ARN).
    pub fn decide(&self, action: &str, resource: &str) -> Decision {
        let mut allowed = false;
        for s in &self.statement {
            let applies = s.action.iter().any(|p| matches(p, action, false))
                && s.resource.iter().any(|p| matches(p, resource, true));
            if applies {
                match s.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }
}

/// Whether `text` matches `pattern` (`*`: any run, `?`: one character).
pub fn matches(pattern: &str, text: &str, case_sensitive: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if case_sensitive {
            s.chars().collect()
        } else {
            s.chars().flat_map(char::to_lowercase).collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    // Iterative wildcard matching with backtracking to the last `*`: linear in practice, and
    // never exponential on hostile patterns.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("appmesh:Describe*", "appmesh:DescribeMesh", false));
        assert!(matches("APPMESH:describe*", "appmesh:DescribeMesh", false));
        assert!(!matches("appmesh:Describe*", "appmesh:ListMeshes", false));
        assert!(matches("*", "", true));
        assert!(matches("a?c", "abc", true));
        assert!(!matches("a?c", "ac", true));
        assert!(matches(
            "arn:*:mesh/colorapp/*",
            "arn:aws:appmesh:r:1:mesh/colorapp/virtualNode/x",
            true
        ));
        assert!(!matches(
            "arn:*:mesh/ColorApp/*",
            "arn:aws:appmesh:r:1:mesh/colorapp/virtualNode/x",
            true
        ));
        // A hostile pattern stays fast.
        let p = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert!(!matches(p, &"a".repeat(5000), true));
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(matches!(Policy::parse("{}"), Err(PolicyError::Shape(_))));
        assert!(matches!(
            Policy::parse(r#"{"Statement": []}"#),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            Policy::parse(
                r#"{"Statement": {"Effect": "Allow", "Action": "CreateMesh", "Resource": "*"}}"#
            ),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            Policy::parse(
                r#"{"Statement": {"Effect": "Maybe", "Action": "a:b", "Resource": "*"}}"#
            ),
            Err(PolicyError::Shape(_))
        ));
    }
}
