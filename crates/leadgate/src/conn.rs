//! Client connections the gateway can cut.
//!
//! socketioxide ends a socket (its disconnect handler, its rooms, its queue)
//! only once the connection's pending WebSocket write ends, and a client
//! that stops reading can hold a write pending for as long as it keeps the
//! TCP connection open. [`Listener`] accepts connections whose reads and
//! writes fail from the moment [`Peer::cut`] is called, which ends such a
//! write at once: the gateway cuts the connection of a client it evicted
//! once telling it has failed for long enough. Each request carries its
//! connection's [`Peer`] as its `ConnectInfo`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// Accepts TCP connections as [`Conn`]s, with `TCP_NODELAY` (each
/// connection writes what is queued for it in one send; Nagle's algorithm
/// would only hold the next send back for the client's ACK).
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "Could not set TCP_NODELAY.");
        }
        let conn = Conn {
            tcp,
            cut: Arc::default(),
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// One client connection.
pub struct Conn {
    tcp: TcpStream,
    cut: Arc<Cut>,
}

#[derive(Default)]
struct Cut {
    done: AtomicBool,
    /// The tasks waiting to read and to write, woken by the cut.
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Cut {
    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// The peer of a request: its address, and the cut of its connection.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    cut: Arc<Cut>,
}

/// A [`Peer`] that does not keep its connection's state alive.
pub struct WeakPeer {
    addr: SocketAddr,
    cut: std::sync::Weak<Cut>,
}

impl WeakPeer {
    /// The peer, while its connection is open (or a request of it kept).
    pub fn upgrade(&self) -> Option<Peer> {
        Some(Peer {
            addr: self.addr,
            cut: self.cut.upgrade()?,
        })
    }

    pub fn is_gone(&self) -> bool {
        self.cut.strong_count() == 0
    }
}

impl Peer {
    pub fn downgrade(&self) -> WeakPeer {
        WeakPeer {
            addr: self.addr,
            cut: Arc::downgrade(&self.cut),
        }
    }

    /// Cuts the connection: every read and write, pending or not, fails.
    pub fn cut(&self) {
        self.cut.done.store(true, Ordering::Release);
        self.cut.reader.wake();
        self.cut.writer.wake();
    }

    /// Whether the connection was cut; for tests of this module.
    #[cfg(test)]
    fn is_cut(&self) -> bool {
        self.cut.is_done()
    }
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            cut: stream.io().cut.clone(),
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "cut by the gateway")
}

impl Conn {
    /// Polls `op` on the TCP stream unless the connection is cut; a pending
    /// operation is woken by the cut too.
    fn poll_op<T>(
        &mut self,
        cx: &mut Context<'_>,
        waker: fn(&Cut) -> &AtomicWaker,
        op: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.cut.is_done() {
            return Poll::Ready(Err(cut_error()));
        }
        match op(Pin::new(&mut self.tcp), cx) {
            Poll::Pending => {
                waker(&self.cut).register(cx.waker());
                // A cut between the poll and the registration.
                if self.cut.is_done() {
                    Poll::Ready(Err(cut_error()))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_op(cx, |c| &c.reader, |tcp, cx| tcp.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_op(cx, |c| &c.writer, |tcp, cx| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_op(
            cx,
            |c| &c.writer,
            |tcp, cx| tcp.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_op(cx, |c| &c.writer, |tcp, cx| tcp.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.is_done() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_ends_a_pending_write_and_read() {
        let mut listener = Listener(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.0.local_addr().unwrap();
        // A client that connects and never reads.
        let _client = TcpStream::connect(addr).await.unwrap();
        let (conn, remote) = axum::serve::Listener::accept(&mut listener).await;
        let peer = Peer {
            addr: remote,
            cut: conn.cut.clone(),
        };
        let (mut reader, mut writer) = tokio::io::split(conn);
        let write = tokio::spawn(async move {
            let chunk = vec![0u8; 1 << 16];
            loop {
                writer.write_all(&chunk).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        });
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            reader.read(&mut buf).await
        });
        // The write fills the buffers and waits; the read waits.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!write.is_finished() && !read.is_finished());
        peer.cut();
        assert!(peer.is_cut());
        let written = tokio::time::timeout(std::time::Duration::from_secs(2), write)
            .await
            .expect("the pending write ends")
            .unwrap();
        assert_eq!(
            written.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), read)
            .await
            .expect("the pending read ends")
            .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
