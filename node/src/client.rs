//! The CLI's HTTP client: `shoal apply`, `get`, `delete` and `status` speak the same App Mesh
//! REST API as the AWS CLI, so the CLI exercises exactly what users' scripts do.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, Url};
use serde_json::{json, Map, Value};
use shoal_model::Kind;

/// An App Mesh error returned by the server, kept typed so callers can react to the kind
/// (e.g. `apply` turns a create's `ConflictException` into an update).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// HTTP status.
    pub status: u16,
    /// Exception name (`NotFoundException`).
    pub code: String,
    /// Server's message.
    pub message: String,
}

/// A client for one server.
pub struct Client {
    base: Url,
    http: reqwest::Client,
    /// Send reads with `stale=true` (served from the server's local copy).
    pub stale: bool,
    /// Signs every request when set (from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`).
    pub credentials: Option<crate::sign::Credentials>,
}

/// One resource document in the API's request shape (`--cli-input-json` style).
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// Which kind, from the name members present.
    pub kind: Kind,
    /// Mesh name.
    pub mesh: String,
    /// Router or gateway for routes and gateway routes.
    pub parent: String,
    /// The resource's name.
    pub name: String,
    /// Its spec (absent only for meshes).
    pub spec: Option<Value>,
    /// Tags, sent on create.
    pub tags: Option<Value>,
    /// Where it came from, for messages.
    pub source: String,
}

fn str_member(o: &Map<String, Value>, k: &str) -> anyhow::Result<Option<String>> {
    match o.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => bail!("{k} must be a string"),
    }
}

impl Doc {
    /// Reads a document; its kind follows from its name members, most specific first
    /// (`routeName` → route, `gatewayRouteName` → gateway route, `virtualNodeName`, …,
    /// only `meshName` → mesh).
    pub fn from_json(v: &Value, source: &str) -> anyhow::Result<Doc> {
        let o = v
            .as_object()
            .ok_or_else(|| anyhow!("{source}: expected a JSON object"))?;
        let get = |k: &str| str_member(o, k).with_context(|| source.to_string());
        let mesh = get("meshName")?.ok_or_else(|| anyhow!("{source}: meshName is required"))?;
        let (kind, parent, name) = if let Some(n) = get("routeName")? {
            let p = get("virtualRouterName")?
                .ok_or_else(|| anyhow!("{source}: a route needs virtualRouterName"))?;
            (Kind::Route, p, n)
        } else if let Some(n) = get("gatewayRouteName")? {
            let p = get("virtualGatewayName")?
                .ok_or_else(|| anyhow!("{source}: a gateway route needs virtualGatewayName"))?;
            (Kind::GatewayRoute, p, n)
        } else if let Some(n) = get("virtualNodeName")? {
            (Kind::VirtualNode, String::new(), n)
        } else if let Some(n) = get("virtualServiceName")? {
            (Kind::VirtualService, String::new(), n)
        } else if let Some(n) = get("virtualGatewayName")? {
            (Kind::VirtualGateway, String::new(), n)
        } else if let Some(n) = get("virtualRouterName")? {
            (Kind::VirtualRouter, String::new(), n)
        } else {
            (Kind::Mesh, String::new(), mesh.clone())
        };
        let spec = o.get("spec").cloned();
        if spec.is_none() && kind != Kind::Mesh {
            bail!("{source}: spec is required");
        }
        Ok(Doc {
            kind,
            mesh,
            parent,
            name,
            spec,
            tags: o.get("tags").cloned(),
            source: source.to_string(),
        })
    }

    /// Path segments of the collection this resource lives in.
    pub fn collection(&self) -> Vec<String> {
        collection(self.kind, &self.mesh, &self.parent)
    }
}

/// Path segments of a kind's collection (`v20190125/meshes/m/virtualNodes`).
pub fn collection(kind: Kind, mesh: &str, parent: &str) -> Vec<String> {
    let mut s = vec!["v20190125".to_string(), "meshes".to_string()];
    let tail: &[&str] = match kind {
        Kind::Mesh => &[],
        Kind::VirtualNode => &[mesh, "virtualNodes"],
        Kind::VirtualRouter => &[mesh, "virtualRouters"],
        Kind::VirtualService => &[mesh, "virtualServices"],
        Kind::VirtualGateway => &[mesh, "virtualGateways"],
        Kind::Route => &[mesh, "virtualRouter", parent, "routes"],
        Kind::GatewayRoute => &[mesh, "virtualGateway", parent, "gatewayRoutes"],
    };
    s.extend(tail.iter().map(|x| x.to_string()));
    s
}

