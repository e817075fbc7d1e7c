//! `--scrape`: a Prometheus-like scraper that fetches `GET /metrics` from the server under test
//! once a second while it runs, to show that counting costs the fan-out nothing measurable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs until dropped; counts the scrapes that returned a whole exposition.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    pub done: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Scraper {
    pub fn start(http: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if scrape_once(http).is_ok_and(|body| body.contains("# EOF")) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                // The scrape interval itself, not a synchronisation.
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Scraper { stop, done, thread: Some(thread) }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn scrape_once(http: SocketAddr) -> std::io::Result<String> {
    get(http, "/metrics")
}

/// One `GET path` (head and body, at most 16 MiB), each step bounded by a 5 s timeout.
pub fn get(http: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect_timeout(&http, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes())?;
    let mut body = String::new();
    tcp.take(16 << 20).read_to_string(&mut body)?;
    Ok(body)
}
