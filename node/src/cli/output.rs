//! The readable tables of the client commands (`-o table`, the default).

use serde_json::Value;
use shoal_model::Kind;

/// A one-line summary of a spec for tables.
pub fn summary(kind: Kind, spec: &Value) -> String {
    let listeners = |v: &Value| -> String {
        v.get("listeners")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        let pm = &l["portMapping"];
                        format!("{}:{}", pm["protocol"].as_str().unwrap_or("?"), pm["port"])
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let targets = |r: &Value| -> String {
        r["action"]["weightedTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{}={}",
                            t["virtualNode"].as_str().unwrap_or("?"),
                            t["weight"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match kind {
        Kind::Mesh => format!(
            "egress={}",
            spec["egressFilter"]["type"].as_str().unwrap_or("DROP_ALL")
        ),
        Kind::VirtualNode => {
            let sd = &spec["serviceDiscovery"];
            let disc = if let Some(h) = sd["dns"]["hostname"].as_str() {
                format!("dns={h}")
            } else if sd["awsCloudMap"].is_object() {
                format!(
                    "cloudmap={}.{}",
                    sd["awsCloudMap"]["serviceName"].as_str().unwrap_or("?"),
                    sd["awsCloudMap"]["namespaceName"].as_str().unwrap_or("?")
                )
            } else {
                "no-discovery".into()
            };
            let backends = spec["backends"].as_array().map(|b| b.len()).unwrap_or(0);
            format!(
                "listeners={} {} backends={}",
                listeners(spec),
                disc,
                backends
            )
        }
        Kind::VirtualRouter | Kind::VirtualGateway => format!("listeners={}", listeners(spec)),
        Kind::Route => {
            for t in ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"] {
                if spec[t].is_object() {
                    return format!("{} -> {}", t.trim_end_matches("Route"), targets(&spec[t]));
                }
            }
            String::new()
        }
        Kind::VirtualService => {
            let p = &spec["provider"];
            if let Some(n) = p["virtualNode"]["virtualNodeName"].as_str() {
                format!("node={n}")
            } else if let Some(r) = p["virtualRouter"]["virtualRouterName"].as_str() {
                format!("router={r}")
            } else {
                "no-provider".into()
            }
        }
        Kind::GatewayRoute => {
            for t in ["httpRoute", "http2Route", "grpcRoute"] {
                if let Some(vs) =
                    spec[t]["action"]["target"]["virtualService"]["virtualServiceName"].as_str()
                {
                    return format!("{} -> {vs}", t.trim_end_matches("Route"));
                }
            }
            String::new()
        }
    }
}

/// Renders described resources as aligned columns.
pub fn table(kind: Kind, items: &[Value]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let parent_col = match kind {
        Kind::Route => Some("ROUTER"),
        Kind::GatewayRoute => Some("GATEWAY"),
        _ => None,
    };
    let mut header = vec!["NAME".to_string()];
    if kind != Kind::Mesh {
        header.push("MESH".into());
    }
    if let Some(p) = parent_col {
        header.push(p.into());
    }
    header.extend(["VERSION", "STATUS", "SPEC"].map(String::from));
    rows.push(header);
    for it in items {
        let mut row = vec![it[kind.name_member()]
            .as_str()
            .unwrap_or_default()
            .to_string()];
        if kind != Kind::Mesh {
            row.push(it["meshName"].as_str().unwrap_or_default().to_string());
        }
        match kind {
            Kind::Route => row.push(
                it["virtualRouterName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            Kind::GatewayRoute => row.push(
                it["virtualGatewayName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            _ => {}
        }
        row.push(it["metadata"]["version"].to_string());
        row.push(
            it["status"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        row.push(summary(kind, &it["spec"]));
        rows.push(row);
    }
    align(&rows)
}

pub(super) fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_table_shows_targets_and_parent() {
        let item = json!({
            "routeName": "r1", "meshName": "m", "virtualRouterName": "vr",
            "metadata": {"version": 3}, "status": {"status": "ACTIVE"},
            "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                {"virtualNode": "a", "weight": 60}, {"virtualNode": "b", "weight": 40}]}}}
        });
        assert_eq!(
            table(Kind::Route, &[item]),
            "NAME  MESH  ROUTER  VERSION  STATUS  SPEC\n\
             r1    m     vr      3        ACTIVE  http -> a=60,b=40\n"
        );
    }
}
