//! Accepting connections under limits, for the servers regmirror runs (the cache; the shim's
//! proxy port): a cap on connections served at once, back-off when accepting fails for lack of
//! file descriptors or memory (instead of spinning), and [`StallTimeout`], which cuts a
//! connection whose writes make no progress (a client that stopped reading).
//!
//! The open-file limit is raised to its hard maximum at start ([`raise_open_file_limit`]), and
//! the default connection cap follows from it, since a connection may hold a socket and a file.
//! [`Listener::capped`] is that set-up, and [`http1`] the HTTP/1.1 serving both servers use on
//! what it accepts.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections served at once when nothing else is configured (if the open-file limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept aside from connections: the metadata store, logs, upstream sockets.
const RESERVED_FILES: u64 = 64;
/// The longest pause between two accept attempts after a resource error.
const MAX_BACK_OFF: Duration = Duration::from_secs(1);
/// The most a connection buffers: its request head, and queued response body.
const MAX_CONNECTION_BUFFER: usize = 64 << 10;

/// HTTP/1.1 serving as regmirror's servers do it: a request head must arrive within
/// `header_timeout` (which also closes idle keep-alive connections); heads up to 64 KiB; and hyper
/// queues at most that much of a response body per connection, so a client that stops reading
/// holds little beyond the chunk being written.
pub fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER);
    builder
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.unwrap_or(u64::MAX);
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The connection cap the open-file limit supports: two descriptors per connection (a socket and
/// a blob file), some kept aside.
pub fn connections_for(open_files: u64) -> usize {
    let usable = open_files.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(1, DEFAULT_MAX_CONNECTIONS)
}

/// A TCP listener that serves at most `max` connections at once and backs off on resource
/// errors.
pub struct Listener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    /// When the cap or an accept error was last logged (at most once a minute / second).
    full_logged: Option<Instant>,
    error_logged: Option<Instant>,
}

/// An accepted connection and its slot under the cap, released when dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: OwnedSemaphorePermit,
}

impl Listener {
    /// `tcp` under a cap of `max_connections`, or, when none is configured, of what the
    /// open-file limit supports once raised to its hard maximum (a configured cap above that is
    /// kept, with a warning: accepting backs off when descriptors run out).
    pub fn capped(tcp: TcpListener, max_connections: Option<usize>) -> Self {
        let open_files = raise_open_file_limit();
        let supported = connections_for(open_files);
        let max = max_connections.unwrap_or(supported);
        if max > supported {
            tracing::warn!(
                max_connections = max,
                open_files,
                "limits.max_connections is more than the open-file limit supports; accepting \
                 will back off when descriptors run out"
            );
        }
        Listener::new(tcp, max)
    }

    pub fn new(tcp: TcpListener, max: usize) -> Self {
        Listener {
            tcp,
            slots: Arc::new(Semaphore::new(max)),
            max,
            full_logged: None,
            error_logged: None,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection, once a slot is free. Connections waiting for a slot stay in the
    /// kernel's backlog.
    pub async fn accept(&mut self) -> Accepted {
        if self.slots.available_permits() == 0 && stale(self.full_logged, Duration::from_secs(60)) {
            self.full_logged = Some(Instant::now());
            tracing::warn!(
                max = self.max,
                "connection limit reached (limits.max_connections): new connections wait"
            );
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut back_off = Duration::from_millis(10);
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => {
                    // No Nagle: a response's head and body go out at once (else delayed ACKs
                    // add ~40 ms).
                    let _ = stream.set_nodelay(true);
                    return Accepted { stream, peer, slot };
                }
                // The peer gave up before we took it: nothing to wait for.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors or memory: retrying at once would spin.
                    if stale(self.error_logged, Duration::from_secs(1)) {
                        self.error_logged = Some(Instant::now());
                        tracing::warn!(error = %e, pause_ms = back_off.as_millis() as u64, "accept failed; backing off");
                    }
                    tokio::time::sleep(back_off).await;
                    back_off = (back_off * 2).min(MAX_BACK_OFF);
                }
            }
        }
    }
}

fn stale(logged: Option<Instant>, every: Duration) -> bool {
    logged.is_none_or(|at| at.elapsed() >= every)
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An I/O stream whose writes fail with `TimedOut` once one has been pending for `limit`: a
/// client that stops reading is cut instead of holding its connection (and what is queued for
/// it) forever. Reads are not timed here: the HTTP layer times request heads, and request bodies
/// are timed where they are read.
pub struct StallTimeout<IO> {
    io: IO,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> StallTimeout<IO> {
    pub fn new(io: IO, limit: Duration) -> Self {
        StallTimeout {
            io,
            limit,
            stalled: None,
        }
    }

    /// Passes a write's outcome through, starting the stall clock when it is pending and
    /// failing once the clock runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let clock = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(clock.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {limit:?} (limits.idle_timeout)"),
                )))
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallTimeout<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn connections_follow_the_open_file_limit() {
        assert_eq!(connections_for(1024), 480);
        assert_eq!(connections_for(1 << 20), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connections_for(10), 1);
    }

    #[tokio::test]
    async fn a_writer_nobody_reads_is_cut() {
        let data = vec![0u8; 64 << 10];
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut ours = StallTimeout::new(ours, Duration::from_millis(200));
        let started = Instant::now();
        let error = ours.write_all(&data).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        let data = vec![0u8; 64 << 10];
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ours = StallTimeout::new(ours, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 512];
            while let Ok(n) = theirs.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            total
        });
        // About 640 ms in all, far beyond the stall limit, with progress every 5 ms.
        ours.write_all(&data).await.unwrap();
        drop(ours);
        assert_eq!(reader.await.unwrap(), data.len());
    }

    #[tokio::test]
    async fn connections_wait_for_a_slot() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = Listener::new(tcp, 1);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = listener.accept().await;
        let second = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(second.is_err(), "no slot while the first is served");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
        assert!(second.is_ok(), "the slot came back");
    }
}
