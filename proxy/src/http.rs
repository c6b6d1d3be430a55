//! Minimal HTTP/1.1 GET and POST for the instances' admin APIs (health checks read small JSON
//! documents on loopback or a LAN; a full HTTP client would be most of the proxy's binary).
//! Over HTTPS, checked against `security.tls.caFile`, when the cluster uses TLS.

use std::time::Duration;

use serde_json::Value;

pub use crate::error::HttpError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` from `addr` and parses the JSON body.
pub async fn get_json(addr: &str, path: &str, timeout: Duration) -> Result<Value, HttpError> {
    within(timeout, "GET", path, request(addr, "GET", path, "")).await
}

/// POSTs a JSON `body` to `path` and parses the JSON answer.
pub async fn post_json(
    addr: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Value, HttpError> {
    within(timeout, "POST", path, request(addr, "POST", path, body)).await
}

/// `request`, or [`HttpError::Timeout`] after `timeout`.
async fn within(
    timeout: Duration,
    method: &'static str,
    path: &str,
    request: impl std::future::Future<Output = Result<Value, HttpError>>,
) -> Result<Value, HttpError> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| HttpError::Timeout {
            method,
            path: path.to_string(),
        })?
}

async fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<Value, HttpError> {
    // The callers' timeout bounds the whole request; this one only has to be longer.
    let mut stream = dirkdb_core::tls::connect_peer(addr, Duration::from_secs(60)).await?;
    let authorization = crate::auth::admin_header()
        .map(|h| format!("Authorization: {h}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let read = (&mut stream)
        .take(4 * 1024 * 1024)
        .read_to_end(&mut response)
        .await;
    match read {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: the answer (`Connection: close`) is all
        // there, and a cut one fails as JSON below.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(HttpError::Malformed)?;
    let line = head.lines().next().unwrap_or("");
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    if code != Some(200) {
        // DirkDB's admin APIs explain a refusal in `{"error": …}`.
        let reason = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        return Err(HttpError::Status {
            code: code.unwrap_or(0),
            line: line.to_string(),
            reason,
        });
    }
    serde_json::from_str(body).map_err(|source| HttpError::Json {
        addr: addr.to_string(),
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves one connection with `answer`, returns the address.
    async fn answering(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(answer.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_code_and_reason_and_bad_json_its_source() {
        let second = Duration::from_secs(5);
        let addr = answering("HTTP/1.1 404 Not Found\r\n\r\n{\"error\":\"no such path\"}").await;
        let e = get_json(&addr, "/x", second).await.unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert_eq!(e.to_string(), "HTTP/1.1 404 Not Found: no such path");
        let addr = answering("HTTP/1.1 200 OK\r\n\r\n{oops").await;
        let e = post_json(&addr, "/y", "{}", second).await.unwrap_err();
        assert!(matches!(e, HttpError::Json { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        let addr = answering("HTTP/1.1 200 OK\r\n\r\n{\"ok\":true}").await;
        assert_eq!(get_json(&addr, "/z", second).await.unwrap()["ok"], true);
        let addr = answering("garbage").await;
        let e = get_json(&addr, "/z", second).await.unwrap_err();
        assert!(matches!(e, HttpError::Malformed), "{e:?}");
    }
}
