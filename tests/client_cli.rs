//! Tests of the `dirkdb client` command line and of `dirkdb server` start-up errors, run as a
//! user runs them: real processes, real TCP.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::process::Command;

use common::{run_client, write_file, ServerProcess};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn command_mode_runs_every_statement_and_prints_tables() {
    let server = ServerProcess::start();
    let port = server.port.to_string();
    let out = run_client(
        &[
            "127.0.0.1",
            &port,
            "-c",
            "CREATE DATABASE testdb; AMPIASAO testdb; \
             CREATE TABLE utilisateurs (id INTEGER PRIMARY KEY, nom TEXT, age INT); \
             manampia ao@ utilisateurs (nom, age) sanda ('Alice', 30), ('Bob', 25); \
             ALAIVO * FROM utilisateurs rehefa age > 26",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("Ny tahiry : testdb dia miasa ankehitriny"),
        "{stdout}"
    );
    assert!(stdout.contains("| id | nom   | age |"), "{stdout}");
    assert!(stdout.contains("|  1 | Alice |  30 |"), "{stdout}");
    assert!(stdout.contains("1 row ("), "{stdout}");
    assert!(!stdout.contains("Bob"), "{stdout}");
}

#[test]
fn script_file_with_comments_stops_at_the_first_error() {
    let server = ServerProcess::start();
    let port = server.port.to_string();
    let script = write_file(
        server.dir.path(),
        "script.sql",
        "-- set up\nCREATE DATABASE s;\nUSE s; -- trailing comment\n\
         CREATE TABLE t(x);\nINSERT INTO t VALUES (1);\nINSERT INTO nope VALUES (2);\n\
         INSERT INTO t VALUES (3);\n",
    );
    let path = script.to_str().unwrap();
    let out = run_client(&["127.0.0.1", &port, "-f", path], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Hadisoana : no such table: nope"));
    let out = run_client(
        &[
            "127.0.0.1",
            &port,
            "--format",
            "csv",
            "-c",
            "USE s; SELECT x FROM t ORDER BY x",
        ],
        None,
    );
    assert_eq!(
        text(&out.stdout),
        "x\n1\n",
        "the statement after the error ran"
    );

    // With --continue-on-error the rest runs, and the exit code still says something failed.
    let again = write_file(
        server.dir.path(),
        "again.sql",
        "USE s; INSERT INTO nope VALUES (2); INSERT INTO t VALUES (3)",
    );
    let out = run_client(
        &[
            "127.0.0.1",
            &port,
            "--continue-on-error",
            "-f",
            again.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let out = run_client(
        &[
            "127.0.0.1",
            &port,
            "--format",
            "json",
            "-c",
            "USE s; SELECT x FROM t ORDER BY x",
        ],
        None,
    );
    assert_eq!(text(&out.stdout), "[{\"x\":1},{\"x\":3}]\n");
}

#[test]
fn statements_piped_on_standard_input() {
    let server = ServerProcess::start();
    let port = server.port.to_string();
    let out = run_client(
        &["127.0.0.1", &port, "--format", "csv"],
        Some("CREATE DATABASE p;\nUSE p;\nCREATE TABLE t(a, b);\nINSERT INTO t VALUES ('x,y', NULL);\nSELECT * FROM t\n;\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a,b\n\"x,y\",\n");
}

#[test]
fn unreachable_server_exits_2_with_a_clear_message() {
    let port = common::free_port().to_string();
    let out = run_client(&["127.0.0.1", &port, "-c", "SELECT 1"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot connect to 127.0.0.1:"));
}

#[test]
fn server_refuses_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.json",
        r#"{ "instances": [ { "id": "m1", "role": "LEADER", "host": "127.0.0.1", "port": 1, "dataDirectory": "d" } ] }"#,
    );
    let out = Command::new(common::dirkdb_bin())
        .args([
            "server",
            "--config",
            config.to_str().unwrap(),
            "--instance",
            "m1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("instances[0].role") && err.contains("LEADER"),
        "{err}"
    );

    let out = Command::new(common::dirkdb_bin())
        .args(["server", "--instance", "m9"])
        .env(
            "DIRK_CONFIG_PATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.json"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("instance `m9` is not in config.json"));
}

#[test]
fn the_shipped_config_json_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.json");
    let config = dirkdb_core::config::ClusterConfig::load(std::path::Path::new(path)).unwrap();
    assert_eq!(config.instance("m1").unwrap().port, 3948);
    assert_eq!(config.instance("m2").unwrap().port, 3950);
}

/// Gives a test cluster's config a cache on free ports (the defaults would collide) and one
/// misspelt field.
fn cluster_config_with_cache(cluster: &common::cluster::Cluster) -> std::path::PathBuf {
    let path = cluster.dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["cache"] = serde_json::json!({
        "listenHost": "127.0.0.1",
        "listenPort": common::free_port(),
        "adminPort": common::free_port(),
    });
    config["limits"] = serde_json::json!({ "maxStatmentBytes": 1000 });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[tokio::test]
async fn cluster_command_runs_every_instance_replicating_and_stops_cleanly() {
    let cluster = common::cluster::Cluster::configure(1, r#"{ "maxEntries": 1000 }"#);
    let config = cluster_config_with_cache(&cluster);
    let mut child = Command::new(common::dirkdb_bin())
        .args(["cluster", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log is read as it comes; the test goes on once the cluster says it is running.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    while !log.contains("local cluster running") {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no announcement ({e}):\n{log}"));
        log.push_str(&line);
        log.push('\n');
    }
    let mut c = cluster.client(0).await;
    c.execute("CREATE DATABASE q").await.unwrap();
    c.execute("USE q").await.unwrap();
    c.execute("CREATE TABLE t(a)").await.unwrap();
    c.execute("INSERT INTO t VALUES (42)").await.unwrap();
    cluster.assert_same_data_on(0, &[0, 1]);

    // A second cluster on the same ports is refused before it announces anything.
    let second = Command::new(common::dirkdb_bin())
        .args(["cluster", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = text(&second.stderr);
    let proxy = format!("proxy 127.0.0.1:{} is in use", cluster.proxy.port);
    let m1 = format!("instance m1 127.0.0.1:{} is in use", cluster.nodes[0].port);
    assert!(err.contains(&proxy) && err.contains(&m1), "{err}");
    assert!(!err.contains("local cluster running"), "{err}");

    common::signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    log.extend(lines.try_iter().map(|line| line + "\n"));
    assert!(
        log.contains(
            "unknown field `limits.maxStatmentBytes` ignored (did you mean `maxStatementBytes`?)"
        ),
        "{log}"
    );
    // Announced once every part listens, and quiet while stopping.
    let announced = log.find("local cluster running").expect("announcement");
    for part in [
        "DirkDB cache listening",
        "DirkDB proxy listening",
        "instance=m2",
    ] {
        let at = log.find(part).unwrap_or(usize::MAX);
        assert!(at < announced, "`{part}` after the announcement:\n{log}");
    }
    for noise in ["retrying", "change feed lost", "refused"] {
        assert!(
            !log.contains(noise),
            "`{noise}` while starting or stopping:\n{log}"
        );
    }
}

#[test]
fn json_keeps_select_order_and_duplicate_columns_and_tables_tell_null_from_the_string() {
    let server = ServerProcess::start();
    let port = server.port.to_string();
    let sql = "SELECT 1 AS a, 2 AS a, 3 AS z, 4 AS b";
    let out = run_client(&["127.0.0.1", &port, "--format", "json", "-c", sql], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[{\"a\":1,\"a_2\":2,\"z\":3,\"b\":4}]\n");
    let out = run_client(&["127.0.0.1", &port, "--format", "csv", "-c", sql], None);
    assert_eq!(text(&out.stdout), "a,a,z,b\n1,2,3,4\n");
    let sql = "SELECT NULL AS n, 'NULL' AS s, 'x' AS \"two\nlines\"";
    let out = run_client(&["127.0.0.1", &port, "-c", sql], None);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| n | s    | two\\nlines |"), "{stdout}");
    assert!(stdout.contains("| ∅ | NULL | x          |"), "{stdout}");
    let out = run_client(&["127.0.0.1", &port, "--null", "(null)", "-c", sql], None);
    assert!(
        text(&out.stdout).contains("| (null) | NULL |"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn nothing_listening_exits_2_before_any_banner_even_with_empty_input() {
    let port = common::free_port().to_string();
    for stdin in [None, Some("")] {
        let out = run_client(&["127.0.0.1", &port], stdin);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            !text(&out.stdout).contains("connected"),
            "{}",
            text(&out.stdout)
        );
        assert!(text(&out.stderr).contains("cannot connect to 127.0.0.1:"));
    }
}

#[test]
fn an_http_port_is_named_as_such() {
    use std::io::{Read, Write};
    // What an admin API (axum) answers to a line that is not HTTP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let http = std::thread::spawn(move || {
        if let Ok((mut socket, _)) = listener.accept() {
            let mut buf = [0u8; 256];
            let _ = socket.read(&mut buf);
            let _ = socket.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let out = run_client(&["127.0.0.1", &port, "-c", "SELECT 1"], None);
    let _ = http.join();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is an HTTP port"),
        "{}",
        text(&out.stderr)
    );
}
