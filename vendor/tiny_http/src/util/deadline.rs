//! phx-threads patch 6: a stream whose reads share one total deadline. A per-read timeout
//! (upstream's, or patch 2's 30 s) never fires on a client that sends one byte every few
//! seconds, so such a client could hold a connection thread for as long as it liked.

use std::io::{Error, ErrorKind, Read, Result};
use std::time::Instant;

use super::RefinedTcpStream;

pub(crate) struct DeadlineStream {
    inner: RefinedTcpStream,
    deadline: Option<Instant>,
}

impl DeadlineStream {
    pub(crate) fn new(inner: RefinedTcpStream) -> DeadlineStream {
        DeadlineStream { inner, deadline: None }
    }

    /// Every read from now on fails with `TimedOut` once `deadline` has passed.
    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    pub(crate) fn get_mut(&mut self) -> &mut RefinedTcpStream {
        &mut self.inner
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(ErrorKind::TimedOut, "deadline passed"));
            }
            self.inner.set_read_timeout(Some(left))?;
        }
        self.inner.read(buf)
    }
}
