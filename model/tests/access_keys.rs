//! Access keys in the replicated model: bootstrap succeeds once, keys survive the model's
//! serialized form (snapshots), never change the revision, and never reach a watch replica.

use shoal_model::store::AccessKey;
use shoal_model::{Command, ErrorKind, Model, Reply};

fn key(id: &str) -> AccessKey {
    AccessKey {
        id: id.into(),
        secret: format!("secret-of-{id}"),
        policy: r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#.into(),
        description: String::new(),
        created_at: 1,
    }
}

#[test]
fn bootstrap_once_put_revoke_and_snapshot() {
    let mut m = Model::default();
    let boot = Command::BootstrapAccessKeys {
        keys: vec![key("SHOALADMIN"), key("SHOALSECOND")],
    };
    let a = m.apply(1, &boot);
    assert!(matches!(a.outcome, Ok(Reply::AccessKeys { ref ids }) if ids.len() == 2));
    assert!(a.changes.is_empty());
    assert_eq!(
        m.revision(),
        0,
        "keys are not resources: the revision stays"
    );
    // A second bootstrap, wherever it comes from, is refused and changes nothing.
    let again = m.apply(
        2,
        &Command::BootstrapAccessKeys {
            keys: vec![key("SHOALOTHER")],
        },
    );
    assert_eq!(again.outcome.unwrap_err().kind, ErrorKind::Forbidden);
    assert!(m.access_key("SHOALOTHER").is_none());

    m.apply(
        3,
        &Command::PutAccessKey {
            key: key("SHOALREAD"),
        },
    )
    .outcome
    .unwrap();
    let dup = m.apply(
        4,
        &Command::PutAccessKey {
            key: key("SHOALREAD"),
        },
    );
    assert_eq!(dup.outcome.unwrap_err().kind, ErrorKind::Conflict);
    m.apply(
        5,
        &Command::RevokeAccessKey {
            id: "SHOALREAD".into(),
        },
    )
    .outcome
    .unwrap();
    assert!(m.access_key("SHOALREAD").is_none());
    let gone = m.apply(
        6,
        &Command::RevokeAccessKey {
            id: "SHOALREAD".into(),
        },
    );
    assert_eq!(gone.outcome.unwrap_err().kind, ErrorKind::NotFound);

    // Snapshots keep the keys; a watch replica built from resources has none.
    let back: Model = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(
        back.access_key("SHOALADMIN").map(|k| k.secret.as_str()),
        Some("secret-of-SHOALADMIN")
    );
    assert_eq!(back, m);
    let replica = Model::from_resources(m.revision(), m.iter().cloned());
    assert_eq!(replica.access_keys().count(), 0);
    // And the Debug form never shows a secret.
    assert!(!format!("{:?}", key("SHOALX")).contains("secret-of"));
}