/// Reads every document under `paths` (files, or directories of `*.json` files), each file
/// holding one document or an array of them, and sorts them into dependency order.
pub fn read_docs(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    let mut docs = Vec::new();
    for f in files {
        docs.extend(read_file(&f)?);
    }
    // Stable: within a kind, the order of the files is kept.
    docs.sort_by_key(|d| Kind::ALL.iter().position(|k| *k == d.kind));
    Ok(docs)
}

fn read_file(f: &Path) -> anyhow::Result<Vec<Doc>> {
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", f.display()))?;
    let src = f.display().to_string();
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| Doc::from_json(item, &format!("{src}[{i}]")))
            .collect(),
        other => Ok(vec![Doc::from_json(&other, &src)?]),
    }
}

/// What `apply` did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It did not exist and was created.
    Created,
    /// It existed and was updated.
    Updated,
}

/// A `reqwest` client builder that trusts what the AWS CLI trusts for an HTTPS API whose
/// certificate comes from the cluster CA: the CA file in `AWS_CA_BUNDLE`, when set.
pub fn http_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder();
    if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) {
        let pem = std::fs::read(&path).with_context(|| {
            format!(
                "reading AWS_CA_BUNDLE {}",
                std::path::Path::new(&path).display()
            )
        })?;
        b = b.tls_built_in_root_certs(false).add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .context("AWS_CA_BUNDLE is not a PEM certificate")?,
        );
    }
    Ok(b)
}

impl Client {
    /// A client for the server at `addr` (`http://host:port`), signing with the operator's
    /// key when one is found ([`crate::sign::Credentials::resolve`]).
    pub fn new(addr: &str) -> anyhow::Result<Client> {
        let mut c = Client::unsigned(addr)?;
        c.credentials = crate::sign::Credentials::resolve()?;
        Ok(c)
    }

