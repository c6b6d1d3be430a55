//! TLS against real sockets on loopback, with a test CA made by rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::net::TcpListener;

use super::*;
use crate::accept_loop::{serve_clients, ServeOptions};
use crate::connection::{ClientConnection, Incoming, ServerConnection};
use crate::frame::Frame;

/// A CA and one certificate it signed for localhost and 127.0.0.1, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    make_pki_for(dir, name, &["localhost", "127.0.0.1"])
}

/// A CA and one certificate it signed for `names`.
fn make_pki_for(dir: &Path, name: &str, names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |file: &str, text: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
    }
}

fn tls_config(pki: &Pki) -> TlsConfig {
    TlsConfig {
        cert_file: Some(pki.cert.clone()),
        key_file: Some(pki.key.clone()),
        ca_file: Some(pki.ca.clone()),
        ..TlsConfig::default()
    }
}

fn server(tls: TlsConfig) -> Arc<TlsServer> {
    let config = SecurityConfig {
        tls: Some(tls),
        ..SecurityConfig::default()
    };
    TlsServer::from_config(&config).unwrap().unwrap()
}

#[test]
fn files_that_cannot_be_used_are_named_with_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let other = make_pki(dir.path(), "b");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let check = |tls: TlsConfig| tls.check().unwrap_err();

    let (field, msg) = check(TlsConfig {
        cert_file: Some(dir.path().join("missing.pem")),
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.certFile");
    assert!(
        msg.contains("cannot read") && msg.contains("missing.pem"),
        "{msg}"
    );

    let (field, msg) = check(TlsConfig {
        cert_file: Some(garbage.clone()),
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.certFile");
    assert!(msg.contains("holds no PEM certificate"), "{msg}");

    let (field, msg) = check(TlsConfig {
        key_file: Some(garbage.clone()),
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.keyFile");
    assert!(msg.contains("holds no PEM private key"), "{msg}");

    let (field, msg) = check(TlsConfig {
        key_file: Some(other.key.clone()),
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.keyFile");
    assert!(msg.contains("is not the private key of certFile"), "{msg}");

    let (field, msg) = check(TlsConfig {
        ca_file: Some(garbage),
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.caFile");
    assert!(msg.contains("holds no PEM certificate"), "{msg}");

    let (field, _) = check(TlsConfig {
        key_file: None,
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.keyFile");

    let (field, msg) = check(TlsConfig {
        ca_file: None,
        mutual_tls: true,
        ..tls_config(&pki)
    });
    assert_eq!(field, "security.tls.caFile");
    assert!(msg.contains("mutualTls"), "{msg}");

    assert_eq!(tls_config(&pki).check(), Ok(()));
}

/// An accept loop whose handler answers each statement with `tls=<bool> node=<bool>`.
async fn echo_port(tls: Arc<TlsServer>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let options = ServeOptions {
        max_connections: 8,
        refusal: "full".into(),
        shutdown_timeout: Duration::from_secs(1),
        tls: Some(tls),
        limits: crate::conn_limit::ClientLimits::unlimited(&Default::default()),
    };
    tokio::spawn(serve_clients(
        listener,
        options,
        std::future::pending::<()>(),
        || {},
        |stream, _shutdown, _slot| async move {
            let mut conn = ServerConnection::new(stream, 1024);
            while let Ok(Some(Incoming::Statement(_))) = conn.read_statement().await {
                let s = conn.get_ref();
                let text = format!("tls={} node={}", s.is_tls(), s.has_node_certificate());
                if conn.send(&Frame::Message(text)).await.is_err() {
                    return;
                }
            }
        },
    ));
    addr
}

async fn ask(stream: Stream) -> String {
    let mut conn = ClientConnection::new(stream, 1 << 20);
    conn.send_statement("SELECT 1").await.unwrap();
    match conn.read_frame().await.unwrap() {
        Some(Frame::Message(m)) => m,
        other => panic!("unexpected {other:?}"),
    }
}

const SECOND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn one_port_serves_tls_and_plaintext_told_apart_by_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let addr = echo_port(server(tls_config(&pki))).await;
    let client = TlsClient::new(Some(&pki.ca), None).unwrap();
    let tls = connect(&addr, SECOND, Some(&client)).await.unwrap();
    assert_eq!(ask(tls).await, "tls=true node=false");
    let plain = connect(&addr, SECOND, None).await.unwrap();
    assert_eq!(ask(plain).await, "tls=false node=false");
    // A node presents its own certificate, which caFile verifies.
    let node = TlsClient::for_node(&tls_config(&pki)).unwrap();
    let stream = connect(&addr, SECOND, Some(&node)).await.unwrap();
    assert_eq!(ask(stream).await, "tls=true node=true");
}

#[tokio::test]
async fn required_tls_refuses_plaintext_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let addr = echo_port(server(TlsConfig {
        required: true,
        ..tls_config(&pki)
    }))
    .await;
    let plain = connect(&addr, SECOND, None).await.unwrap();
    let mut conn = ClientConnection::new(plain, 1 << 20);
    conn.send_statement("SELECT 1").await.unwrap();
    match conn.read_frame().await.unwrap() {
        Some(Frame::Message(m)) => assert!(m.contains("security.tls.required"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(conn.read_frame().await, Ok(None) | Err(_)));
    let client = TlsClient::new(Some(&pki.ca), None).unwrap();
    let tls = connect(&addr, SECOND, Some(&client)).await.unwrap();
    assert_eq!(ask(tls).await, "tls=true node=false");
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_naming_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let other = make_pki(dir.path(), "b");
    let addr = echo_port(server(tls_config(&pki))).await;
    let client = TlsClient::new(Some(&other.ca), None).unwrap();
    let e = connect(&addr, SECOND, Some(&client)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ConnectError::Tls { .. }), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    // The port goes on serving.
    let plain = connect(&addr, SECOND, None).await.unwrap();
    assert_eq!(ask(plain).await, "tls=false node=false");
}

#[tokio::test]
async fn a_node_certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let other = make_pki(dir.path(), "b");
    let addr = echo_port(server(TlsConfig {
        mutual_tls: true,
        ..tls_config(&pki)
    }))
    .await;
    // It trusts the server, but the server does not trust its certificate.
    let rogue = TlsClient::new(Some(&pki.ca), Some((&other.cert, &other.key))).unwrap();
    let refused = match connect(&addr, SECOND, Some(&rogue)).await {
        // TLS 1.3: the client finishes first; the server's alert comes at the first read.
        Ok(stream) => {
            let mut conn = ClientConnection::new(stream, 1 << 20);
            let _ = conn.send_statement("SELECT 1").await;
            conn.read_frame().await.unwrap_err().to_string()
        }
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("UnknownCA"), "{refused}");
}

#[tokio::test]
async fn a_server_name_checks_certificates_that_do_not_name_the_dialled_host() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki_for(dir.path(), "n", &["db.internal"]);
    let port = server(tls_config(&pki));
    let addr = echo_port(port.clone()).await;
    // Dialled at 127.0.0.1, which the certificate does not name: refused, and counted.
    let client = TlsClient::new(Some(&pki.ca), None).unwrap();
    let text = connect(&addr, SECOND, Some(&client))
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("not valid for name"), "{text}");
    // With the name the certificate carries (security.tls.serverName), it is accepted.
    let named = TlsClient::for_node(&TlsConfig {
        server_name: Some("db.internal".into()),
        ..tls_config(&pki)
    })
    .unwrap();
    let tls = connect(&addr, SECOND, Some(&named)).await.unwrap();
    assert_eq!(ask(tls).await, "tls=true node=true");
    // A name that cannot be a certificate's is refused, naming the field.
    let (field, _) = TlsConfig {
        server_name: Some("bad name".into()),
        ..tls_config(&pki)
    }
    .check()
    .unwrap_err();
    assert_eq!(field, "security.tls.serverName");
    // The refused handshake was counted by the port (its alert may arrive just after).
    for _ in 0..50 {
        if port.handshake_failures() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(port.handshake_failures(), 1);
}

#[test]
fn a_host_and_port_gives_the_name_to_check() {
    assert!(matches!(
        server_name("db1.example:3948"),
        Ok(ServerName::DnsName(_))
    ));
    assert!(matches!(
        server_name("127.0.0.1:3948"),
        Ok(ServerName::IpAddress(_))
    ));
    assert!(matches!(
        server_name("[::1]:3948"),
        Ok(ServerName::IpAddress(_))
    ));
    assert!(server_name("bad host:1").is_err());
}

#[test]
fn a_misspelt_tls_field_is_reported_with_the_one_it_meant() {
    let text = r#"{ "instances": [ { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1",
        "port": 3948, "dataDirectory": "d" } ],
        "security": { "tls": { "certFile": "c.pem", "requried": true } } }"#;
    let (config, unknown) = crate::config::ClusterConfig::parse_reporting(text).unwrap();
    let tls = config.security.tls.expect("tls section");
    assert_eq!(tls.cert_file, Some(PathBuf::from("c.pem")));
    assert!(!tls.required);
    let seen: Vec<(String, Option<&str>)> = unknown
        .into_iter()
        .map(|u| (u.path, u.suggestion))
        .collect();
    assert_eq!(
        seen,
        vec![("security.tls.requried".to_string(), Some("required"))]
    );
}
