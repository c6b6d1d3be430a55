//! Minimal HTTP/1.1 GET and POST for the instances' admin APIs (health checks read small JSON
//! documents on loopback or a LAN; a full HTTP client would be most of the proxy's binary).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` from `addr` and parses the JSON body.
pub async fn get_json(addr: &str, path: &str, timeout: Duration) -> Result<Value, String> {
    tokio::time::timeout(timeout, request(addr, "GET", path, ""))
        .await
        .map_err(|_| format!("GET {path} timed out"))?
}

/// POSTs a JSON `body` to `path` and parses the JSON answer.
pub async fn post_json(
    addr: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Value, String> {
    tokio::time::timeout(timeout, request(addr, "POST", path, body))
        .await
        .map_err(|_| format!("POST {path} timed out"))?
}

async fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<Value, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let authorization = crate::auth::admin_header()
        .map(|h| format!("Authorization: {h}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(4 * 1024 * 1024)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200")) {
        // DirkDB's admin APIs explain a refusal in `{"error": …}`.
        let reason = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        return Err(match reason {
            Some(reason) => format!("{status}: {reason}"),
            None => status.to_string(),
        });
    }
    serde_json::from_str(body).map_err(|e| format!("bad JSON from {addr}{path}: {e}"))
}
