//! A minimal HTTP/1.1 client over raw tokio TCP keep-alive connections, and the closed-loop
//! load generator built on it. No HTTP library: the requests are pre-built byte strings, the
//! responses are parsed just enough (status, `Content-Length` or chunked body, `ETag`,
//! `X-Cache`), so the generator costs far less per request than the server it measures.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats::Latencies;

/// One parsed response.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// `X-Cache: HIT`.
    pub cache_hit: bool,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

/// A keep-alive connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        Conn::from_stream(TcpStream::connect(addr).await?)
    }

    pub fn from_stream(stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; 4 * 1024],
            filled: 0,
        })
    }

    /// Sends one request (complete bytes) and reads its response.
    pub async fn request(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.filled += n;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Reads the status line and headers; returns the head's length and the response with
    /// its headers parsed (no body yet), plus how the body is framed.
    async fn read_head(&mut self) -> io::Result<(Response, Framing)> {
        let head_len = loop {
            if let Some(pos) = find(&self.buf[..self.filled], b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = &self.buf[..head_len];
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed response head");
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(bad)?;
        let mut response = Response {
            status,
            ..Response::default()
        };
        let mut framing = Framing::Length(0);
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                let length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(bad)?;
                framing = Framing::Length(length);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                && value.eq_ignore_ascii_case(b"chunked")
            {
                framing = Framing::Chunked;
            } else if name.eq_ignore_ascii_case(b"etag") {
                response.etag = Some(String::from_utf8_lossy(value).into_owned());
            } else if name.eq_ignore_ascii_case(b"x-cache") {
                response.cache_hit = value.eq_ignore_ascii_case(b"hit");
            }
        }
        if status == 304 || status == 204 || status < 200 {
            framing = Framing::Length(0);
        }
        self.consume(head_len);
        Ok((response, framing))
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let (mut response, framing) = self.read_head().await?;
        match framing {
            Framing::Length(length) => {
                while self.filled < length {
                    self.fill().await?;
                }
                response.body = self.buf[..length].to_vec();
                self.consume(length);
            }
            Framing::Chunked => loop {
                let line_end = loop {
                    if let Some(pos) = find(&self.buf[..self.filled], b"\r\n") {
                        break pos;
                    }
                    self.fill().await?;
                };
                let size = parse_chunk_size(&self.buf[..line_end])?;
                let total = line_end + 2 + size + 2;
                while self.filled < total {
                    self.fill().await?;
                }
                response
                    .body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.consume(total);
                if size == 0 {
                    break;
                }
            },
        }
        Ok(response)
    }

    /// Starts a streaming GET and returns the response head; the body is then read with
    /// [`Conn::read_stream`].
    pub async fn start_stream(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        let (response, framing) = self.read_head().await?;
        if !matches!(framing, Framing::Chunked) && response.status == 200 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stream response is not chunked",
            ));
        }
        Ok(response)
    }

    /// Reads whatever arrived of a chunked stream and appends the de-chunked payload to `out`
    /// (at least one read; `Ok(false)` once the last chunk was read).
    pub async fn read_stream(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            // Take every complete chunk in the buffer.
            let mut progressed = false;
            while let Some(line_end) = find(&self.buf[..self.filled], b"\r\n") {
                let size = parse_chunk_size(&self.buf[..line_end])?;
                let total = line_end + 2 + size + 2;
                if self.filled < total {
                    break;
                }
                out.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.consume(total);
                progressed = true;
                if size == 0 {
                    return Ok(false);
                }
            }
            if progressed {
                return Ok(true);
            }
            self.fill().await?;
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> io::Result<usize> {
    let hex = line.split(|&b| b == b';').next().unwrap_or(line);
    std::str::from_utf8(hex)
        .ok()
        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))
}

enum Framing {
    Length(usize),
    Chunked,
}

/// A GET request.
pub fn get(path: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A POST request with a JSON body.
pub fn post_json(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request on a fresh connection (set-up calls, not measured).
pub async fn once(addr: SocketAddr, request: &[u8]) -> io::Result<Response> {
    let mut conn = Conn::connect(addr).await?;
    conn.request(request).await
}

/// What a load run does: which requests each connection sends (round robin over `requests`,
/// each connection starting at its own offset), what counts as a good answer, and its bounds.
pub struct Load {
    pub connections: usize,
    pub duration: Duration,
    /// Upper bound of requests per connection, whatever the duration.
    pub max_per_connection: u64,
    pub requests: Arc<Vec<Vec<u8>>>,
    pub expect: fn(&Response) -> bool,
}

/// The outcome of one load run.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub unexpected: u64,
    pub io_errors: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
    /// The first unexpected response, for the error message.
    pub first_unexpected: Option<String>,
    /// CPU time the server used during the run.
    pub server_cpu: Duration,
    /// CPU time the load generator (this process) used during the run.
    pub client_cpu: Duration,
}

impl LoadResult {
    /// Good answers per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU time per good answer, in microseconds.
    pub fn server_cpu_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.ok as f64).max(1.0)
    }
}

/// Closed loop: every connection sends a request, waits for its answer, sends the next,
/// until the duration is over or it sent `max_per_connection`.
pub async fn run_load(addr: SocketAddr, load: &Load) -> io::Result<LoadResult> {
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(Conn::connect(addr).await?);
    }
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = Vec::with_capacity(conns.len());
    for (index, mut conn) in conns.into_iter().enumerate() {
        let requests = load.requests.clone();
        let expect = load.expect;
        let cap = load.max_per_connection;
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut latencies = Vec::with_capacity(4096);
            let stride = requests.len();
            let mut next = index.wrapping_mul(7919) % stride;
            let mut sent = 0;
            while sent < cap && Instant::now() < deadline {
                let request = &requests[next];
                next = (next + 1) % stride;
                sent += 1;
                let t0 = Instant::now();
                match conn.request(request).await {
                    Ok(response) => {
                        let micros = t0.elapsed().as_micros();
                        if expect(&response) {
                            result.ok += 1;
                            latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                        } else {
                            result.unexpected += 1;
                            if result.first_unexpected.is_none() {
                                result.first_unexpected = Some(format!(
                                    "status {} (x-cache hit: {}): {}",
                                    response.status,
                                    response.cache_hit,
                                    String::from_utf8_lossy(&response.body)
                                        .chars()
                                        .take(200)
                                        .collect::<String>()
                                ));
                            }
                        }
                    }
                    Err(_) => {
                        result.io_errors += 1;
                        break;
                    }
                }
            }
            result.latencies = Latencies::from(latencies);
            result
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        let part = task
            .await
            .map_err(|err| io::Error::other(format!("load task failed: {err}")))?;
        total.ok += part.ok;
        total.unexpected += part.unexpected;
        total.io_errors += part.io_errors;
        total.latencies.merge(part.latencies);
        if total.first_unexpected.is_none() {
            total.first_unexpected = part.first_unexpected;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"ff;name=value").unwrap(), 255);
        assert!(parse_chunk_size(b"zz").is_err());
    }

    #[test]
    fn requests_are_complete() {
        let post = String::from_utf8(post_json("/x", "{}")).unwrap();
        assert!(post.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(post.ends_with("Content-Length: 2\r\n\r\n{}"));
        let get = String::from_utf8(get("/y", &[("If-None-Match", "\"e\"")])).unwrap();
        assert!(get.contains("If-None-Match: \"e\"\r\n"));
        assert!(get.ends_with("\r\n\r\n"));
    }
}
