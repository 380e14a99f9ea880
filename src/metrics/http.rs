//! A minimal HTTP/1.1 responder for the metrics endpoint: `GET /metrics` and nothing else.
//!
//! Every client is hostile: the request head is read up to [`MAX_HEAD`] bytes within
//! [`READ_TIMEOUT`] (slowloris gets a 408, a bigger head a 431), at most [`MAX_CONNECTIONS`]
//! are served at once (more are closed at once), one request per connection
//! (`Connection: close`), and the answer is written within [`WRITE_TIMEOUT`]. A request body
//! is never read.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for the whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to write the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// OpenMetrics 1.0's media type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Judges a complete request head (up to the blank line).
fn judge(head: &[u8]) -> Answer {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Answer::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Answer::NotFound;
    }
    if method != "GET" && method != "HEAD" {
        return Answer::MethodNotAllowed;
    }
    Answer::Metrics
}

fn response(
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn plain(status: &str, extra: &str) -> Vec<u8> {
    let body = format!("{status}\n");
    response(
        status,
        "text/plain; charset=utf-8",
        extra,
        body.as_bytes(),
        false,
    )
}

/// Reads the request head: `Ok(Some(head))`, `Ok(None)` when it grew past [`MAX_HEAD`].
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(from + end + 2);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn connection<R, Fut>(mut tcp: TcpStream, refresh: Arc<R>)
where
    R: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut tcp)).await {
        Err(_) => plain("408 Request Timeout", ""),
        Ok(Err(_)) => return,
        Ok(Ok(None)) => plain("431 Request Header Fields Too Large", ""),
        Ok(Ok(Some(head))) => match judge(&head) {
            Answer::Metrics => {
                refresh().await;
                let body = super::get().encode();
                response(
                    "200 OK",
                    CONTENT_TYPE,
                    "",
                    body.as_bytes(),
                    head.starts_with(b"HEAD "),
                )
            }
            Answer::NotFound => plain("404 Not Found", ""),
            Answer::MethodNotAllowed => plain("405 Method Not Allowed", "Allow: GET, HEAD\r\n"),
            Answer::BadRequest => plain("400 Bad Request", ""),
        },
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        tcp.write_all(&answer).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Serves the endpoint on `listener` until `shutdown`. `refresh` runs before each scrape
/// (it sets the gauges read from the store).
pub async fn serve<R, Fut>(listener: TcpListener, refresh: R, shutdown: CancellationToken)
where
    R: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let refresh = Arc::new(refresh);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(5);
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    backoff = Duration::from_millis(5);
                    tcp
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Full: the connection is closed unanswered (dropped).
            continue;
        };
        let refresh = Arc::clone(&refresh);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(tcp, refresh) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_of_the_metrics_path_is_served() {
        assert_eq!(
            judge(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Answer::Metrics
        );
        assert_eq!(judge(b"GET /metrics?x=1 HTTP/1.0\r\n"), Answer::Metrics);
        assert_eq!(judge(b"HEAD /metrics HTTP/1.1\r\n"), Answer::Metrics);
        assert_eq!(
            judge(b"POST /metrics HTTP/1.1\r\n"),
            Answer::MethodNotAllowed
        );
        assert_eq!(judge(b"GET / HTTP/1.1\r\n"), Answer::NotFound);
        assert_eq!(judge(b"GET /metrics SPDY/3\r\n"), Answer::BadRequest);
        assert_eq!(judge(b"GET  /metrics HTTP/1.1\r\n"), Answer::BadRequest);
        assert_eq!(judge(b"\xff\xfe\r\n"), Answer::BadRequest);
        assert_eq!(judge(b""), Answer::BadRequest);
    }

    #[test]
    fn the_encoding_is_openmetrics_with_the_conventional_names() {
        let m = super::super::get();
        m.delivery_queued(1);
        m.delivered("overlay", 0);
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for name in [
            "peerpost_delivery_queued_total",
            "peerpost_delivery_delivered_total{route=\"overlay\"}",
            "peerpost_delivery_latency_seconds_bucket",
            "peerpost_store_object_bytes",
            "# UNIT peerpost_delivery_latency_seconds seconds",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
