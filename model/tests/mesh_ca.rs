//! The mesh CA in the replicated model: the first one made stays, a rotation keeps the old
//! root trusted for its overlap and no longer, snapshots keep it, watch replicas never see it.

use shoal_model::{check, Command, ErrorKind, MeshAuthority, MeshCa, Model, Reply};

fn pem(what: &str, body: &str) -> String {
    format!("-----BEGIN {what}-----\n{body}\n-----END {what}-----\n")
}

fn authority(name: &str, since: u64) -> MeshAuthority {
    MeshAuthority {
        cert_pem: pem("CERTIFICATE", &format!("cert-{name}")),
        key_pem: pem("PRIVATE KEY", &format!("key-{name}")),
        root_pem: pem("CERTIFICATE", &format!("root-{name}")),
        since,
    }
}

fn init(name: &str) -> Command {
    Command::InitMeshCa {
        ca: MeshCa {
            trust_domain: "shoal".into(),
            signing: authority(name, 1),
            previous: Vec::new(),
        },
    }
}

#[test]
fn the_first_mesh_ca_stays_and_a_rotation_overlaps() {
    let mut m = Model::default();
    assert!(m.mesh_ca().is_none());
    let a = m.apply(1, &init("a"));
    assert!(matches!(a.outcome, Ok(Reply::MeshCa)));
    assert!(a.changes.is_empty());
    assert_eq!(m.revision(), 0, "the CA is not a resource");
    // Two leaders racing to make one: the first committed stays.
    m.apply(2, &init("b")).outcome.unwrap();
    let ca = m.mesh_ca().unwrap();
    assert_eq!(ca.signing.root_pem, authority("a", 1).root_pem);
    assert_eq!(ca.bundle(100), authority("a", 1).root_pem);

    // Rotate at t=100 with an overlap until t=200: both roots are trusted until then.
    let rotate = |name: &str, now: u64, until: u64| Command::RotateMeshCa {
        authority: authority(name, now),
        overlap_until: until,
        now,
    };
    m.apply(3, &rotate("c", 100, 200)).outcome.unwrap();
    let ca = m.mesh_ca().unwrap();
    assert_eq!(ca.signing.root_pem, authority("c", 100).root_pem);
    let bundle = ca.bundle(150);
    assert!(
        bundle.starts_with(&authority("c", 100).root_pem),
        "the signing root first"
    );
    assert!(bundle.contains("root-a"));
    assert!(
        !ca.bundle(200).contains("root-a"),
        "trust ends at the overlap's end"
    );
    // A later rotation drops trust that has ended by its time.
    m.apply(4, &rotate("d", 250, 300)).outcome.unwrap();
    let ca = m.mesh_ca().unwrap();
    assert_eq!(ca.previous.len(), 1);
    assert!(ca.bundle(260).contains("root-c") && !ca.bundle(260).contains("root-a"));

    // Snapshots keep it; a replica built from resources has none; Debug shows no key.
    let back: Model = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    let replica = Model::from_resources(m.revision(), m.iter().cloned());
    assert!(replica.mesh_ca().is_none());
    assert!(!format!("{:?}", m.mesh_ca().unwrap()).contains("key-"));
}

#[test]
fn rotating_without_a_mesh_ca_and_bad_authorities_are_refused() {
    let mut m = Model::default();
    let r = m.apply(
        1,
        &Command::RotateMeshCa {
            authority: authority("x", 1),
            overlap_until: 10,
            now: 1,
        },
    );
    assert_eq!(r.outcome.unwrap_err().kind, ErrorKind::NotFound);
    let mut bad = authority("x", 1);
    bad.key_pem = "not a key".into();
    assert!(check::command(&Command::RotateMeshCa {
        authority: bad.clone(),
        overlap_until: 1,
        now: 1
    })
    .is_err());
    assert!(check::command(&Command::InitMeshCa {
        ca: MeshCa {
            trust_domain: "Upper.Case".into(),
            signing: authority("x", 1),
            previous: Vec::new(),
        }
    })
    .is_err());
    assert!(check::command(&init("ok")).is_ok());
}
