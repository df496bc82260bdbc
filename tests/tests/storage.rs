//! The Raft store against damage, with the real `shoal server` binary: a log or snapshot that a
//! crash cannot explain is refused at start with the file named and exit status 78, and the data
//! dir is left exactly as it was; a torn last batch is cut off and the server starts; a store of
//! the previous format (sled) is refused with how to move over.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_e2e::{free_ports, http_request, node_status, run_shoal, shoal_bin, wait_for, Process};

/// The exit status of a server that refuses an untrusted store (sysexits' EX_CONFIG): systemd
/// units list it in `RestartPreventExitStatus=`, so a damaged server is not restarted in a loop.
const REFUSED: i32 = 78;

struct Server {
    dir: tempfile::TempDir,
    api: SocketAddr,
    raft: SocketAddr,
}

impl Server {
    fn new() -> Server {
        let ports = free_ports(2);
        Server {
            dir: tempfile::Builder::new()
                .prefix("shoal-e2e-storage-")
                .tempdir()
                .unwrap(),
            api: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            raft: SocketAddr::from(([127, 0, 0, 1], ports[1])),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn args(&self) -> Vec<String> {
        [
            "server",
            "--node-id",
            "1",
            "--data-dir",
            &self.data().to_string_lossy(),
            "--api",
            &self.api.to_string(),
            "--raft",
            &self.raft.to_string(),
            "--snapshot-after-logs",
            "20",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs the server, creates `meshes` meshes (each acknowledged), and stops it cleanly.
    fn run_and_write(&self, first: usize, meshes: usize) {
        let mut p = Process::spawn(
            "shoal server",
            &shoal_bin(),
            &self.args(),
            &self.dir.path().join("server.log"),
        );
        wait_for("the server to lead", Duration::from_secs(30), || {
            node_status(self.api)
                .filter(|s| s.leader_id == Some(1))
                .map(drop)
                .ok_or_else(|| "not yet".to_string())
        });
        for i in first..first + meshes {
            let r = http_request(
                self.api,
                "PUT",
                "/v20190125/meshes",
                Some(&format!("{{\"meshName\": \"m{i}\"}}")),
                Duration::from_secs(10),
            )
            .unwrap();
            assert_eq!(r.code, 200, "{}", r.body);
        }
        assert!(
            p.terminate(Duration::from_secs(20)).success(),
            "{}",
            p.log()
        );
    }

    /// The meshes the server serves.
    fn meshes(&self) -> Vec<String> {
        let r = http_request(
            self.api,
            "GET",
            "/v20190125/meshes?limit=100",
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let mut names: Vec<String> = v["meshes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["meshName"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// Starts the server on its damaged store: it must refuse with status 78 and `expect` in
    /// its error, and leave every file of the data dir as it was.
    fn assert_refused(&self, expect: &str) {
        let before = files(&self.data());
        let out = run_shoal(&self.args(), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(REFUSED),
            "the server must refuse its store; stderr:\n{stderr}"
        );
        assert!(stderr.contains(expect), "{expect:?} not in:\n{stderr}");
        assert!(
            stderr.contains("cannot use the Raft store"),
            "the error says what failed:\n{stderr}"
        );
        // The lock file is the one thing a start may create; it holds nothing.
        let mut after = files(&self.data());
        after.retain(|p, _| !p.ends_with("LOCK") || before.contains_key(p));
        assert_eq!(before, after, "the data dir is left as it was");
    }

    fn wal_segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.data().join("raft/wal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        v.sort();
        v
    }
}

/// Every file under `dir` with its contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

/// The offsets (start, payload length) of the records of a WAL segment, read the way the WAL
/// frames them: a 32-byte segment header, then `len u32 | crc u32 | batch u64 | kind u8 |
/// payload`, 8-byte aligned, until an all-zero header.
fn records(segment: &Path) -> Vec<(usize, usize)> {
    let b = std::fs::read(segment).unwrap();
    let mut at = 32;
    let mut out = Vec::new();
    while at + 17 <= b.len() && b[at..at + 17].iter().any(|x| *x != 0) {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, len));
        at += (17 + len).div_ceil(8) * 8;
    }
    out
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_log_is_refused() {
    let s = Server::new();
    s.run_and_write(0, 8);
    let seg = s.wal_segments()[0].clone();
    let recs = records(&seg);
    assert!(recs.len() > 10, "{} records", recs.len());
    let (at, _) = recs[3];
    flip(&seg, at as u64 + 17);
    s.assert_refused(&format!("is corrupt at offset {at}"));
}

#[test]
fn a_zeroed_or_emptied_segment_and_a_missing_log_are_refused() {
    for damage in ["zero", "empty", "no-log", "no-identity"] {
        let s = Server::new();
        s.run_and_write(0, 3);
        let seg = s.wal_segments()[0].clone();
        let expect = match damage {
            "zero" => {
                let len = std::fs::metadata(&seg).unwrap().len();
                std::fs::write(&seg, vec![0u8; len as usize]).unwrap();
                "not a segment header"
            }
            "empty" => {
                std::fs::write(&seg, b"").unwrap();
                "not a segment header"
            }
            "no-log" => {
                std::fs::remove_dir_all(s.data().join("raft/wal")).unwrap();
                "its log is missing"
            }
            _ => {
                std::fs::remove_file(s.data().join("raft/identity.json")).unwrap();
                "missing, but the log holds records"
            }
        };
        s.assert_refused(expect);
    }
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let s = Server::new();
    // 20 entries between snapshots: 45 writes make at least one.
    s.run_and_write(0, 45);
    let snaps: Vec<PathBuf> = std::fs::read_dir(s.data().join("raft/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snaps.len(), 1, "one current snapshot: {snaps:?}");
    let len = std::fs::metadata(&snaps[0]).unwrap().len();
    flip(&snaps[0], len / 2);
    s.assert_refused("is corrupt: the checksum does not match");
}

#[test]
fn a_torn_last_batch_is_cut_off_and_the_server_starts() {
    let s = Server::new();
    s.run_and_write(0, 5);
    // The last record of the log loses its payload, as a crash in the middle of its write
    // would leave it: no batch follows it.
    let seg = s.wal_segments().last().unwrap().clone();
    let (at, len) = *records(&seg).last().unwrap();
    assert!(len > 0);
    let mut b = std::fs::read(&seg).unwrap();
    for x in &mut b[at + 17..at + 17 + len] {
        *x = 0;
    }
    std::fs::write(&seg, b).unwrap();
    let mut p = Process::spawn(
        "shoal server",
        &shoal_bin(),
        &s.args(),
        &s.dir.path().join("restart.log"),
    );
    wait_for("the server to lead", Duration::from_secs(30), || {
        node_status(s.api)
            .filter(|st| st.leader_id == Some(1))
            .map(drop)
            .ok_or_else(|| "not yet".to_string())
    });
    assert!(
        p.log().contains("cut off a torn tail"),
        "the cut is logged:\n{}",
        p.log()
    );
    // Every write was acknowledged after its sync; the clean stop's last record (the cut one)
    // was not a write of a mesh.
    let want: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    assert_eq!(s.meshes(), want);
    assert!(p.terminate(Duration::from_secs(20)).success());
}

#[test]
fn a_store_of_the_previous_format_is_refused_with_how_to_move() {
    let s = Server::new();
    let raft = s.data().join("raft");
    std::fs::create_dir_all(&raft).unwrap();
    // What sled (store format 2) leaves in the directory.
    std::fs::write(raft.join("conf"), b"segment_size: 524288\n").unwrap();
    std::fs::write(raft.join("db"), vec![7u8; 4096]).unwrap();
    s.assert_refused("format 2 (sled");
    let out = run_shoal(&s.args(), Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoal snapshot save"));
    // Format 3: the write-ahead log with JSON records, as the previous build left it.
    let s = Server::new();
    let raft = s.data().join("raft");
    std::fs::create_dir_all(raft.join("wal")).unwrap();
    std::fs::write(
        raft.join("identity.json"),
        br#"{"format":3,"node_id":1,"incarnation":"0b3c1f9e-3f59-4d0e-9d55-3c0d2f1d7a11","crc32":1}"#,
    )
    .unwrap();
    s.assert_refused("format 3 (log records in JSON");
    let out = run_shoal(&s.args(), Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoal snapshot save"));
}

/// One line of `strace -ff -ttt -T -y`: when the call started, how long it took, and the line.
struct Call {
    start: f64,
    end: f64,
    text: String,
}

/// The calls of one thread's trace file (`-ff` gives each thread its own file, so no call is
/// split into "unfinished" and "resumed" halves by another thread's).
fn parse_trace(text: &str) -> Vec<Call> {
    text.lines()
        .filter_map(|l| {
            let (start, rest) = l.split_once(' ')?;
            let start: f64 = start.parse().ok()?;
            let took: f64 = rest
                .rsplit_once('<')
                .and_then(|(_, t)| t.strip_suffix('>'))
                .and_then(|t| t.parse().ok())?;
            Some(Call {
                start,
                end: start + took,
                text: rest.to_string(),
            })
        })
        .collect()
}

/// The fsync ordering, proved on the real binary: every mesh the API acknowledged was written
/// to the WAL and that file was `fdatasync`ed (or `fsync`ed) before the acknowledgement left.
#[test]
fn every_acknowledged_write_was_synced_before_its_answer() {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("strace is missing: scripts/install-tools installs it (apt-get install strace)");
    let s = Server::new();
    let traces = s.dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let mut args = vec![
        "-ff",
        "-ttt",
        "-T",
        "-y",
        "-s",
        "4096",
        "-e",
        "trace=fdatasync,fsync,pwrite64,write,writev,sendto,sendmsg",
        "-o",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.push(traces.join("t").to_string_lossy().into_owned());
    args.push(shoal_bin().to_string_lossy().into_owned());
    args.extend(s.args());
    let mut p = Process::spawn(
        "strace shoal server",
        Path::new(strace),
        &args,
        &s.dir.path().join("server.log"),
    );
    wait_for("the server to lead", Duration::from_secs(60), || {
        node_status(s.api)
            .filter(|st| st.leader_id == Some(1))
            .map(drop)
            .ok_or_else(|| "not yet".to_string())
    });
    let names: Vec<String> = (0..5).map(|i| format!("synced-{i}")).collect();
    for n in &names {
        let r = http_request(
            s.api,
            "PUT",
            "/v20190125/meshes",
            Some(&format!("{{\"meshName\": \"{n}\"}}")),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.code, 200, "{}", r.body);
    }
    // SIGTERM to the traced server (strace itself would only detach), then strace ends with it.
    let pid = p.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let server: u32 = children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .expect("strace runs the server as its child");
    shoal_e2e::send_signal(server, "TERM");
    wait_for(
        "strace and the server to exit",
        Duration::from_secs(30),
        || p.exited().map(drop).ok_or_else(|| "running".to_string()),
    );
    let calls: Vec<Call> = std::fs::read_dir(&traces)
        .unwrap()
        .flat_map(|e| parse_trace(&std::fs::read_to_string(e.unwrap().path()).unwrap()))
        .collect();
    assert!(calls.len() > 20, "the trace has {} calls", calls.len());
    for n in &names {
        let quoted = format!("\\\"{n}\\\"");
        let answer = calls
            .iter()
            .find(|c| c.text.contains("HTTP/1.1 200") && c.text.contains(&quoted))
            .unwrap_or_else(|| panic!("no answer for {n} in the trace"));
        let written = calls
            .iter()
            .find(|c| {
                // (MessagePack: the name is there as it is, after its length byte.)
                c.text.starts_with("pwrite64(") && c.text.contains(".wal>") && c.text.contains(n)
            })
            .unwrap_or_else(|| panic!("{n} was never written to the WAL"));
        let wal = written.text[..written.text.find('>').unwrap() + 1]
            .trim_start_matches("pwrite64(")
            .to_string();
        let synced = calls.iter().any(|c| {
            (c.text.starts_with("fdatasync(") || c.text.starts_with("fsync("))
                && c.text.contains(&wal)
                && c.start >= written.end
                && c.end <= answer.start
        });
        assert!(
            synced,
            "{n}: written to {wal} at {:.6}, answered at {:.6}, with no sync of the WAL in between",
            written.end, answer.start
        );
    }
}
