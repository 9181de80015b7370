//! HTTP/1.1 by hand over a TCP connection, for what a client library will not do: send a head and
//! part of a body and then stall, or reset the connection before the answer.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to the app at `address` (`http://host:port`) that has sent the head of a POST to
/// `path` declaring `declared` body bytes, and then the first bytes `body` of that body.
pub async fn post_head(
    address: &str,
    path: &str,
    bearer: &str,
    media_type: &str,
    declared: usize,
    body: &[u8],
) -> TcpStream {
    let host = address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).await.expect("the app accepts");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: {media_type}\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Reads one response within `timeout`: its status, its head (lower-case names) and its JSON body
/// (`Null` when empty).
pub async fn read_response(stream: &mut TcpStream, timeout: Duration) -> (u16, String, Value) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = head[9..12].parse().expect("a status code");
                    let body = &buf[end + 4..end + 4 + length];
                    let json = serde_json::from_slice(body).unwrap_or(Value::Null);
                    return (status, head, json);
                }
            }
            let n = stream.read(&mut chunk).await.expect("the response arrives");
            assert!(n > 0, "connection closed before a whole response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("a response in time")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends a whole POST of `body` to `path`, waits `after`, and resets the connection (RST, not a
/// FIN) without reading the answer: a client that went away mid-request.
pub async fn post_and_reset(
    address: &str,
    path: &str,
    bearer: &str,
    media_type: &str,
    body: &[u8],
    after: Duration,
) {
    let stream = post_head(address, path, bearer, media_type, body.len(), body).await;
    tokio::time::sleep(after).await;
    // Deprecated because a linger time blocks the dropping thread; a zero one resets at once.
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(stream);
}
