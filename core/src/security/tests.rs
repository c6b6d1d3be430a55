//! Unit tests of users, grants, the gate and the failure limiter.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn user(name: &str, password: &str, grants: &[(&str, &[Permission])]) -> UserConfig {
    UserConfig {
        name: name.into(),
        password_hash: hash_password(password).unwrap(),
        grants: grants
            .iter()
            .map(|(s, p)| (s.to_string(), p.to_vec()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn config() -> SecurityConfig {
    use Permission::*;
    SecurityConfig {
        require_auth: true,
        users: vec![
            user("app", "s3cret", &[("shop", &[Read, Write]), ("*", &[Read])]),
            user(
                "proxy",
                "cluster",
                &[("*", &[Read, Write, Replicate, Admin])],
            ),
        ],
        cluster_user: Some("proxy".into()),
        cluster_password_file: Some("unused".into()),
        max_auth_failures: 3,
        ..SecurityConfig::default()
    }
}

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn hashes_verify_and_differ() {
    let a = hash_password("pw").unwrap();
    let b = hash_password("pw").unwrap();
    assert_ne!(a, b, "salted");
    assert!(a.starts_with("$argon2id$"));
    assert!(verify_password("pw", &a));
    assert!(!verify_password("pW", &a));
    assert!(!verify_password("pw", "not a hash"));
}

#[test]
fn grants_add_up_over_star() {
    let users = Users::new(&config().users);
    let app = users.verify("app", "s3cret").unwrap();
    assert!(app.allows("shop", Permission::Write));
    assert!(app.allows("other", Permission::Read));
    assert!(!app.allows("other", Permission::Write));
    assert!(!app.allows("shop", Permission::Admin));
    assert!(users.verify("app", "wrong").is_none());
    assert!(users.verify("nobody", "s3cret").is_none());
    // Remembered after the first success.
    assert!(users.verify("app", "s3cret").is_some());
}

#[test]
fn check_names_the_field() {
    let mut c = config();
    c.users[1].password_hash = "plain".into();
    assert_eq!(c.check().unwrap_err().0, "security.users[1].passwordHash");
    let mut c = config();
    c.cluster_user = Some("ghost".into());
    assert_eq!(c.check().unwrap_err().0, "security.clusterUser");
    let mut c = config();
    c.users[1].name = "app".into();
    assert_eq!(c.check().unwrap_err().0, "security.users[1].name");
    assert!(config().check().is_ok());
}

#[tokio::test]
async fn gate_requires_auth_then_enforces_grants() {
    let security = Security::new(&config());
    let mut conn = ConnectionAuth::new(security.clone(), PEER);
    let refused = conn.gate("SELECT 1").await.unwrap();
    assert_eq!(refused.error_text(), Some("authentication required"));
    assert!(conn
        .gate("AUTH app nope")
        .await
        .unwrap()
        .error_text()
        .is_some());
    assert!(conn
        .gate("AUTH app s3cret")
        .await
        .unwrap()
        .error_text()
        .is_none());
    assert!(conn.gate("SELECT 1").await.is_none());
    assert!(conn.require("shop", Permission::Write).is_ok());
    let err = conn.require("other", Permission::Write).unwrap_err();
    assert!(err.contains("WRITE") && err.contains("`other`"), "{err}");
    assert!(conn.sees("other"));
    // Only the cluster user may act for someone else.
    assert!(conn
        .gate("DIRK AS proxy")
        .await
        .unwrap()
        .error_text()
        .is_some());
    assert_eq!(conn.effective_name(), Some("app"));
}

#[tokio::test]
async fn cluster_user_acts_for_a_client() {
    let security = Security::new(&config());
    let mut conn = ConnectionAuth::new(security, PEER);
    conn.gate("AUTH proxy cluster").await.unwrap();
    assert!(conn.require("x", Permission::Admin).is_ok());
    assert!(conn
        .gate("DIRK AS app")
        .await
        .unwrap()
        .error_text()
        .is_none());
    assert!(conn.require("x", Permission::Admin).is_err());
    assert!(conn
        .gate("DIRK AS ghost")
        .await
        .unwrap()
        .error_text()
        .is_some());
}

#[tokio::test]
async fn failures_are_limited_per_address() {
    let security = Security::new(&config());
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for _ in 0..3 {
        assert!(security.verify(PEER, "app", "bad").await.is_err());
    }
    let err = security.verify(PEER, "app", "s3cret").await.unwrap_err();
    assert!(err.contains("too many failed"), "{err}");
    assert!(security.verify(other, "app", "s3cret").await.is_ok());
}

#[tokio::test]
async fn reload_keeps_sessions_with_their_permissions() {
    let security = Security::new(&config());
    let mut conn = ConnectionAuth::new(security.clone(), PEER);
    conn.gate("AUTH app s3cret").await.unwrap();
    let mut next = config();
    next.users[0].grants.remove("shop");
    security.reload(&next);
    assert!(conn.gate("SELECT 1").await.is_none());
    assert!(conn.require("shop", Permission::Write).is_err());
    next.users.remove(0);
    security.reload(&next);
    let gone = conn.gate("SELECT 1").await.unwrap();
    assert!(gone.error_text().unwrap().contains("no longer exists"));
}

#[test]
fn basic_header_round_trip() {
    let c = Credentials {
        user: "admin".into(),
        password: "a:b".into(),
    };
    assert_eq!(
        parse_basic(&c.basic_header()),
        Some(("admin".into(), "a:b".into()))
    );
    assert_eq!(parse_basic("Bearer x"), None);
}

#[tokio::test]
async fn open_without_require_auth() {
    let security = Security::new(&SecurityConfig::default());
    let mut conn = ConnectionAuth::new(security.clone(), PEER);
    assert!(conn.gate("DROP TABLE x").await.is_none());
    assert!(conn.require("x", Permission::Admin).is_ok());
    assert!(security.admin_open("/replication/promote"));
}