    /// A client for the server at `addr` that signs nothing (for an API without
    /// `--api-auth`, such as `shoal dev`'s).
    pub fn unsigned(addr: &str) -> anyhow::Result<Client> {
        let base = Url::parse(addr)
            .with_context(|| format!("{addr:?} is not a URL (like http://127.0.0.1:7070)"))?;
        let http = http_builder()?
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            base,
            http,
            stale: false,
            credentials: None,
        })
    }

    fn url(&self, segments: &[String], query: &[(&str, &str)]) -> Url {
        let mut u = self.base.clone();
        if self.stale {
            u.query_pairs_mut().append_pair("stale", "true");
        }
        {
            let mut p = u.path_segments_mut().expect("http URLs have paths");
            p.pop_if_empty();
            p.extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        if u.query() == Some("") {
            u.set_query(None);
        }
        u
    }

    /// A client for an HTTPS API whose certificate comes from the CA `ca_pem` (instead of
    /// `AWS_CA_BUNDLE`), signing with `credentials`.
    pub fn with_tls(
        addr: &str,
        ca_pem: &str,
        credentials: Option<crate::sign::Credentials>,
    ) -> anyhow::Result<Client> {
        let mut c = Client::unsigned(addr)?;
        c.http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("the CA PEM")?,
            )
            .build()
            .context("building the HTTP client")?;
        c.credentials = credentials;
        Ok(c)
    }

    /// Sends one request and decodes the JSON answer or the App Mesh error.
    pub async fn call(
        &self,
        method: Method,
        segments: &[String],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url(segments, query);
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let mut req = req.build().context("building the request")?;
        if let Some(c) = &self.credentials {
            crate::sign::sign(&mut req, c)?;
        }
        let resp = self
            .http
            .execute(req)
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status().as_u16();
        let header_code = resp
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.context("reading the response")?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text)
                .with_context(|| format!("{method} {url}: the answer is not JSON"));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = header_code
            .or_else(|| v.get("__type").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(text);
        Err(RemoteError {
            status,
            code,
            message,
        }
        .into())
    }

    /// Creates the document's resource, or updates it if it exists.
    pub async fn apply(&self, doc: &Doc) -> anyhow::Result<Applied> {
        let mut body = Map::new();
        body.insert(doc.kind.name_member().into(), doc.name.clone().into());
        if let Some(spec) = &doc.spec {
            body.insert("spec".into(), spec.clone());
        }
        if let Some(tags) = &doc.tags {
            body.insert("tags".into(), tags.clone());
        }
        match self
            .call(
                Method::PUT,
                &doc.collection(),
                &[],
                Some(Value::Object(body)),
            )
            .await
        {
            Ok(_) => return Ok(Applied::Created),
            Err(e) => match e.downcast_ref::<RemoteError>() {
                Some(r) if r.code == "ConflictException" => {}
                _ => return Err(e.context(doc.source.clone())),
            },
        }
        let mut item = doc.collection();
        item.push(doc.name.clone());
        let spec = doc.spec.clone().unwrap_or_else(|| json!({}));
        self.call(Method::PUT, &item, &[], Some(json!({ "spec": spec })))
            .await
            .map_err(|e| e.context(doc.source.clone()))?;
        Ok(Applied::Updated)
    }

    /// Lists every resource of a kind, following `nextToken`.
    pub async fn list(&self, kind: Kind, mesh: &str, parent: &str) -> anyhow::Result<Vec<Value>> {
        let segs = collection(kind, mesh, parent);
        let member = kind.list_member();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let q: Vec<(&str, &str)> = token
                .as_deref()
                .map(|t| ("nextToken", t))
                .into_iter()
                .collect();
            let v = self.call(Method::GET, &segs, &q, None).await?;
            if let Some(items) = v.get(member).and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            match v.get("nextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(out),
            }
        }
    }

    /// Describes one resource.
    pub async fn describe(
        &self,
        kind: Kind,
        mesh: &str,
        parent: &str,
        name: &str,
    ) -> anyhow::Result<Value> {
        let mut segs = collection(kind, mesh, parent);
        segs.push(name.to_string());
        self.call(Method::GET, &segs, &[], None).await
    }

    /// Deletes one resource.
    pub async fn delete(
        &self,
        kind: Kind,
        mesh: &str,
        parent: &str,
        name: &str,
    ) -> anyhow::Result<Value> {
        let mut segs = collection(kind, mesh, parent);
        segs.push(name.to_string());
        self.call(Method::DELETE, &segs, &[], None).await
    }

    /// The server's `/v1/status`.
    pub async fn status(&self) -> anyhow::Result<Value> {
        self.call(
            Method::GET,
            &["v1".to_string(), "status".to_string()],
            &[],
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_kind_follows_the_most_specific_name() {
        let cases = [
            (json!({"meshName": "m"}), Kind::Mesh),
            (
                json!({"meshName": "m", "virtualRouterName": "r", "spec": {}}),
                Kind::VirtualRouter,
            ),
            (
                json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": {}}),
                Kind::Route,
            ),
            (
                json!({"meshName": "m", "virtualGatewayName": "g", "spec": {}}),
                Kind::VirtualGateway,
            ),
            (
                json!({"meshName": "m", "virtualGatewayName": "g", "gatewayRouteName": "x", "spec": {}}),
                Kind::GatewayRoute,
            ),
            (
                json!({"meshName": "m", "virtualNodeName": "n", "spec": {}}),
                Kind::VirtualNode,
            ),
            (
                json!({"meshName": "m", "virtualServiceName": "s", "spec": {}}),
                Kind::VirtualService,
            ),
        ];
        for (v, kind) in cases {
            assert_eq!(Doc::from_json(&v, "t").unwrap().kind, kind, "{v}");
        }
    }

    #[test]
    fn doc_errors_say_what_is_missing() {
        let e = Doc::from_json(&json!({"virtualNodeName": "n"}), "f.json").unwrap_err();
        assert_eq!(e.to_string(), "f.json: meshName is required");
        let e = Doc::from_json(
            &json!({"meshName": "m", "routeName": "r", "spec": {}}),
            "f.json",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "f.json: a route needs virtualRouterName");
        let e = Doc::from_json(&json!({"meshName": "m", "virtualNodeName": "n"}), "f.json")
            .unwrap_err();
        assert_eq!(e.to_string(), "f.json: spec is required");
    }

    #[test]
    fn urls_encode_segments() {
        let c = Client::new("http://127.0.0.1:7070").unwrap();
        let u = c.url(&collection(Kind::Route, "m", "r/x"), &[("limit", "5")]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:7070/v20190125/meshes/m/virtualRouter/r%2Fx/routes?limit=5"
        );
    }
}
