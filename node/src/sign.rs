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
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Credentials {
            access_key: var("AWS_ACCESS_KEY_ID")?,
            secret: var("AWS_SECRET_ACCESS_KEY")?,
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
        })
    }
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
