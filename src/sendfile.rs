//! Sending file bytes to a plain-http client with `sendfile(2)`, under hyper, which only writes
//! byte slices: the page cache goes straight to the socket, with no copy into the server's memory
//! and none out of it into the socket.
//!
//! A body that wants a file's bytes sent this way yields a *placeholder* for them
//! ([`SendfileQueue::placeholder`]): a `Bytes` of the right length whose memory is one shared
//! region of zeroes that nothing ever writes or reads, and whose file span waits in the
//! connection's queue. hyper counts the placeholder against the Content-Length and hands it, in
//! order, to the connection's [`SendfileStream`] as an `IoSlice`; the stream recognises the
//! region's address and sends the span's bytes from the file instead, in as many `sendfile`
//! calls as the socket takes. What the slice's address says (how far into the placeholder hyper
//! is) must agree with what the stream has sent of the span at the head of the queue, or the
//! connection is cut: a body can never go out with bytes other than the file's.
//!
//! A span leaves the queue when its placeholder is dropped (hyper drops it once written, or with
//! the connection). Only a plain `SendfileStream` knows placeholders: TLS connections get no
//! queue (a request's extensions carry it), and their bodies are read into memory.
//!
//! The file must hold the span's bytes for good when the placeholder is made (a fill's spool file
//! up to what was written): they are read when the socket has room, and `sendfile` may wait for
//! the disk on the server's thread if the pages left the page cache, so callers use it for bytes
//! written recently. Who uses it: a fill's readers that fell behind its in-memory window
//! ([`crate::cache::fill`]). Readers keeping up send from the window instead: on loopback the
//! receiver of page-sized `sendfile` fragments pays more than the copy saved (bench/README).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::sync::lock;

/// The longest span one placeholder stands for.
pub(crate) const MAX_SPAN: usize = 4 << 20;

/// The zeroes every placeholder points into: allocated zeroed and never touched, so the kernel
/// maps it lazily and it costs no resident memory.
fn region() -> &'static [u8] {
    static REGION: OnceLock<&'static [u8]> = OnceLock::new();
    REGION.get_or_init(|| Box::leak(vec![0u8; MAX_SPAN].into_boxed_slice()))
}

/// Where `slice` starts in the placeholder region, if it lies there.
fn placeholder_offset(slice: &[u8]) -> Option<usize> {
    let region = region().as_ptr_range();
    let start = slice.as_ptr();
    (region.contains(&start) && !slice.is_empty()).then(|| start as usize - region.start as usize)
}

/// Whether `bytes` is a placeholder (for tests of the bodies that make them).
#[cfg(test)]
pub(crate) fn is_placeholder(bytes: &[u8]) -> bool {
    placeholder_offset(bytes).is_some()
}

/// One file span waiting for its placeholder to be written.
#[derive(Debug)]
struct Span {
    id: u64,
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// Bytes of it sent so far.
    sent: usize,
}

#[derive(Debug, Default)]
struct Queue {
    spans: VecDeque<Span>,
    next_id: u64,
}

/// A connection's queue of file spans, handed to the requests it serves (as a request
/// extension) so their bodies can yield placeholders.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendfileQueue(Arc<Mutex<Queue>>);

impl SendfileQueue {
    /// A body chunk standing for bytes `offset..offset + len` of `file` (`len` at most
    /// [`MAX_SPAN`]), which the connection's [`SendfileStream`] sends from the file.
    pub(crate) fn placeholder(&self, file: Arc<File>, offset: u64, len: usize) -> Bytes {
        assert!(
            len > 0 && len <= MAX_SPAN,
            "a placeholder stands for 1..=MAX_SPAN bytes"
        );
        let id = {
            let mut queue = lock(&self.0);
            let id = queue.next_id;
            queue.next_id += 1;
            queue.spans.push_back(Span {
                id,
                file,
                offset,
                len,
                sent: 0,
            });
            id
        };
        Bytes::from_owner(Placeholder {
            bytes: &region()[..len],
            queue: self.clone(),
            id,
        })
    }

    /// The file and offset for the next `len` bytes of the unfinished span at the head of the
    /// queue, when hyper is `done` bytes into its placeholder; an error when the two disagree.
    fn next(&self, done: usize, len: usize) -> io::Result<(Arc<File>, u64)> {
        let queue = lock(&self.0);
        let span = queue.spans.iter().find(|span| span.sent < span.len);
        match span {
            Some(span) if span.sent == done && done + len == span.len => {
                Ok((span.file.clone(), span.offset + done as u64))
            }
            _ => Err(io::Error::other(
                "sendfile: a placeholder is out of step with its file span",
            )),
        }
    }

    /// Counts `n` bytes sent of the unfinished span at the head of the queue.
    fn sent(&self, n: usize) {
        let mut queue = lock(&self.0);
        if let Some(span) = queue.spans.iter_mut().find(|span| span.sent < span.len) {
            span.sent += n;
        }
    }

    fn remove(&self, id: u64) {
        let mut queue = lock(&self.0);
        if let Some(at) = queue.spans.iter().position(|span| span.id == id) {
            queue.spans.remove(at);
        }
    }
}

/// The owner of a placeholder's `Bytes`: takes its span out of the queue when dropped.
struct Placeholder {
    bytes: &'static [u8],
    queue: SendfileQueue,
    id: u64,
}

