//! A blocking `GET` of the observation listener, for the admin CLI's `health` and for tests:
//! one request per connection, a bounded response, a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The largest response read (a scrape of a busy server is ~100 KB).
pub const RESPONSE_BYTES_MAX: u64 = 16 << 20;

/// A response: its status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// `GET path` from the listener at `addr`, within `timeout`.
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Fetched> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(RESPONSE_BYTES_MAX).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    Ok(Fetched { status: status.ok_or_else(bad)?, body: body.to_owned() })
}
