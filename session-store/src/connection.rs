//! One client's socket, framed: requests in, replies out.
//!
//! Replies are buffered and written when the connection would otherwise wait for the
//! next request, so a pipelined batch is answered in a few writes instead of one per
//! command, while an interactive client still gets each answer at once.

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::codec::{Reply, RespCodec};
use crate::error::CodecError;

pub(crate) struct Connection {
    framed: Framed<TcpStream, RespCodec>,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream, codec: RespCodec) -> Connection {
        Connection {
            framed: Framed::new(stream, codec),
        }
    }

    /// The next request's arguments, or `None` when the client has closed the connection.
    /// Cancel-safe: a request that has not fully arrived stays buffered.
    pub(crate) async fn read_request(&mut self) -> Result<Option<Vec<Bytes>>, CodecError> {
        if let Some(ready) = self.framed.next().now_or_never() {
            return ready.transpose();
        }
        self.framed.flush().await?;
        self.framed.next().await.transpose()
    }

    /// Queues a reply; it is sent before the connection next waits for input, or sooner
    /// when enough replies pile up.
    pub(crate) async fn queue(&mut self, reply: impl Into<Reply>) -> Result<(), CodecError> {
        self.framed.feed(reply.into()).await
    }

    /// Sends everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), CodecError> {
        self.framed.flush().await
    }

    pub(crate) fn set_authenticated(&mut self, authenticated: bool) {
        self.framed.codec_mut().set_authenticated(authenticated);
    }
}