impl AsRef<[u8]> for Placeholder {
    fn as_ref(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        self.queue.remove(self.id);
    }
}

/// A plain TCP connection whose writes send placeholders' spans from their files.
#[derive(Debug)]
pub(crate) struct SendfileStream {
    tcp: TcpStream,
    queue: SendfileQueue,
}

impl SendfileStream {
    /// The stream and the queue its requests' bodies fill.
    pub(crate) fn new(tcp: TcpStream) -> (Self, SendfileQueue) {
        let queue = SendfileQueue::default();
        (
            SendfileStream {
                tcp,
                queue: queue.clone(),
            },
            queue,
        )
    }

    /// Sends what `slice`, a placeholder's remaining bytes, stands for.
    fn poll_send_span(
        &self,
        cx: &mut Context<'_>,
        slice: &[u8],
        done: usize,
    ) -> Poll<io::Result<usize>> {
        let (file, offset) = self.queue.next(done, slice.len())?;
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                let mut at = offset;
                rustix::fs::sendfile(&self.tcp, &*file, Some(&mut at), slice.len())
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "sendfile: the file ends before the span",
                    )));
                }
                Ok(n) => {
                    self.queue.sent(n);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Plain slices up to the first placeholder go out in one `writev`; a placeholder first in
    /// line goes out with `sendfile`.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|buf| !buf.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some(done) = placeholder_offset(&bufs[first]) {
            return self.poll_send_span(cx, &bufs[first], done);
        }
        let plain = bufs[first..]
            .iter()
            .position(|buf| placeholder_offset(buf).is_some())
            .map_or(bufs.len(), |at| first + at);
        Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[first..plain])
    }

    fn is_write_vectored(&self) -> bool {
        // hyper must queue body chunks as they are (it would copy them into one buffer
        // otherwise, placeholders included).
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A file of `len` bytes that differ from their neighbours.
    fn file_of(len: usize) -> (Arc<File>, Vec<u8>) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        (Arc::new(file), content)
    }

    /// Serves one connection with hyper over a `SendfileStream`, answering with the chunks
    /// `body` makes from the connection's queue (Content-Length `len`); returns what a client
    /// received after the head, and the queue once the connection ended.
    async fn serve_one(
        len: usize,
        body: impl Fn(&SendfileQueue) -> Vec<Bytes> + Send + Sync + 'static,
    ) -> (Vec<u8>, SendfileQueue) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(body);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (stream, queue) = SendfileStream::new(tcp);
            let service_queue = queue.clone();
            let service = hyper::service::service_fn(move |_request| {
                let chunks = body(&service_queue);
                async move {
                    let stream = futures_util::stream::iter(chunks).map(Ok::<_, io::Error>);
                    let mut response = http::Response::new(axum::body::Body::from_stream(stream));
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_LENGTH, len.into());
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            queue
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut received = Vec::new();
        let _ = client.read_to_end(&mut received).await;
        let head_end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let queue = server.await.unwrap();
        (received.split_off(head_end), queue)
    }

    #[tokio::test]
    async fn placeholders_go_out_as_their_files_bytes_between_plain_chunks() {
        // Spans larger than a socket buffer take several sendfile calls each.
        let (file, content) = file_of(2 * MAX_SPAN);
        let expected: Vec<u8> = [
            &b"plain "[..],
            &content[3..13],
            b" between ",
            &content[100..100 + MAX_SPAN],
            &content[MAX_SPAN..],
        ]
        .concat();
        let len = expected.len();
        let (received, queue) = serve_one(len, move |queue| {
            vec![
                Bytes::from_static(b"plain "),
                queue.placeholder(file.clone(), 3, 10),
                Bytes::from_static(b" between "),
                queue.placeholder(file.clone(), 100, MAX_SPAN),
                queue.placeholder(file.clone(), MAX_SPAN as u64, MAX_SPAN),
            ]
        })
        .await;
        assert_eq!(received.len(), len);
        assert!(received == expected, "the files' bytes, in order");
        assert!(lock(&queue.0).spans.is_empty(), "every span left the queue");
    }

    #[tokio::test]
    async fn a_placeholder_its_connection_does_not_know_cuts_the_connection() {
        let (file, content) = file_of(4096);
        let (received, _) = serve_one(4096 + 5, move |_| {
            // Made by another connection's queue: this one has no span for it.
            vec![
                Bytes::from_static(b"head "),
                SendfileQueue::default().placeholder(file.clone(), 0, 4096),
            ]
        })
        .await;
        assert_eq!(
            received, b"head ",
            "no byte of the placeholder's zeroes went out"
        );
        assert_eq!(content.len(), 4096);
    }

    #[test]
    fn a_dropped_placeholder_leaves_the_queue() {
        let (file, _) = file_of(10);
        let queue = SendfileQueue::default();
        let kept = queue.placeholder(file.clone(), 0, 5);
        drop(queue.placeholder(file, 5, 5));
        assert_eq!(lock(&queue.0).spans.len(), 1);
        assert!(placeholder_offset(&kept).is_some());
        assert!(placeholder_offset(b"plain").is_none());
        drop(kept);
        assert!(lock(&queue.0).spans.is_empty());
    }
}
