//! I/O wrappers: [`ObserveReads`] shows every byte read to an observer and passes writes
//! straight through (the smuggling head scan and the upgraded-connection idle clock both use
//! it); [`Lease`] lends a connection to hyper and takes it back when it goes idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What a [`Lease`] needs to know of its connection to decide when it may park.
pub trait IdleClock {
    /// How long no request has been in progress (zero while one is).
    fn idle_for(&self) -> Duration;
    /// No byte of a next request has been read since the last response ended.
    fn at_message_start(&self) -> bool;
}

/// Sees the bytes of each successful read, in order.
pub trait Observe {
    fn observe(&mut self, bytes: &[u8]);
}

/// `inner` with its reads shown to `observer`.
pub struct ObserveReads<T, O> {
    pub inner: T,
    pub observer: O,
}

impl<T, O> ObserveReads<T, O> {
    pub fn new(inner: T, observer: O) -> Self {
        Self { inner, observer }
    }
}

impl<T: AsyncRead + Unpin, O: Observe + Unpin> AsyncRead for ObserveReads<T, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.observer.observe(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, O: Unpin> AsyncWrite for ObserveReads<T, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's stream lent to one HTTP/1 connection of hyper's; handed back to the serving
/// loop when hyper drops it, so the loop can wait for the next request holding no buffer.
///
/// Parking: once the connection has had no request in progress for `park_after`, nothing
/// is left to write and no byte of a next request has been read, a read that would block
/// reports end-of-stream instead. hyper takes that as a client that closed between requests
/// and ends the connection cleanly (its read and write buffers are freed); [`Lease::poll_shutdown`]
/// does not shut the socket down, and the stream comes back through `home` marked parked. An
/// upgraded connection (WebSocket) keeps its lease, and the loop ends.
pub struct Lease<S, C> {
    stream: Option<S>,
    home: Home<S>,
    conn: Arc<C>,
    park: Option<Parking>,
}

struct Parking {
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The last write or flush did not take everything (hyper still holds bytes to send).
    write_pending: bool,
    parked: bool,
}

/// Where a [`Lease`] returns its stream: `(stream, parked)`.
pub type Home<S> = Arc<Mutex<Option<(S, bool)>>>;

impl<S, C> Lease<S, C> {
    /// Lends `stream`; `park_after` is `None` where the protocol must not be ended (HTTP/2).
    pub fn new(stream: S, home: Home<S>, conn: Arc<C>, park_after: Option<Duration>) -> Self {
        Self {
            stream: Some(stream),
            home,
            conn,
            park: park_after.map(|after| Parking {
                after,
                timer: None,
                write_pending: false,
                parked: false,
            }),
        }
    }

    fn parked(&self) -> bool {
        self.park.as_ref().is_some_and(|p| p.parked)
    }
}

impl<S, C> Drop for Lease<S, C> {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            let parked = self.parked();
            *self.home.lock().unwrap_or_else(|p| p.into_inner()) = Some((s, parked));
        }
    }
}

impl<S: AsyncRead + Unpin, C: IdleClock> AsyncRead for Lease<S, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(stream).poll_read(cx, buf);
        if r.is_ready() {
            return r;
        }
        let Some(p) = this.park.as_mut() else {
            return r;
        };
        if p.parked {
            return Poll::Ready(Ok(()));
        }
        if p.write_pending || !this.conn.at_message_start() {
            return r;
        }
        let idle = this.conn.idle_for();
        if idle.is_zero() {
            // A request is in progress (its response may still be streaming).
            return r;
        }
        if idle < p.after {
            let deadline = tokio::time::Instant::now() + (p.after - idle);
            let timer = p
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return r;
            }
        }
        p.parked = true;
        p.timer = None;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin, C> Lease<S, C> {
    fn track(&mut self, offered: usize, r: &Poll<std::io::Result<usize>>) {
        if let Some(p) = self.park.as_mut() {
            p.write_pending = !matches!(r, Poll::Ready(Ok(n)) if *n == offered);
        }
    }
}

impl<S: AsyncWrite + Unpin, C> AsyncWrite for Lease<S, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        let r = Pin::new(stream).poll_write(cx, data);
        this.track(data.len(), &r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        let r = Pin::new(stream).poll_write_vectored(cx, bufs);
        this.track(bufs.iter().map(|b| b.len()).sum(), &r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(stream).poll_flush(cx);
        if let Some(p) = this.park.as_mut()
            && !matches!(r, Poll::Ready(Ok(())))
        {
            p.write_pending = true;
        }
        r
    }

    /// A parked connection is not shut down: the serving loop keeps it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.parked() {
            return Poll::Ready(Ok(()));
        }
        match this.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
