//! The `[metrics] listen` endpoint: a small synchronous HTTP/1.1 server serving `/metrics`,
//! `/status` and `/healthz`, one request per connection.
//!
//! An accept thread hands each connection to a thread of its own (at most
//! `MAX_CONNECTIONS` at once; more are closed unanswered), which reads one GET request under a
//! read timeout, answers it with `Connection: close` and ends. Reports come from the
//! [`ReportSource`] the server is given (in `dispatcher run`, a request to the core over its
//! control channel), so no HTTP work ever runs on the core thread and a slow client never
//! holds the core up.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::status::StatusReport;

/// Gives the current report, or why there is none (a message for the 503 body).
pub type ReportSource = Arc<dyn Fn() -> Result<StatusReport, String> + Send + Sync>;

/// A client gets this long to send its request and to take the answer; scrapers send a few
/// hundred bytes at once, so only a stuck or hostile client ever reaches it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The request line and headers must fit in this; the server reads no bodies.
const MAX_HEAD: usize = 8 * 1024;

/// Connections served at once. Beyond it a connection is closed at once rather than queued,
/// so a flood cannot make the process spawn threads without bound.
const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} ([metrics] listen): {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot read the listening address: {0}")]
    LocalAddr(io::Error),
    #[error("cannot start the http thread: {0}")]
    Thread(io::Error),
}

/// The running server: its accept thread, stopped and joined on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr`: a separate step so that `run` can fail on a taken port before it starts
    /// the dispatcher.
    pub fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
        TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })
    }

    /// Starts serving reports from `source` on a listener from [`Server::bind`].
    pub fn start(listener: TcpListener, source: ReportSource) -> Result<Server, HttpError> {
        let addr = listener.local_addr().map_err(HttpError::LocalAddr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("http".into())
                .spawn(move || accept_loop(&listener, &stop, &source))
                .map_err(HttpError::Thread)?
        };
        log::info!("serving /metrics, /status and /healthz on http://{addr}");
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The bound address (with the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // `accept` has no timeout; a connection of our own wakes it to see the flag. A
        // wildcard address is reached through the loopback of its family.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        if TcpStream::connect_timeout(&wake, IO_TIMEOUT).is_ok() {
            if let Some(accept) = self.accept.take() {
                let _ = accept.join();
            }
        } else {
            // Without the wake-up the join could block forever; the thread ends with the
            // process instead.
            log::warn!("cannot wake the http thread on {wake}; leaving it");
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, source: &ReportSource) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                // Typically EMFILE or a connection reset before accept: the next one may work.
                log::warn!("http: cannot accept a connection: {err}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("http: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        }
        let source = source.clone();
        let done = active.clone();
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                if let Err(err) = serve_connection(stream, &source) {
                    log::debug!("http: connection ended: {err}");
                }
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(err) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("http: cannot start a connection thread: {err}");
        }
    }
}

/// An answer: status line, content type and body.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow_get: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow_get: false,
        }
    }
}

fn serve_connection(mut stream: TcpStream, source: &ReportSource) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let response = match read_head(&mut stream)? {
        Some(head) => respond(&head, source),
        None => Response::text(400, "bad request\n"),
    };
    write_response(&mut stream, &response)
}

/// Reads up to the blank line that ends the headers; `None` when the client closed first or
/// the head is too long.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8(head).ok())
}

/// Routes one request head (request line and headers).
fn respond(head: &str, source: &ReportSource) -> Response {
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "bad request\n");
    }
    // Scrapers may add parameters (`?format=...`); none of the routes takes any.
    let path = target.split('?').next().unwrap_or(target);
    let known = matches!(path, "/metrics" | "/status" | "/healthz");
    if !known {
        return Response::text(404, "not found\n");
    }
    if method != "GET" {
        let mut response = Response::text(405, "method not allowed\n");
        response.allow_get = true;
        return response;
    }
    if path == "/healthz" {
        return Response::text(200, "ok\n");
    }
    let report = match source() {
        Ok(report) => report,
        Err(err) => return Response::text(503, format!("no status: {err}\n")),
    };
    if path == "/metrics" {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: crate::metrics::render(&report),
            allow_get: false,
        }
    } else {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => Response {
                status: 200,
                content_type: "application/json",
                // The same bytes as `dispatcher status --json` prints.
                body: text + "\n",
                allow_get: false,
            },
            Err(err) => Response::text(500, format!("cannot encode status: {err}\n")),
        }
    }
}

fn write_response(stream: &mut TcpStream, response: &Response) -> io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let allow = if response.allow_get {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(response.body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ReportSource {
        Arc::new(|| Err("no core in unit tests".to_owned()))
    }

    #[test]
    fn routes_by_path_then_method() {
        let status = |head: &str| respond(head, &source()).status;
        assert_eq!(status("GET /healthz HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /healthz?x=1 HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), 503);
        assert_eq!(status("GET /metrics\r\n\r\n"), 400);
        assert_eq!(status("GET /metrics SPDY/3\r\n\r\n"), 400);
    }
}
