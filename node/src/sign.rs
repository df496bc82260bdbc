//! Signing outgoing API requests with AWS Signature Version 4 (`shoal_auth::sigv4::sign`):
//! the CLI's requests with the operator's key, and a server's forwarded requests with the
//! servers' internal key.

use std::time::{SystemTime, UNIX_EPOCH};

use shoal_auth::sigv4;

/// An access key and its secret, with the region and service the signature is scoped to.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret: String,
    /// The region of the signing scope.
    pub region: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// From the environment, as the AWS CLI reads it: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (or `AWS_DEFAULT_REGION`, else `us-east-1`).
    /// None when either key variable is missing.
    pub fn from_env() -> Option<Credentials> {
        let key = |k: &str| var(k);
        Some(Credentials {
            access_key: key("AWS_ACCESS_KEY_ID")?,
            secret: key("AWS_SECRET_ACCESS_KEY")?,
            region: region(),
        })
    }

    /// What the shoal CLI signs with, found as the AWS CLI finds it: the key in the
    /// environment ([`Credentials::from_env`]); else the profile `AWS_PROFILE` (or `default`)
    /// of the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, or
    /// `~/.aws/credentials`), such as the one `shoal acl bootstrap --credentials-file` writes.
    /// None without either (the request goes unsigned); an error when a profile named by
    /// `AWS_PROFILE` is not there.
    pub fn resolve() -> anyhow::Result<Option<Credentials>> {
        if let Some(c) = Credentials::from_env() {
            return Ok(Some(c));
        }
        let named = var("AWS_PROFILE");
        let profile = named.clone().unwrap_or_else(|| "default".into());
        let file = match var("AWS_SHARED_CREDENTIALS_FILE") {
            Some(f) => std::path::PathBuf::from(f),
            None => match var("HOME") {
                Some(home) => std::path::Path::new(&home).join(".aws").join("credentials"),
                None => return Ok(None),
            },
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => {
                return Ok(None)
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "reading the AWS credentials file {}: {e}",
                    file.display()
                ))
            }
        };
        match profile_keys(&text, &profile) {
            Some((access_key, secret)) => Ok(Some(Credentials {
                access_key,
                secret,
                region: region(),
            })),
            None if named.is_none() => Ok(None),
            None => Err(anyhow::anyhow!(
                "AWS_PROFILE={profile}: {} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key",
                file.display()
            )),
        }
    }
}

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn region() -> String {
    var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into())
}

/// The access key id and secret of `profile` in the text of an AWS shared credentials file
/// (INI: `[profile]` sections of `name = value` lines, `#` and `;` comments).
pub fn profile_keys(text: &str, profile: &str) -> Option<(String, String)> {
    let (mut id, mut secret) = (None, None);
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some((
        id.filter(|s| !s.is_empty())?,
        secret.filter(|s| !s.is_empty())?,
    ))
}

/// Every header as a (name, value) pair of strings, as SigV4 reads them (values that are not
/// text are left out: they cannot be part of a valid signature).
pub fn header_pairs(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The service name shoal's signatures are scoped to (App Mesh's).
pub const SERVICE: &str = "appmesh";

/// Signs `req` in place: sets `X-Amz-Date` and `Host`, then `Authorization` over the method,
/// path, query, those headers, `Content-Type` when present, and the body.
pub fn sign(req: &mut reqwest::Request, creds: &Credentials) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let date = sigv4::format_amz_date(now);
    let url = req.url().clone();
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let headers = req.headers_mut();
    headers.insert("x-amz-date", date.parse()?);
    headers.insert("host", host.parse()?);
    let mut names = vec!["host", "x-amz-date"];
    if headers.contains_key("content-type") {
        names.push("content-type");
    }
    let body = req
        .body()
        .and_then(reqwest::Body::as_bytes)
        .unwrap_or_default()
        .to_vec();
    let pairs = header_pairs(req.headers());
    let hs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sreq = sigv4::Request {
        method: req.method().as_str(),
        path: url.path(),
        query: url.query().unwrap_or(""),
        headers: &hs,
        body: &body,
    };
    let value = sigv4::sign(
        &sreq,
        &creds.access_key,
        &creds.secret,
        &creds.region,
        SERVICE,
        &names,
    )
    .map_err(|e| anyhow::anyhow!("signing the request: {e}"))?;
    req.headers_mut().insert("authorization", value.parse()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::profile_keys;

    #[test]
    fn a_profile_is_read_from_a_shared_credentials_file() {
        let text = "# keys\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n\
                    [shoal]\n; written by shoal acl bootstrap\naws_access_key_id=SHOALKEY\n\
                    aws_secret_access_key = se=cret\nregion = us-west-2\n[half]\naws_access_key_id = X\n";
        assert_eq!(
            profile_keys(text, "shoal"),
            Some(("SHOALKEY".into(), "se=cret".into()))
        );
        assert_eq!(
            profile_keys(text, "default"),
            Some(("AKDEFAULT".into(), "s1".into()))
        );
        assert_eq!(profile_keys(text, "half"), None, "no secret");
        assert_eq!(profile_keys(text, "missing"), None);
    }
}
