//! Golden tests: requests signed by botocore's SigV4 signer (the AWS CLI's own, recorded by
//! `tests/golden/gen.py` into `tests/golden/sigv4.json`) verify, and every change an attacker
//! could make to them is refused with the exception AWS answers; and a table of policy
//! decisions (`tests/golden/policy.json`).

use serde_json::Value;
use shoal_auth::policy::{Decision, Policy};
use shoal_auth::sigv4::{self, AuthError, Request};

struct Case {
    name: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
    key: String,
    secret: String,
    now: i64,
}

fn cases() -> Vec<Case> {
    let text = include_str!("golden/sigv4.json");
    let v: Value = serde_json::from_str(text).expect("golden JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            method: c["method"].as_str().unwrap().into(),
            path: c["path"].as_str().unwrap().into(),
            query: c["query"].as_str().unwrap().into(),
            headers: c["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
                .collect(),
            body: c["body"].as_str().unwrap().into(),
            key: c["access_key"].as_str().unwrap().into(),
            secret: c["secret"].as_str().unwrap().into(),
            now: sigv4::parse_amz_date(c["amz_date"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

fn verify(
    c: &Case,
    headers: &[(String, String)],
    body: &str,
    path: &str,
    query: &str,
    now: i64,
    secret: &str,
) -> Result<sigv4::Authorization, AuthError> {
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let req = Request {
        method: &c.method,
        path,
        query,
        headers: &hs,
        body: body.as_bytes(),
    };
    sigv4::verify(&req, now, |k| (k == c.key).then(|| secret.to_string()))
}

#[test]
fn botocore_signatures_verify() {
    let all = cases();
    assert!(all.len() >= 5);
    for c in &all {
        let auth = verify(c, &c.headers, &c.body, &c.path, &c.query, c.now, &c.secret)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(auth.access_key, c.key);
        assert_eq!(auth.service, "appmesh");
        // Four minutes either way of the server's clock is still fine.
        for skew in [-240, 240] {
            verify(
                c,
                &c.headers,
                &c.body,
                &c.path,
                &c.query,
                c.now + skew,
                &c.secret,
            )
            .unwrap_or_else(|e| panic!("{} at {skew:+} s: {e}", c.name));
        }
    }
}

#[test]
fn every_tampering_is_refused_with_awss_exception() {
    for c in &cases() {
        let code = |r: Result<sigv4::Authorization, AuthError>| {
            r.map(|_| "accepted").unwrap_or_else(|e| e.code())
        };
        // A wrong secret.
        assert_eq!(
            code(verify(
                c,
                &c.headers,
                &c.body,
                &c.path,
                &c.query,
                c.now,
                "not-the-secret"
            )),
            "InvalidSignatureException",
            "{}",
            c.name
        );
        // Another body.
        let other = format!("{} ", c.body);
        assert_eq!(
            code(verify(
                c, &c.headers, &other, &c.path, &c.query, c.now, &c.secret
            )),
            "InvalidSignatureException",
            "{}",
            c.name
        );
        // Another path, another query.
        let path = format!("{}x", c.path);
        assert_eq!(
            code(verify(
                c, &c.headers, &c.body, &path, &c.query, c.now, &c.secret
            )),
            "InvalidSignatureException",
            "{}",
            c.name
        );
        let query = if c.query.is_empty() {
            "limit=1".to_string()
        } else {
            format!("{}&x=1", c.query)
        };
        assert_eq!(
            code(verify(
                c, &c.headers, &c.body, &c.path, &query, c.now, &c.secret
            )),
            "InvalidSignatureException",
            "{}",
            c.name
        );
        // Replayed six minutes later, or sent six minutes early.
        for skew in [360, -360] {
            assert_eq!(
                code(verify(
                    c,
                    &c.headers,
                    &c.body,
                    &c.path,
                    &c.query,
                    c.now + skew,
                    &c.secret
                )),
                "InvalidSignatureException",
                "{} at {skew:+} s",
                c.name
            );
        }
        // A signed header changed (its value), or removed.
        let changed: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(n, v)| {
                if n.eq_ignore_ascii_case("host") {
                    (n.clone(), "127.0.0.2:7070".into())
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect();
        assert_eq!(
            code(verify(
                c, &changed, &c.body, &c.path, &c.query, c.now, &c.secret
            )),
            "InvalidSignatureException",
            "{}",
            c.name
        );
        let dropped: Vec<(String, String)> = c
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
            .cloned()
            .collect();
        assert_eq!(
            code(verify(
                c, &dropped, &c.body, &c.path, &c.query, c.now, &c.secret
            )),
            "InvalidSignatureException",
            "{}",
            c.name
        );
        // An unsigned header added or changed: still fine (it is not covered).
        let mut extra = c.headers.clone();
        extra.push(("X-Forwarded-For".into(), "10.0.0.1".into()));
        assert_eq!(
            code(verify(
                c, &extra, &c.body, &c.path, &c.query, c.now, &c.secret
            )),
            "accepted",
            "{}",
            c.name
        );
        // No Authorization at all; an access key shoal does not know.
        let unsigned: Vec<(String, String)> = c
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("authorization"))
            .cloned()
            .collect();
        assert_eq!(
            code(verify(
                c, &unsigned, &c.body, &c.path, &c.query, c.now, &c.secret
            )),
            "MissingAuthenticationTokenException",
            "{}",
            c.name
        );
        let hs: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let req = Request {
            method: &c.method,
            path: &c.path,
            query: &c.query,
            headers: &hs,
            body: c.body.as_bytes(),
        };
        assert_eq!(
            sigv4::verify(&req, c.now, |_| None).unwrap_err().code(),
            "UnrecognizedClientException",
            "{}",
            c.name
        );
    }
}

#[test]
fn shoal_signs_as_botocore_does() {
    // shoal's own signer reproduces botocore's signature for the same request.
    for c in &cases() {
        let auth_value = c
            .headers
            .iter()
            .find(|(n, _)| n == "Authorization")
            .map(|(_, v)| v.clone())
            .unwrap();
        let parsed = sigv4::parse_authorization(&auth_value).unwrap();
        let hs: Vec<(&str, &str)> = c
            .headers
            .iter()
            .filter(|(n, _)| n != "Authorization")
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let req = Request {
            method: &c.method,
            path: &c.path,
            query: &c.query,
            headers: &hs,
            body: c.body.as_bytes(),
        };
        let names: Vec<&str> = parsed.signed_headers.iter().map(String::as_str).collect();
        let ours = sigv4::sign(&req, &c.key, &c.secret, "us-east-1", "appmesh", &names).unwrap();
        assert_eq!(ours, auth_value, "{}", c.name);
    }
}

#[test]
fn policy_decisions() {
    let text = include_str!("golden/policy.json");
    let v: Value = serde_json::from_str(text).expect("golden JSON");
    let mut n = 0;
    for case in v.as_array().unwrap() {
        let policy = Policy::parse(&case["policy"].to_string()).expect("policy parses");
        for check in case["checks"].as_array().unwrap() {
            let (action, resource, want) = (
                check[0].as_str().unwrap(),
                check[1].as_str().unwrap(),
                check[2].as_str().unwrap(),
            );
            let got = match policy.decide(action, resource) {
                Decision::Allow => "allow",
                Decision::ImplicitDeny => "implicit-deny",
                Decision::ExplicitDeny => "explicit-deny",
            };
            assert_eq!(got, want, "{}: {action} on {resource}", case["name"]);
            n += 1;
        }
    }
    assert!(n >= 15, "{n} decisions checked");
}
