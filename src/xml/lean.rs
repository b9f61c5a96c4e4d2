//! A buffered reader that holds its buffer only while there is something in it.
//!
//! Most client connections are idle most of the time. `tokio::io::BufReader` keeps its buffer for
//! the life of the connection; this one lets it go whenever the socket has nothing to read and
//! everything read was consumed, and takes a fresh one when bytes arrive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

pub struct LeanBufReader<R> {
    inner: R,
    /// Empty while idle; `capacity` bytes while reading.
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    capacity: usize,
}

impl<R> LeanBufReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        LeanBufReader {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            capacity: capacity.max(1),
        }
    }

    /// Bytes read but not consumed yet.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The inner reader; unconsumed bytes are dropped.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for LeanBufReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.filled {
            if this.buf.is_empty() {
                this.buf = vec![0; this.capacity];
            }
            let mut read = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    this.filled = read.filled().len();
                    this.pos = 0;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    // Nothing buffered and nothing to read: idle, so give the memory back.
                    this.buf = Vec::new();
                    this.pos = 0;
                    this.filled = 0;
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.filled]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amount).min(this.filled);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LeanBufReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(available)) => available,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        };
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_everything_and_frees_the_buffer_when_idle() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LeanBufReader::with_capacity(8, server);
        client.write_all(b"hello, world").await.unwrap();
        let mut line = Vec::new();
        reader.read_until(b',', &mut line).await.unwrap();
        assert_eq!(line, b"hello,");
        let mut rest = [0u8; 6];
        reader.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b" world");
        // Nothing more to read: a poll leaves the reader without a buffer.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut reader).poll_fill_buf(&mut cx).is_pending());
        assert_eq!(reader.buf.capacity(), 0);
        client.write_all(b"again").await.unwrap();
        drop(client);
        let mut tail = String::new();
        reader.read_to_string(&mut tail).await.unwrap();
        assert_eq!(tail, "again");
    }
}
