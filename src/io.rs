//! An I/O wrapper that shows every byte read to an observer and passes writes straight
//! through: the smuggling head scan and the upgraded-connection idle clock both use it.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
