//! AWS Signature Version 4 (`AWS4-HMAC-SHA256` in the `Authorization` header), verified.
//!
//! The client signs a *canonical request* (method, path, query, the headers it lists, the
//! payload's SHA-256) with a key derived from its secret, the date, the region and the service.
//! The server rebuilds the same canonical request from what it received, derives the same key
//! from the secret it holds for the access key id, and compares signatures in constant time.
//! The canonical forms follow AWS's specification as botocore implements it for services other
//! than S3: the path with dot segments and repeated slashes removed, then URI-encoded again (so
//! an already-encoded `%20` is signed as `%2520`); query pairs decoded, re-encoded with the
//! unreserved set and sorted; header values trimmed, inner runs of spaces collapsed.
//!
//! A request is refused with AWS's own exceptions: no `Authorization` → 403
//! `MissingAuthenticationTokenException`; an access key shoal does not know → 403
//! `UnrecognizedClientException`; a signature that does not match, a malformed header, or a
//! date more than five minutes from the server's clock → 403 `InvalidSignatureException`.

use ring::{digest, hmac};

/// The algorithm name in the `Authorization` header and the string to sign.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The largest difference between the request's `X-Amz-Date` and the server's clock.
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// The payload hash a client sends in `X-Amz-Content-SHA256` when it does not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Missing,
    /// The access key id is not one shoal issued (or it was revoked).
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// The header is not a well-formed SigV4 header, or a signed header is missing.
    #[error("{0}")]
    Malformed(String),
    /// The date is too far from the server's clock.
    #[error("Signature expired: {request} is now earlier than {earliest} ({now} - 5 min.)")]
    Expired {
        /// The request's `X-Amz-Date`.
        request: String,
        /// The earliest date accepted.
        earliest: String,
        /// The server's time.
        now: String,
    },
    /// The request's date is too far in the future.
    #[error("Signature not yet current: {request} is still later than {latest} ({now} + 5 min.)")]
    Future {
        /// The request's `X-Amz-Date`.
        request: String,
        /// The latest date accepted.
        latest: String,
        /// The server's time.
        now: String,
    },
    /// The signature does not match the request and the key's secret.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    Mismatch,
}

impl AuthError {
    /// The AWS exception name (`x-amzn-ErrorType`); every one answers HTTP 403.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::UnknownKey => "UnrecognizedClientException",
            AuthError::Malformed(_)
            | AuthError::Expired { .. }
            | AuthError::Future { .. }
            | AuthError::Mismatch => "InvalidSignatureException",
        }
    }
}

/// The parts of a received request that a signature covers.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The path as received (still percent-encoded), without the query.
    pub path: &'a str,
    /// The query string as received (after `?`), possibly empty.
    pub query: &'a str,
    /// Every header, names in any case, in the order received (repeated names allowed).
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

impl Request<'_> {
    fn header_values(&self, lname: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(lname))
            .map(|(_, v)| *v)
            .collect()
    }
}

/// The `Authorization` header of a SigV4 request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// The region of the scope.
    pub region: String,
    /// The service of the scope (`appmesh`).
    pub service: String,
    /// Lower-case names of the signed headers, as listed.
    pub signed_headers: Vec<String>,
    /// The signature, hex.
    pub signature: String,
}

