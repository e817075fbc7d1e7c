//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`, so tests can also send
//! malformed requests. One request per connection (`Connection: close`); every socket
//! operation has a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use phx_threads::http::{self, HttpConfig, HttpDeps, HttpHandle};
use phx_threads::store::Store;
use serde_json::Value;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The HTTP server under test on `127.0.0.1:0`; shut down (and asserted joined) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    handle: Option<HttpHandle>,
}

impl TestServer {
    pub fn start(store: Option<Store>) -> TestServer {
        TestServer::with_config(HttpConfig::default(), store)
    }

    pub fn with_config(config: HttpConfig, store: Option<Store>) -> TestServer {
        let config = HttpConfig { addr: "127.0.0.1:0".parse().unwrap(), n_workers: 4, ..config };
        let handle = http::start(config, HttpDeps { store, cluster: None }).expect("start http");
        TestServer { addr: handle.addr, handle: Some(handle) }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    /// Sends `body` as `application/json`.
    pub fn send(&self, method: &str, path: &str, body: &str) -> Response {
        self.request(method, path, &[("Content-Type", "application/json")], Some(body.as_bytes()))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.raw(&bytes, method == "HEAD")
    }

    /// Writes `bytes` as they are and parses the response.
    pub fn raw(&self, bytes: &[u8], head_only: bool) -> Response {
        let mut stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(bytes).expect("write request");
        read_response(&mut stream, head_only)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.take().expect("handle present until drop");
        let result = handle.shutdown();
        if !std::thread::panicking() {
            result.expect("http workers joined within the bound");
        }
    }
}

/// Reads the status line and headers, then the body by Content-Length, chunked encoding,
/// or to EOF.
/// Bytes after the response (a pipelined answer) are read and dropped: read pipelined
/// answers with `parse_responses` instead.
pub fn read_response(stream: &mut TcpStream, head_only: bool) -> Response {
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("read response head");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).expect("ASCII head");
    let mut rest = raw[head_end + 4..].to_vec();
    let mut response = parse_head(&head);
    let status = response.status;
    if head_only || status == 204 || status == 304 {
        return response;
    }
    if let Some(len) = response.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
        while rest.len() < len {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).expect("read body");
            assert!(n > 0, "connection closed inside the body");
            rest.extend_from_slice(&buf[..n]);
        }
        rest.truncate(len);
        response.body = rest;
    } else {
        stream.read_to_end(&mut rest).expect("read body to EOF");
        let chunked = response.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        response.body = if chunked { dechunk(&rest) } else { rest };
    }
    response
}

/// A raw connection to `addr` whose reads and writes give up after `timeout`.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, timeout).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    stream
}

/// Everything the server sends until it closes the connection; panics if it is still open
/// when a read times out.
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            // A reset after the answer (the server closed with our data unread) also ends it.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return bytes,
            Err(e) => {
                panic!("connection still open ({e}) after {:?}", String::from_utf8_lossy(&bytes))
            }
        }
    }
}

/// Splits what a server sent into responses (each framed by its Content-Length).
pub fn parse_responses(mut bytes: &[u8]) -> Vec<Response> {
    let mut responses = Vec::new();
    while let Some(head_end) = find(bytes, b"\r\n\r\n") {
        let mut response = parse_head(&String::from_utf8_lossy(&bytes[..head_end]));
        let rest = &bytes[head_end + 4..];
        let len = response.header("content-length").map_or(rest.len(), |v| v.parse().unwrap());
        response.body = rest[..len.min(rest.len())].to_vec();
        bytes = &rest[len.min(rest.len())..];
        responses.push(response);
    }
    responses
}

/// The status line and headers (names lower-cased), with an empty body.
fn parse_head(head: &str) -> Response {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: Vec::new() }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
