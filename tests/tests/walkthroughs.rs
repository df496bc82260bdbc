//! The App Mesh walkthroughs (tests/fixtures/appmesh-examples/howto-*) replayed with the AWS
//! CLI against `shoal dev --no-example`, one fresh server per walkthrough.
//!
//! The calls, their order, names and template variables are in tests/fixtures/walkthroughs.json
//! (taken from each walkthrough's mesh.sh and README). Every call must succeed, and after each
//! create or update, describe must return exactly the `spec` of the rendered request body.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};
use shoal_e2e::{
    canonical_noun, identity_params, jq_render, response_key, workspace_root, Aws, DevConfig,
    DevServer, ResourceId,
};

/// Keys of a manifest call that are not CLI name options.
const NOT_NAMES: [&str; 5] = ["op", "file", "input", "vars", "_comment"];

fn examples_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/appmesh-examples")
}

fn manifest() -> Value {
    let path = workspace_root().join("tests/fixtures/walkthroughs.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn walkthroughs(m: &Value) -> &Vec<Value> {
    m["walkthroughs"].as_array().expect("walkthroughs array")
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `virtual-node-name` → `virtualNodeName`.
fn camel(opt: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in opt.chars() {
        if c == '-' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    creates: usize,
    updates: usize,
    deletes: usize,
    describes: usize,
}

impl Stats {
    fn calls(&self) -> usize {
        self.creates + self.updates + self.deletes
    }
}

/// A walkthrough's statistics and seconds taken, or its panic message.
type Outcome = Result<(Stats, f64), String>;

/// Runs one walkthrough on its own server; panics on the first failing check.
fn run_walkthrough(w: &Value) -> Stats {
    let name = w["name"].as_str().expect("name");
    let mesh = w["mesh"].as_str().expect("mesh");
    let dir = examples_dir().join(name);
    let base_vars = str_map(&w["vars"]);
    let root = tempfile::Builder::new()
        .prefix(&format!("shoal-e2e-{name}-"))
        .tempdir()
        .unwrap();
    let server = DevServer::start(&DevConfig::in_dir(root.path()));
    let aws = Aws::new(&server.endpoint());
    let mut stats = Stats::default();
    let mut versions: HashMap<ResourceId, i64> = HashMap::new();

    for (i, call) in w["calls"].as_array().expect("calls").iter().enumerate() {
        let op = call["op"].as_str().expect("op");
        let (verb, noun) = op.split_once('-').expect("op is verb-noun");
        let noun = canonical_noun(noun);
        let what = format!("{name} call #{} ({op} {})", i + 1, call["file"]);

        // The request body, rendered as the walkthrough renders it.
        let body: Option<Value> = if let Some(file) = call["file"].as_str() {
            let mut vars = base_vars.clone();
            vars.extend(str_map(&call["vars"]));
            let vars: Vec<(String, String)> = vars.into_iter().collect();
            Some(jq_render(&dir.join(file), &vars))
        } else {
            call.get("input").cloned()
        };

        let mut args = vec![op.to_string(), "--mesh-name".into(), mesh.into()];
        // The resource's names, from the command line and the body, by JSON member.
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        names.insert("meshName".into(), mesh.into());
        for (k, v) in call.as_object().expect("call object") {
            if NOT_NAMES.contains(&k.as_str()) {
                continue;
            }
            let v = v.as_str().expect("name option value");
            assert!(
                identity_params(noun)
                    .iter()
                    .any(|(o, _)| o.trim_start_matches('-') == k),
                "manifest: {what}: {k} is not a name option of {noun}"
            );
            args.push(format!("--{k}"));
            args.push(v.to_string());
            names.insert(camel(k), v.to_string());
        }
        if let Some(b) = &body {
            for (_, member) in identity_params(noun) {
                if let Some(v) = b.get(*member).and_then(Value::as_str) {
                    let prev = names.insert(member.to_string(), v.to_string());
                    assert!(
                        prev.is_none() || prev.as_deref() == Some(v),
                        "manifest: {what}: {member} {v:?} in the file, {prev:?} on the command line"
                    );
                }
            }
            let path = root.path().join(format!(
                "{:02}-{}",
                i + 1,
                call["file"].as_str().unwrap_or("input.json")
            ));
            std::fs::write(&path, serde_json::to_vec_pretty(b).unwrap()).unwrap();
            args.push("--cli-input-json".into());
            args.push(format!("file://{}", path.display()));
        }
        let id_names: Vec<&str> = identity_params(noun)
            .iter()
            .map(|(_, member)| {
                names
                    .get(*member)
                    .unwrap_or_else(|| panic!("manifest: {what}: no {member}"))
                    .as_str()
            })
            .collect();
        let id = ResourceId::new(noun, &id_names);

        let out = aws.appmesh(&args);
        assert!(
            out.success(),
            "{what} failed ({}):\naws appmesh {}\n{}\nrequest body: {}",
            out.status,
            args.join(" "),
            out.stderr,
            body.map(|b| b.to_string()).unwrap_or_default()
        );
        let answer = &out.json[response_key(noun)];
        assert_eq!(answer["metadata"]["arn"], json!(id.arn()), "{what}: arn");

        match verb {
            "create" | "update" => {
                let version = if verb == "create" {
                    stats.creates += 1;
                    assert!(
                        !versions.contains_key(&id),
                        "manifest: {what}: {id:?} exists"
                    );
                    1
                } else {
                    stats.updates += 1;
                    versions
                        .get(&id)
                        .unwrap_or_else(|| panic!("manifest: {what}: {id:?} not created"))
                        + 1
                };
                versions.insert(id.clone(), version);
                let want = body
                    .as_ref()
                    .and_then(|b| b.get("spec"))
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                assert_eq!(answer["spec"], want, "{what}: spec in the {verb} answer");
                assert_eq!(
                    answer["metadata"]["version"],
                    json!(version),
                    "{what}: version"
                );
                assert_eq!(answer["status"]["status"], json!("ACTIVE"), "{what}");
                let described = id.describe(&aws);
                stats.describes += 1;
                assert_eq!(described["spec"], want, "{what}: spec of describe-{noun}");
                assert_eq!(
                    &described, answer,
                    "{what}: describe-{noun} differs from the {verb} answer"
                );
            }
            "delete" => {
                stats.deletes += 1;
                assert_eq!(answer["status"]["status"], json!("DELETED"), "{what}");
                assert!(
                    versions.remove(&id).is_some(),
                    "manifest: {what}: {id:?} was not created"
                );
            }
            other => panic!("manifest: {what}: unknown verb {other}"),
        }
    }
    assert!(
        versions.is_empty(),
        "manifest: {name} leaves {:?} behind",
        versions.keys()
    );
    assert_eq!(
        aws.ok(&["list-meshes"]),
        json!({"meshes": []}),
        "{name}: the store is not empty after the walkthrough's teardown"
    );
    drop(server);
    stats
}

/// Every request body in appmesh-examples/ is used by the manifest, and every file the manifest
/// names exists.
#[test]
fn manifest_covers_every_example_file() {
    let m = manifest();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for e in std::fs::read_dir(examples_dir()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            dirs.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    let listed: BTreeSet<String> = walkthroughs(&m)
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, dirs, "walkthroughs in the manifest vs. folders");
    assert_eq!(dirs.len(), 9);
    for w in walkthroughs(&m) {
        let name = w["name"].as_str().unwrap();
        let dir = examples_dir().join(name);
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".json"))
            .collect();
        let used: BTreeSet<String> = w["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["file"].as_str().map(str::to_string))
            .collect();
        assert_eq!(used, on_disk, "{name}: files used vs. files present");
    }
}

#[test]
fn walkthroughs_replay_through_the_aws_cli() {
    // Fail early, with the install hint, when a tool is missing.
    shoal_e2e::shoal_bin();
    shoal_e2e::aws_bin();
    shoal_e2e::jq_bin();

    let m = manifest();
    let all = walkthroughs(&m);
    let queue: Mutex<VecDeque<&Value>> = Mutex::new(all.iter().collect());
    let results: Mutex<Vec<(String, Outcome)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    // Two walkthroughs at a time: the AWS CLI's start-up is the slow part.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(w) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let name = w["name"].as_str().unwrap().to_string();
                let t = Instant::now();
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_walkthrough(w)))
                        .map(|st| (st, t.elapsed().as_secs_f64()))
                        .map_err(|p| {
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panic".into())
                        });
                results.lock().unwrap().push((name, r));
            });
        }
    });

    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(n, _)| all.iter().position(|w| w["name"] == n.as_str()));
    let mut total = Stats::default();
    let mut failed = Vec::new();
    for (name, r) in &results {
        match r {
            Ok((st, secs)) => {
                println!(
                    "{name}: {} calls ({} create, {} update, {} delete), {} describes, {} resources, {secs:.1} s",
                    st.calls(),
                    st.creates,
                    st.updates,
                    st.deletes,
                    st.describes,
                    st.creates
                );
                total.creates += st.creates;
                total.updates += st.updates;
                total.deletes += st.deletes;
                total.describes += st.describes;
            }
            Err(msg) => {
                println!("{name}: FAILED: {msg}");
                failed.push(format!("{name}: {msg}"));
            }
        }
    }
    println!(
        "walkthroughs: {} of {} passed, calls: {} ({} create, {} update, {} delete) + {} describes, resources: {}, {:.1} s",
        results.len() - failed.len(),
        all.len(),
        total.calls(),
        total.creates,
        total.updates,
        total.deletes,
        total.describes,
        total.creates,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(results.len(), all.len());
    assert!(
        failed.is_empty(),
        "{} walkthrough(s) failed:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}