fn malformed(msg: impl Into<String>) -> AuthError {
    AuthError::Malformed(msg.into())
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/20261203/us-east-1/appmesh/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=…`.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            malformed(format!(
                "Authorization header requires the {ALGORITHM} algorithm"
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part.split_once('=').ok_or_else(|| {
            malformed(format!(
                "Authorization header part {part:?} is not key=value"
            ))
        })?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {
                return Err(malformed(format!(
                    "Authorization header has an unknown part {k:?}"
                )))
            }
        }
    }
    let missing =
        |what: &str| malformed(format!("Authorization header requires '{what}' parameter"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = scope.as_slice() else {
        return Err(malformed(
            "Credential should be scoped to a valid region, date, service and aws4_request",
        ));
    };
    if *terminator != "aws4_request"
        || key.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || region.is_empty()
        || service.is_empty()
    {
        return Err(malformed(
            "Credential should be scoped to a valid region, date, service and aws4_request",
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("Signature is not 64 hexadecimal digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(malformed(
            "SignedHeaders must be lower-case names separated by ';'",
        ));
    }
    Ok(Authorization {
        access_key: key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// The access key id a request claims (for looking up its secret), or why it has none.
pub fn access_key_of(req: &Request<'_>) -> Result<Authorization, AuthError> {
    match req.header_values("authorization").as_slice() {
        [] => Err(AuthError::Missing),
        [one] => parse_authorization(one),
        _ => Err(malformed("more than one Authorization header")),
    }
}

/// Seconds since the Unix epoch of `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// `YYYYMMDDTHHMMSSZ` of seconds since the Unix epoch.
pub fn format_amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

// Howard Hinnant's days-from-civil and its inverse (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Percent-encodes everything but the unreserved characters (and `/` when `keep_slash`), with
/// upper-case hex, as AWS specifies.
fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+`); a bad escape stays as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 dot-segment removal, with empty segments dropped (AWS removes repeated slashes).
fn remove_dot_segments(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let first = if path.starts_with('/') { "/" } else { "" };
    let last = if path.ends_with('/') && !out.is_empty() {
        "/"
    } else {
        ""
    };
    format!("{first}{}{last}", out.join("/"))
}

/// The canonical URI: the received path, normalized, then encoded once more.
pub fn canonical_uri(path: &str) -> String {
    uri_encode(remove_dot_segments(path).as_bytes(), true)
}

/// The canonical query string: each pair decoded and re-encoded, sorted by key then value.
pub fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn trim_all(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request of `req` for the headers `auth` lists.
pub fn canonical_request(req: &Request<'_>, auth: &Authorization) -> Result<String, AuthError> {
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let values = req.header_values(name);
        if values.is_empty() {
            return Err(malformed(format!(
                "The header {name:?} is listed in SignedHeaders but missing from the request"
            )));
        }
        let joined: Vec<String> = values.iter().map(|v| trim_all(v)).collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&joined.join(","));
        headers.push('\n');
    }
    let payload = match req.header_values("x-amz-content-sha256").first() {
        Some(v) if *v == UNSIGNED_PAYLOAD => UNSIGNED_PAYLOAD.to_string(),
        // A declared hash must be the body's: the signature covers the declaration.
        Some(v) => {
            let actual = hex::encode(digest::digest(&digest::SHA256, req.body));
            if !v.eq_ignore_ascii_case(&actual) {
                return Err(malformed(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
            actual
        }
        None => hex::encode(digest::digest(&digest::SHA256, req.body)),
    };
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.to_ascii_uppercase(),
        canonical_uri(req.path),
        canonical_query(req.query),
        headers,
        auth.signed_headers.join(";"),
        payload
    ))
}

/// The string to sign of a canonical request.
pub fn string_to_sign(amz_date: &str, auth: &Authorization, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    )
}

/// The signing key of `secret` for a date, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes());
    for part in [date, region, service, "aws4_request"] {
        let tag = hmac::sign(&key, part.as_bytes());
        key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    key
}

/// Signs `req` (for clients: `shoal`'s own CLI): the `Authorization` value for `access_key` and
/// `secret`, given the headers already on the request (which must hold `host` and
/// `x-amz-date`) and the names to sign.
pub fn sign(
    req: &Request<'_>,
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
    signed_headers: &[&str],
) -> Result<String, AuthError> {
    let amz_date = req
        .header_values("x-amz-date")
        .first()
        .map(|s| s.to_string())
        .ok_or_else(|| malformed("x-amz-date is required"))?;
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let auth = Authorization {
        access_key: access_key.to_string(),
        date: amz_date.get(..8).unwrap_or_default().to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: names,
        signature: String::new(),
    };
    let canonical = canonical_request(req, &auth)?;
    let sts = string_to_sign(&amz_date, &auth, &canonical);
    let key = signing_key(secret, &auth.date, region, service);
    let sig = hex::encode(hmac::sign(&key, sts.as_bytes()).as_ref());
    Ok(format!(
        "{ALGORITHM} Credential={access_key}/{}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={sig}",
        auth.date,
        auth.signed_headers.join(";")
    ))
}

/// Verifies `req`'s signature at time `now` (seconds since the Unix epoch) with the secret
/// `secret_of` returns for its access key (none: the key is unknown). Returns the parsed
/// header (its `access_key` is the caller's identity).
pub fn verify(
    req: &Request<'_>,
    now: i64,
    secret_of: impl FnOnce(&str) -> Option<String>,
) -> Result<Authorization, AuthError> {
    let auth = access_key_of(req)?;
    let secret = secret_of(&auth.access_key).ok_or(AuthError::UnknownKey)?;
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(malformed("'Host' must be a signed header"));
    }
    let amz_date = req
        .header_values("x-amz-date")
        .first()
        .map(|s| s.to_string())
        .ok_or_else(|| malformed("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header"))?;
    let when = parse_amz_date(&amz_date)
        .ok_or_else(|| malformed(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ")))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(malformed(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8]
        )));
    }
    if when < now - MAX_SKEW_SECS {
        return Err(AuthError::Expired {
            request: amz_date,
            earliest: format_amz_date(now - MAX_SKEW_SECS),
            now: format_amz_date(now),
        });
    }
    if when > now + MAX_SKEW_SECS {
        return Err(AuthError::Future {
            request: amz_date,
            latest: format_amz_date(now + MAX_SKEW_SECS),
            now: format_amz_date(now),
        });
    }
    let canonical = canonical_request(req, &auth)?;
    let sts = string_to_sign(&amz_date, &auth, &canonical);
    let key = signing_key(&secret, &auth.date, &auth.region, &auth.service);
    let given = hex::decode(&auth.signature).map_err(|_| AuthError::Mismatch)?;
    // Constant time: ring compares the tags without an early exit.
    hmac::verify(&key, sts.as_bytes(), &given).map_err(|_| AuthError::Mismatch)?;
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let t = parse_amz_date("20261203T101500Z").unwrap();
        assert_eq!(format_amz_date(t), "20261203T101500Z");
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(
            parse_amz_date("20000229T235959Z")
                .map(format_amz_date)
                .as_deref(),
            Some("20000229T235959Z")
        );
        for bad in [
            "2026-12-03T10:15:00Z",
            "20261303T101500Z",
            "20261203T101500",
            "2026120aT101500Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn canonical_forms_follow_aws() {
        assert_eq!(
            canonical_uri("/v20190125/meshes/my%20mesh"),
            "/v20190125/meshes/my%2520mesh"
        );
        assert_eq!(canonical_uri("//a/./b/../c/"), "/a/c/");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(
            canonical_query("limit=10&meshOwner=1&a=%2F"),
            "a=%2F&limit=10&meshOwner=1"
        );
        assert_eq!(canonical_query("b=x y&a"), "a=&b=x%20y");
        assert_eq!(trim_all("  a   b  "), "a b");
    }

    #[test]
    fn headers_that_are_not_sigv4_are_refused_clearly() {
        assert!(matches!(
            parse_authorization("Bearer x"),
            Err(AuthError::Malformed(_))
        ));
        let no_sig = "AWS4-HMAC-SHA256 Credential=AK/20261203/us-east-1/appmesh/aws4_request, SignedHeaders=host";
        assert_eq!(
            parse_authorization(no_sig).unwrap_err().to_string(),
            "Authorization header requires 'Signature' parameter"
        );
        let bad_scope = "AWS4-HMAC-SHA256 Credential=AK/20261203/us-east-1/appmesh, SignedHeaders=host, Signature=00";
        assert!(matches!(
            parse_authorization(bad_scope),
            Err(AuthError::Malformed(_))
        ));
    }
}
