//! One client connection: a reader task that runs the handshake, then channels, content
//! assembly and methods; and a writer task fed by a bounded queue, so the broker core
//! never waits on a slow socket. While the broker's memory alarm is on, a connection that
//! publishes is told with connection.blocked and its socket is not read until the alarm
//! goes off.
//!
//! In confirm mode, a persistent message that reached a durable queue is confirmed only
//! once its journal record is on disk: its confirm waits in `confirms` while the reader
//! goes on reading, and leaves when the journal's synced position passes it. Confirms
//! may thus overtake each other, which AMQP allows (each acks one delivery tag).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{
    AMQPClass, access, basic, channel, confirm, connection, exchange, queue, tx as tx_class,
};
use amq_protocol::types::{FieldTable, ShortString};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::broker::{Broker, ConnHandle, ConnId, Published, TimedOut};
use super::codec::{AmqpCodec, CodecError, Inbound, Outbound};
use super::error::{AmqpError, ErrorKind, code, short};
use super::exchange::{Destination, ExchangeKind};
use super::handshake::{FRAME_MIN_SIZE, HandshakeEnd, Opened, Tuned, handshake};
use super::names;
use super::node::{ConnInfo, ForceClose, Node, connection_name, now_millis};
use super::permissions::{Perm, Permissions, Resource, TopicPermission};
use super::queue::Message;
use super::queue_args::parse_expiration;
use super::reply_to;
use super::tls::TlsInfo;
use super::tx::{BufferedPublish, Mode};
use super::users::User;

/// Frames (or whole deliveries) a connection may have waiting to be written.
const OUTBOUND_CAPACITY: usize = 1024;
/// RabbitMQ's default `max_message_size` (128 MiB): a larger message closes its channel
/// with 406, announced by its content header before its body is buffered.
const MAX_MESSAGE_SIZE: u64 = 128 << 20;
/// How long we wait for close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// connection.close-ok as a client sends it: a method frame on channel 0, class 10, method 51.
const CLOSE_OK_FRAME: [u8; 12] = [1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 51, 0xce];
/// How long the writer may take to flush the last frames.
const WRITER_TIMEOUT: Duration = Duration::from_secs(2);
/// Watchdog ticks (each half a heartbeat interval) without a frame before a client
/// counts as gone: two heartbeat intervals.
const SILENT_TICKS: u32 = 4;

/// Serves one plain TCP client until it leaves, errs or the broker shuts down.
pub async fn serve(socket: TcpStream, node: Arc<Node>, stop: CancellationToken) {
    let peer = socket.peer_addr().ok();
    let local = socket.local_addr().ok();
    let _ = socket.set_nodelay(true);
    // Owned halves: reader and writer share no lock on the plain path.
    let (read, write) = socket.into_split();
    serve_halves(read, write, (peer, local, None), node, stop).await;
}

/// Serves one TLS client whose handshake is done, as [`serve`] does a plain one.
pub async fn serve_tls(socket: TlsStream<TcpStream>, node: Arc<Node>, stop: CancellationToken) {
    let (tcp, session) = socket.get_ref();
    let peer = tcp.peer_addr().ok();
    let local = tcp.local_addr().ok();
    let _ = tcp.set_nodelay(true);
    let tls = Arc::new(TlsInfo::of(session));
    let (read, write) = tokio::io::split(socket);
    serve_halves(read, write, (peer, local, Some(tls)), node, stop).await;
}

/// The client's address, ours, and its TLS session if it has one.
type Endpoints = (Option<SocketAddr>, Option<SocketAddr>, Option<Arc<TlsInfo>>);

async fn serve_halves<R, W>(
    read: R,
    write: W,
    (peer, local, tls): Endpoints,
    node: Arc<Node>,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let congested = Arc::new(AtomicBool::new(false));
    let id = node.next_conn_id();
    let vhost = Arc::new(OnceLock::new());
    let config = node.config();
    let writer = tokio::spawn(write_loop(
        write,
        rx,
        vhost.clone(),
        id,
        congested.clone(),
        config.frame_max,
    ));
    let mut frames = FramedRead::new(read, AmqpCodec::new(FRAME_MIN_SIZE));
    match handshake(&mut frames, &tx, &node, peer, tls.as_deref()).await {
        Ok(Opened {
            tuned,
            user,
            vhost: broker,
            permissions,
            client_properties,
            client_name,
            mechanism,
        }) => {
            let timed_out = Arc::new(TimedOut::default());
            broker.register_connection(
                id,
                ConnHandle {
                    tx: tx.clone(),
                    timed_out: timed_out.clone(),
                    congested,
                    cancel_notify: tuned.cancel_notify,
                    name: connection_name(peer, local).into(),
                    user: user.name.as_str().into(),
                },
            );
            let _ = vhost.set(broker.clone());
            // Shutdown cancels it too, as its parent.
            let force_close = ForceClose::new(stop.child_token());
            node.connection_opened(ConnInfo {
                id,
                user: user.name.clone(),
                vhost: broker.name().to_string(),
                peer,
                local,
                connected_at: now_millis(),
                client_properties,
                client_name,
                mechanism,
                tls,
                channel_max: tuned.channel_max,
                frame_max: tuned.frame_max,
                heartbeat: tuned.heartbeat,
                force_close: force_close.clone(),
            });
            let mut conn = Conn {
                id,
                broker: broker.clone(),
                tx,
                channels: HashMap::new(),
                channel_max: config.channel_max,
                alarm: broker.memory_alarm(),
                publisher: false,
                blocked_capable: false,
                user,
                permissions,
                permissions_seen: 0,
                topics: Arc::default(),
                node: node.clone(),
                synced: broker.journal_synced(),
                timed_out,
                confirms: VecDeque::new(),
                outbox: VecDeque::new(),
            };
            conn.run(&mut frames, tuned, &force_close).await;
            broker.connection_closed(id);
            node.connection_closed(id);
        }
        // Each arm lets go of its sender: the writer ends (and closes the socket) once
        // every sender is gone.
        Err(HandshakeEnd::Refuse(e)) => {
            close_with(&mut frames, &tx, &e).await;
            drop(tx);
        }
        Err(HandshakeEnd::Gone) => drop(tx),
    }
    if tokio::time::timeout(WRITER_TIMEOUT, writer).await.is_err() {
        debug!(?peer, "writer did not finish in time");
    }
    debug!(?peer, id, "amqp connection ended");
}

/// Writes what `rx` brings; once the connection has opened `vhost`, tells its broker
/// when a congested queue has drained.
async fn write_loop<W: AsyncWrite + Unpin>(
    write: W,
    mut rx: mpsc::Receiver<Outbound>,
    vhost: Arc<OnceLock<Arc<Broker>>>,
    id: ConnId,
    congested: Arc<AtomicBool>,
    frame_max: u32,
) {
    let mut sink = FramedWrite::new(write, AmqpCodec::new(frame_max));
    // One ticking interval rather than a timeout per batch: a busy connection pays no
    // timer or clock read per write. A beat goes out after a tick with nothing written.
    let mut heartbeat: Option<tokio::time::Interval> = None;
    let mut wrote = false;
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            () = tick(&mut heartbeat) => {
                if !std::mem::take(&mut wrote)
                    && sink.send(Outbound::Heartbeat).await.is_err()
                {
                    return;
                }
                continue;
            }
        };
        let Some(mut item) = item else {
            let _ = sink.flush().await;
            return;
        };
        wrote = true;
        // Write what is queued in one go, then flush once.
        loop {
            if let Outbound::Tuned {
                heartbeat: secs, ..
            } = item
            {
                // RabbitMQ beats at half the negotiated interval.
                heartbeat = (secs > 0).then(|| every(Duration::from_millis(u64::from(secs) * 500)));
            }
            if sink.feed(item).await.is_err() {
                return;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        if congested.swap(false, Ordering::AcqRel)
            && let Some(broker) = vhost.get()
        {
            broker.resume(id);
        }
    }
}

/// A publish waiting for its header and body frames.
#[derive(Debug)]
struct Pending {
    publish: basic::Publish,
    header: Option<Box<AMQPContentHeader>>,
    /// The header's property bytes as the client sent them.
    raw_properties: Option<Bytes>,
    parts: Vec<Bytes>,
    received: u64,
}

#[derive(Debug, Default)]
struct Chan {
    /// We sent channel.close and wait for close-ok.
    closing: bool,
    pending: Option<Pending>,
    mode: Mode,
    /// Publishes seen in confirm mode: the next delivery tag to confirm.
    published: u64,
    /// The queue an empty queue name stands for, as in RabbitMQ.
    last_queue: Option<String>,
    /// The last exchange a publish was allowed to write to: permissions do not change
    /// during a connection, so a steady publisher pays for one regex match.
    writable: Option<ShortString>,
}

struct Conn {
    id: ConnId,
    broker: Arc<Broker>,
    tx: mpsc::Sender<Outbound>,
    channels: HashMap<u16, Chan>,
    channel_max: u16,
    /// The broker's memory alarm.
    alarm: watch::Receiver<bool>,
    /// Whether the client ever published: only publishers are blocked.
    publisher: bool,
    /// The client understands connection.blocked.
    blocked_capable: bool,
    user: Arc<User>,
    /// The user's permissions in this vhost, as of `permissions_seen`.
    permissions: Arc<Permissions>,
    /// The node's count of permission changes when `permissions` was looked up; 0 before
    /// the first lookup after the handshake.
    permissions_seen: u64,
    /// The user's topic permissions in this vhost, as of `permissions_seen`.
    topics: Arc<Vec<TopicPermission>>,
    node: Arc<Node>,
    /// How far the broker's journal is on disk; none when nothing persists.
    synced: Option<watch::Receiver<u64>>,
    /// Where the broker names channels to close for the consumer timeout.
    timed_out: Arc<TimedOut>,
    /// Confirms waiting for the journal, in journal order.
    confirms: VecDeque<WaitingConfirm>,
    /// Frames produced without awaiting (by the hot path, or to follow a reply), sent
    /// before the next frame is read.
    outbox: VecDeque<Outbound>,
}

/// A publisher confirm that waits for the journal to have `position` on disk.
struct WaitingConfirm {
    position: u64,
    channel: u16,
    tag: u64,
    /// basic.ack; basic.nack when no queue took the message.
    ack: bool,
}

/// What woke the reader. Each value is handled at once and never stored, so the large
/// `Read` variant costs nothing worth a `Box` per frame.
#[allow(clippy::large_enum_variant)]
enum Event {
    Read(Result<Option<Inbound>, CodecError>),
    Synced,
    /// Channels held a delivery past the consumer timeout.
    TimedOut,
    Stop,
}

/// What the hot path made of a frame.
enum Hot {
    /// Handled; what it sends waits in `outbox`.
    Done,
    /// An error on the channel (or, by its kind, the connection), for [`Conn::fail`].
    Failed(u16, AmqpError),
    /// A method for the general path.
    Method(u16, AMQPClass),
}

/// What to do after a frame.
enum Flow {
    Continue,
    /// The client closed the connection and has its close-ok.
    Closed,
}

impl Conn {
    async fn send(&self, item: Outbound) {
        // A failed send means the writer is gone; the reader notices on its next read.
        let _ = self.tx.send(item).await;
    }

    async fn method(&self, channel: u16, method: AMQPClass) {
        self.send(Outbound::Method(channel, method)).await;
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        frames: &mut FramedRead<R, AmqpCodec>,
        tuned: Tuned,
        close: &ForceClose,
    ) {
        let stop = &close.token;
        // RabbitMQ's words: the management API's reason, or shutdown.
        let forced = || {
            let reason = close
                .reason()
                .unwrap_or("broker forced connection closure with reason 'shutdown'");
            AmqpError::connection(
                code::CONNECTION_FORCED,
                format!("CONNECTION_FORCED - {reason}"),
            )
        };
        self.channel_max = tuned.channel_max;
        self.blocked_capable = tuned.blocked_capable;
        // A client silent for two heartbeat intervals is gone, as in RabbitMQ. Checked on a
        // ticking interval (a quarter of that) instead of a timeout per frame, so a busy
        // connection pays no timer or clock read per frame: detection comes within
        // 2–2.5 intervals.
        let mut watchdog = (tuned.heartbeat > 0)
            .then(|| every(Duration::from_millis(u64::from(tuned.heartbeat) * 500)));
        let mut quiet_ticks = 0;
        loop {
            if self.publisher && *self.alarm.borrow() && !self.wait_for_memory(stop).await {
                close_with(frames, &self.tx, &forced()).await;
                return;
            }
            let waiting = self.confirms.front().map(|c| c.position);
            // Frames first: while the socket has data, the other branches are not polled
            // (each would register a waiter and drop it again, for every frame). Tokio's
            // per-task budget makes the read pending now and then, so they still run.
            let event = tokio::select! {
                biased;
                next = frames.next() => Event::Read(next.transpose()),
                () = tick(&mut watchdog) => {
                    quiet_ticks += 1;
                    if quiet_ticks < SILENT_TICKS {
                        continue;
                    }
                    Event::Read(Err(CodecError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "missed heartbeats",
                    ))))
                }
                () = synced_past(&mut self.synced, waiting) => Event::Synced,
                () = self.timed_out.notified() => Event::TimedOut,
                () = stop.cancelled() => Event::Stop,
            };
            let next = match event {
                Event::Read(next) => {
                    quiet_ticks = 0;
                    next
                }
                Event::Synced => {
                    self.send_synced_confirms().await;
                    continue;
                }
                Event::TimedOut => {
                    self.close_timed_out().await;
                    continue;
                }
                Event::Stop => {
                    close_with(frames, &self.tx, &forced()).await;
                    return;
                }
            };
            let inbound = match next {
                Ok(Some(inbound)) => inbound,
                Ok(None) => return,
                Err(e) => {
                    codec_failed(frames, &self.tx, self.id, &e).await;
                    return;
                }
            };
            self.refresh_permissions();
            let hot = self.hot(inbound);
            if !self.outbox.is_empty() {
                self.flush_outbox().await;
            }
            // The general path is boxed: building its (large) future in place for every
            // frame would copy kilobytes per message.
            let flow = match hot {
                Hot::Done => Ok(Flow::Continue),
                Hot::Failed(ch, e) => Box::pin(self.fail(ch, e)).await.map(|()| Flow::Continue),
                Hot::Method(ch, m) => Box::pin(self.method_frame(ch, m)).await,
            };
            // What the general path queued to follow its reply.
            if !self.outbox.is_empty() {
                self.flush_outbox().await;
            }
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Closed) => {
                    // The receiver of close-ok closes the socket (AMQP 0-9-1 §connection.
                    // close-ok): closing first races the client's last read, which some
                    // clients (lapin) then log as an aborted connection.
                    let until_eof = async { while let Some(Ok(_)) = frames.next().await {} };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, until_eof).await;
                    return;
                }
                Err(e) => {
                    close_with(frames, &self.tx, &e).await;
                    return;
                }
            }
        }
    }

    /// Sends the waiting confirms whose journal records are on disk. A channel's run of
    /// acks goes out as one basic.ack with `multiple`, as RabbitMQ sends them: every
    /// earlier tag of that channel was confirmed already or is in the run, since confirms
    /// wait here in publish order and nothing else holds one back.
    async fn send_synced_confirms(&mut self) {
        let Some(synced) = self.synced.as_ref().map(|s| *s.borrow()) else {
            return;
        };
        // Per channel, the highest tag of acks not yet sent: few channels publish at once.
        let mut acks: Vec<(u16, u64)> = Vec::new();
        while self.confirms.front().is_some_and(|c| c.position <= synced) {
            let Some(c) = self.confirms.pop_front() else {
                break;
            };
            self.broker.confirmed();
            let pending = acks.iter().position(|a| a.0 == c.channel);
            if c.ack {
                match pending {
                    Some(i) => acks[i].1 = c.tag,
                    None => acks.push((c.channel, c.tag)),
                }
                continue;
            }
            // A nack ends the channel's run: the acks before it go first.
            if let Some(i) = pending {
                let (ch, tag) = acks.swap_remove(i);
                self.method(ch, confirm_method(tag, true, true)).await;
            }
            self.method(c.channel, confirm_method(c.tag, false, false))
                .await;
        }
        for (ch, tag) in acks {
            self.method(ch, confirm_method(tag, true, true)).await;
        }
    }

    /// Waits until the journal has `position` on disk.
    async fn wait_synced(&mut self, position: u64) {
        synced_past(&mut self.synced, Some(position)).await;
    }

    /// Blocks this publisher while the memory alarm is on: connection.blocked (if the
    /// client understands it), no reads, then connection.unblocked. False if the broker
    /// is shutting down meanwhile.
    async fn wait_for_memory(&mut self, stop: &CancellationToken) -> bool {
        debug!(id = self.id, "memory alarm: blocking publisher");
        if self.blocked_capable {
            let blocked = connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            });
            self.method(0, AMQPClass::Connection(blocked)).await;
        }
        // Confirms that were waiting for the disk still go out meanwhile: holding them would
        // stall a publisher's window for no memory gained.
        let cleared = loop {
            let waiting = self.confirms.front().map(|c| c.position);
            let cleared = tokio::select! {
                r = self.alarm.wait_for(|on| !*on) => Some(r.is_ok()),
                () = synced_past(&mut self.synced, waiting) => None,
                () = stop.cancelled() => Some(false),
            };
            match cleared {
                Some(cleared) => break cleared,
                None => self.send_synced_confirms().await,
            }
        };
        if cleared && self.blocked_capable {
            let unblocked = connection::AMQPMethod::Unblocked(connection::Unblocked {});
            self.method(0, AMQPClass::Connection(unblocked)).await;
        }
        cleared
    }

    /// The frames every message goes through (content, basic.publish, acks), handled
    /// without awaiting: what they send waits in `outbox`. Anything else is left to
    /// [`Conn::method_frame`].
    fn hot(&mut self, inbound: Inbound) -> Hot {
        let done =
            |ch, r: Result<(), AmqpError>| r.map_or_else(|e| Hot::Failed(ch, e), |()| Hot::Done);
        match inbound {
            Inbound::Body(ch, body) => done(ch, self.body(ch, body)),
            Inbound::Header {
                channel,
                header,
                raw_properties,
            } => done(channel, self.header(channel, header, raw_properties)),
            Inbound::Method(ch, m) => self.basic_hot(ch, m),
            Inbound::Heartbeat => Hot::Done,
            // RabbitMQ names the frame as its reader saw it: type 8, no payload.
            Inbound::InvalidHeartbeat(ch) => Hot::Failed(
                ch,
                AmqpError::connection(
                    code::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - type 8, all octets = <<>>",
                ),
            ),
            Inbound::ProtocolHeader { .. } => Hot::Failed(0, unexpected_frame()),
        }
    }

    /// basic.publish, ack, nack and reject on a channel in its ordinary state (on any
    /// other, the general path refuses or ignores them).
    fn basic_hot(&mut self, ch: u16, m: AMQPClass) -> Hot {
        let Some(chan) = self
            .channels
            .get_mut(&ch)
            .filter(|c| ch != 0 && !c.closing && c.pending.is_none())
        else {
            return Hot::Method(ch, m);
        };
        let AMQPClass::Basic(b) = m else {
            return Hot::Method(ch, m);
        };
        let (tag, multiple, requeue) = match b {
            basic::AMQPMethod::Publish(ref p) if p.immediate => {
                let e = AmqpError::connection(
                    code::NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED - immediate=true",
                );
                return Hot::Failed(ch, e.during(&AMQPClass::Basic(b)));
            }
            basic::AMQPMethod::Publish(publish) => {
                self.publisher = true;
                chan.pending = Some(Pending {
                    publish,
                    header: None,
                    raw_properties: None,
                    parts: Vec::new(),
                    received: 0,
                });
                return Hot::Done;
            }
            basic::AMQPMethod::Ack(ref a) => (a.delivery_tag, a.multiple, None),
            basic::AMQPMethod::Nack(ref n) => (n.delivery_tag, n.multiple, Some(n.requeue)),
            basic::AMQPMethod::Reject(ref r) => (r.delivery_tag, false, Some(r.requeue)),
            b => return Hot::Method(ch, AMQPClass::Basic(b)),
        };
        match self.broker.ack(self.id, ch, tag, multiple, requeue) {
            Ok(()) => Hot::Done,
            Err(e) => Hot::Failed(ch, e.during(&AMQPClass::Basic(b))),
        }
    }

    /// Hands what the hot path queued to the writer, waiting for room as `send` does.
    async fn flush_outbox(&mut self) {
        while let Some(item) = self.outbox.pop_front() {
            self.send(item).await;
        }
    }

    /// Methods other than the hot path's.
    async fn method_frame(&mut self, ch: u16, m: AMQPClass) -> Result<Flow, AmqpError> {
        match (ch, m) {
            (0, AMQPClass::Connection(m)) => match m {
                connection::AMQPMethod::Close(_) => {
                    // As RabbitMQ: channels close (unacked messages back to their queues)
                    // before close-ok, so a client that saw close-ok sees them requeued.
                    self.broker.connection_closed(self.id);
                    self.method(0, close_ok()).await;
                    Ok(Flow::Closed)
                }
                // A client refreshing its credentials (an OAuth token): with password
                // users there is nothing to update, and RabbitMQ's internal backend also
                // just says ok.
                connection::AMQPMethod::UpdateSecret(_) => {
                    let ok = connection::AMQPMethod::UpdateSecretOk(connection::UpdateSecretOk {});
                    self.method(0, AMQPClass::Connection(ok)).await;
                    Ok(Flow::Continue)
                }
                // RabbitMQ's reader, for any other connection method once open.
                m => Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    "CHANNEL_ERROR - unexpected method in connection state running",
                )
                .during(&AMQPClass::Connection(m))),
            },
            // So does any other class's method on channel 0.
            (0, m) => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "CHANNEL_ERROR - unexpected method in connection state running",
            )
            .during(&m)),
            (ch, m) => {
                self.channel_method(ch, m).await?;
                Ok(Flow::Continue)
            }
        }
    }

    async fn channel_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return match m {
                AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                    let open = self.channels.len();
                    if self.channel_max != 0 && open >= usize::from(self.channel_max) {
                        // RabbitMQ counts open channels and answers 530, not the 504
                        // the spec suggests.
                        return Err(AmqpError::connection(
                            code::NOT_ALLOWED,
                            format!(
                                "NOT_ALLOWED - number of channels opened ({open}) has reached the negotiated channel_max ({})",
                                self.channel_max
                            ),
                        ));
                    }
                    self.node
                        .admit_channel(&self.user.name)
                        .map_err(|e| e.during(&m))?;
                    self.channels.insert(ch, Chan::default());
                    self.broker.open_channel(self.id, ch);
                    let ok = channel::AMQPMethod::OpenOk(channel::OpenOk {});
                    self.method(ch, AMQPClass::Channel(ok)).await;
                    Ok(())
                }
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
                _ => Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    "CHANNEL_ERROR - expected 'channel.open'",
                )
                .during(&m)),
            };
        };
        if chan.closing {
            match m {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&ch);
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    let ok = channel::AMQPMethod::CloseOk(channel::CloseOk {});
                    self.method(ch, AMQPClass::Channel(ok)).await;
                }
                _ => {}
            }
            return Ok(());
        }
        if let Some(pending) = &chan.pending {
            return Err(mid_content(pending.header.is_some()));
        }
        match &m {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                return Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    "CHANNEL_ERROR - second 'channel.open' seen",
                )
                .during(&m));
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.broker.close_channel(self.id, ch);
                self.channels.remove(&ch);
                self.confirms.retain(|c| c.channel != ch);
                let ok = channel::AMQPMethod::CloseOk(channel::CloseOk {});
                self.method(ch, AMQPClass::Channel(ok)).await;
                return Ok(());
            }
            _ => {}
        }
        match self.apply(ch, &m).await {
            Ok(()) => Ok(()),
            Err(e) => self.fail(ch, e.during(&m)).await,
        }
    }

    /// Closes the channels the consumer timeout named, with RabbitMQ's words.
    async fn close_timed_out(&mut self) {
        for (ch, ms) in self.timed_out.take() {
            if self.channels.get(&ch).is_none_or(|c| c.closing)
                || !self.broker.timed_out(self.id, ch)
            {
                continue;
            }
            let e = AmqpError::precondition(format_args!(
                "delivery acknowledgement on channel {ch} timed out. Timeout value used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
            ));
            // A channel error only closes the channel: nothing to pass up.
            let _ = self.fail(ch, e).await;
        }
    }

    /// A channel error closes the channel; a connection error is passed up.
    async fn fail(&mut self, ch: u16, e: AmqpError) -> Result<(), AmqpError> {
        if e.kind == ErrorKind::Connection {
            return Err(e);
        }
        debug!(id = self.id, ch, "channel error: {e}");
        self.broker.close_channel(self.id, ch);
        self.confirms.retain(|c| c.channel != ch);
        if let Some(chan) = self.channels.get_mut(&ch) {
            chan.closing = true;
            chan.pending = None;
        }
        let close = channel::Close {
            reply_code: e.code,
            reply_text: e.reply_text(),
            class_id: e.class_id,
            method_id: e.method_id,
        };
        self.method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
            .await;
        Ok(())
    }

    /// An empty queue name means the channel's last declared queue.
    fn queue_name(&self, ch: u16, name: &ShortString) -> Result<String, AmqpError> {
        if !name.as_str().is_empty() {
            return Ok(name.to_string());
        }
        self.channels
            .get(&ch)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| {
                AmqpError::channel(code::NOT_FOUND, "NOT_FOUND - no previously declared queue")
            })
    }

    /// Looks the user's permissions up again if they changed since last time (one atomic
    /// load per frame otherwise). Lost permissions refuse everything from then on.
    fn refresh_permissions(&mut self) {
        let now = self.node.permissions_generation();
        if now == self.permissions_seen {
            return;
        }
        self.permissions_seen = now;
        let users = self.node.users();
        let current = users.permissions(&self.user.name, self.broker.name());
        self.topics = users.topic_permissions(&self.user.name, self.broker.name());
        drop(users);
        self.permissions = current.unwrap_or_else(|| Arc::new(Permissions::none()));
        for chan in self.channels.values_mut() {
            chan.writable = None;
        }
    }

    /// RabbitMQ's topic authorisation: a routing key published with (`Perm::Write`) or
    /// bound with (`Perm::Read`) on a topic exchange the user has a topic permission for
    /// must match it. Users without topic permissions pay one emptiness check.
    fn allow_topic(&self, perm: Perm, exchange: &str, key: &str) -> Result<(), AmqpError> {
        if self.topics.is_empty() {
            return Ok(());
        }
        let Some(rule) = self.topics.iter().find(|t| t.exchange == exchange) else {
            return Ok(());
        };
        if self.broker.exchange_kind(exchange) != Some(ExchangeKind::Topic) {
            return Ok(());
        }
        rule.check(perm, key, self.broker.name(), &self.user.name)
    }

    /// Checks that this connection's user has `perm` on a resource of its vhost.
    fn allow(&self, perm: Perm, resource: Resource, name: &str) -> Result<(), AmqpError> {
        self.permissions
            .check(perm, resource, name, self.broker.name(), &self.user.name)
    }

    /// bind and unbind: write on the destination, read on the source exchange (whose
    /// being the default exchange the broker refuses first).
    /// Binds (or, with `unbind`, unbinds) `destination` to `source`, if permitted.
    fn change_binding(
        &self,
        source: &str,
        destination: Destination,
        key: &str,
        arguments: &FieldTable,
        unbind: bool,
    ) -> Result<(), AmqpError> {
        self.allow_bind(source, &destination)?;
        self.allow_topic(Perm::Read, source, key)?;
        self.broker
            .bind(self.id, source, destination, key, arguments, unbind)
    }

    fn allow_bind(&self, source: &str, destination: &Destination) -> Result<(), AmqpError> {
        match destination {
            Destination::Queue(q) => self.allow(Perm::Write, Resource::Queue, q)?,
            Destination::Exchange(x) => self.allow(Perm::Write, Resource::Exchange, x)?,
        }
        if source.is_empty() {
            return Ok(());
        }
        self.allow(Perm::Read, Resource::Exchange, source)
    }

    /// basic.publish needs write on the exchange.
    fn allow_publish(&mut self, ch: u16, exchange: &ShortString) -> Result<(), AmqpError> {
        if let Some(writable) = self.channels.get(&ch).and_then(|c| c.writable.as_ref())
            && names::same(writable.as_str(), exchange.as_str())
        {
            return Ok(());
        }
        self.allow(Perm::Write, Resource::Exchange, exchange.as_str())?;
        if let Some(chan) = self.channels.get_mut(&ch) {
            chan.writable = Some(exchange.clone());
        }
        Ok(())
    }

    async fn apply(&mut self, ch: u16, m: &AMQPClass) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        let reply = match m {
            // RabbitMQ never lets a client pause its deliveries this way (prefetch does).
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) if !f.active => {
                return Err(AmqpError::connection(
                    code::NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED - active=false",
                ));
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => Some(AMQPClass::Channel(
                channel::AMQPMethod::FlowOk(channel::FlowOk { active: f.active }),
            )),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => Some(AMQPClass::Access(
                access::AMQPMethod::RequestOk(access::RequestOk {}),
            )),
            AMQPClass::Exchange(x) => self.exchange(x)?,
            AMQPClass::Queue(q) => self.queue(ch, q)?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if let Some(chan) = self.channels.get_mut(&ch) {
                    chan.mode.select_confirm()?;
                }
                (!s.nowait).then_some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                    confirm::SelectOk {},
                )))
            }
            AMQPClass::Tx(t) => Some(AMQPClass::Tx(self.tx(ch, t).await?)),
            AMQPClass::Basic(b) => match b {
                basic::AMQPMethod::Qos(q) => {
                    broker.qos(id, ch, q.prefetch_count, q.global);
                    Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
                }
                // Also when the name is empty and the pseudo-queue was the last declared.
                basic::AMQPMethod::Consume(c)
                    if self
                        .queue_name(ch, &c.queue)
                        .is_ok_and(|q| q == reply_to::PSEUDO_QUEUE) =>
                {
                    let tag = broker.consume_replies(id, ch, c)?;
                    let ok = basic::ConsumeOk { consumer_tag: tag };
                    (!c.nowait).then_some(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)))
                }
                basic::AMQPMethod::Consume(c) => {
                    let queue = self.queue_name(ch, &c.queue)?;
                    self.allow(Perm::Read, Resource::Queue, &queue)?;
                    let mut c = c.clone();
                    c.queue = short(&queue);
                    let tag = broker.consume(id, ch, &c)?;
                    if !c.nowait {
                        let ok = basic::ConsumeOk {
                            consumer_tag: tag.clone(),
                        };
                        self.method(ch, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)))
                            .await;
                    }
                    broker.activate(&queue, id, ch, &tag);
                    None
                }
                basic::AMQPMethod::Cancel(c) => {
                    broker.cancel(id, ch, &c.consumer_tag);
                    (!c.nowait).then(|| {
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag.clone(),
                        }))
                    })
                }
                basic::AMQPMethod::Get(g) => {
                    let queue = self.queue_name(ch, &g.queue)?;
                    self.allow(Perm::Read, Resource::Queue, &queue)?;
                    match broker.get(id, ch, &queue, g.no_ack)? {
                        Some(got) => {
                            let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                                delivery_tag: got.delivery_tag,
                                redelivered: got.redelivered,
                                exchange: got.message.exchange.clone(),
                                routing_key: got.message.routing_key.clone(),
                                message_count: got.message_count,
                            }));
                            self.send(Outbound::Content {
                                channel: ch,
                                method,
                                message: got.message,
                            })
                            .await;
                            None
                        }
                        None => Some(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
                            basic::GetEmpty {},
                        ))),
                    }
                }
                basic::AMQPMethod::Recover(basic::Recover { requeue: false })
                | basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue: false }) => {
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "NOT_IMPLEMENTED - requeue=false",
                    ));
                }
                basic::AMQPMethod::Recover(_) => {
                    broker.check_recover(id, ch)?;
                    // recover-ok goes out before the redeliveries, as RabbitMQ sends it:
                    // clients (lapin among them) drop deliveries buffered before recover-ok.
                    let ok = AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {}));
                    self.method(ch, ok).await;
                    broker.recover(id, ch);
                    None
                }
                basic::AMQPMethod::RecoverAsync(_) => {
                    broker.check_recover(id, ch)?;
                    broker.recover(id, ch);
                    None
                }
                _ => return Err(unimplemented_method()),
            },
            _ => return Err(unimplemented_method()),
        };
        if let Some(reply) = reply {
            self.method(ch, reply).await;
        }
        Ok(())
    }

    fn exchange(&self, m: &exchange::AMQPMethod) -> Result<Option<AMQPClass>, AmqpError> {
        let broker = &self.broker;
        let stripped = exchange_names_stripped(m);
        let m = stripped.as_ref().unwrap_or(m);
        let (nowait, ok) = match m {
            exchange::AMQPMethod::Declare(d) => {
                if !d.passive && !d.exchange.as_str().is_empty() {
                    self.allow(Perm::Configure, Resource::Exchange, d.exchange.as_str())?;
                }
                broker.exchange_declare(d)?;
                (
                    d.nowait,
                    exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                )
            }
            exchange::AMQPMethod::Delete(d) => {
                if !d.exchange.as_str().is_empty() {
                    self.allow(Perm::Configure, Resource::Exchange, d.exchange.as_str())?;
                }
                broker.exchange_delete(d)?;
                (
                    d.nowait,
                    exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
                )
            }
            exchange::AMQPMethod::Bind(b) => {
                let dest = Destination::Exchange(b.destination.to_string());
                self.change_binding(
                    b.source.as_str(),
                    dest,
                    b.routing_key.as_str(),
                    &b.arguments,
                    false,
                )?;
                (b.nowait, exchange::AMQPMethod::BindOk(exchange::BindOk {}))
            }
            exchange::AMQPMethod::Unbind(b) => {
                let dest = Destination::Exchange(b.destination.to_string());
                self.change_binding(
                    b.source.as_str(),
                    dest,
                    b.routing_key.as_str(),
                    &b.arguments,
                    true,
                )?;
                (
                    b.nowait,
                    exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
                )
            }
            _ => return Err(unimplemented_method()),
        };
        Ok((!nowait).then_some(AMQPClass::Exchange(ok)))
    }

    fn queue(&mut self, ch: u16, m: &queue::AMQPMethod) -> Result<Option<AMQPClass>, AmqpError> {
        let broker = self.broker.clone();
        let stripped = queue_names_stripped(m);
        let m = stripped.as_ref().unwrap_or(m);
        let (nowait, ok) = match m {
            queue::AMQPMethod::Declare(d) => {
                let max_queues = self.node.max_queues(broker.name());
                let (name, message_count, consumer_count) =
                    broker.queue_declare(self.id, d, max_queues, |name| {
                        self.permissions.check_declare(
                            name,
                            &d.arguments,
                            broker.name(),
                            &self.user.name,
                        )
                    })?;
                if let Some(chan) = self.channels.get_mut(&ch) {
                    chan.last_queue = Some(name.clone());
                }
                let ok = queue::DeclareOk {
                    queue: short(&name),
                    message_count,
                    consumer_count,
                };
                (d.nowait, queue::AMQPMethod::DeclareOk(ok))
            }
            queue::AMQPMethod::Bind(b) => {
                let queue = self.queue_name(ch, &b.queue)?;
                let key = shortcut_key(&b.queue, &b.routing_key, &queue);
                self.change_binding(
                    b.exchange.as_str(),
                    Destination::Queue(queue.clone()),
                    key,
                    &b.arguments,
                    false,
                )?;
                (b.nowait, queue::AMQPMethod::BindOk(queue::BindOk {}))
            }
            queue::AMQPMethod::Unbind(b) => {
                let queue = self.queue_name(ch, &b.queue)?;
                let key = shortcut_key(&b.queue, &b.routing_key, &queue);
                self.change_binding(
                    b.exchange.as_str(),
                    Destination::Queue(queue.clone()),
                    key,
                    &b.arguments,
                    true,
                )?;
                (false, queue::AMQPMethod::UnbindOk(queue::UnbindOk {}))
            }
            queue::AMQPMethod::Purge(p) => {
                let queue = self.queue_name(ch, &p.queue)?;
                self.allow(Perm::Read, Resource::Queue, &queue)?;
                let message_count = broker.queue_purge(self.id, &queue)?;
                (
                    p.nowait,
                    queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count }),
                )
            }
            queue::AMQPMethod::Delete(d) => {
                let mut d = d.clone();
                d.queue = short(&self.queue_name(ch, &d.queue)?);
                self.allow(Perm::Configure, Resource::Queue, d.queue.as_str())?;
                let (message_count, cancels) = broker.queue_delete(self.id, &d)?;
                // After the reply (see `run`).
                self.outbox.extend(cancels);
                (
                    d.nowait,
                    queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count }),
                )
            }
            _ => return Err(unimplemented_method()),
        };
        Ok((!nowait).then_some(AMQPClass::Queue(ok)))
    }

    fn header(
        &mut self,
        ch: u16,
        header: Box<AMQPContentHeader>,
        raw_properties: Bytes,
    ) -> Result<(), AmqpError> {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Err(unexpected_frame());
        };
        if chan.closing {
            return Ok(());
        }
        let Some(pending) = chan.pending.as_mut() else {
            return Err(unexpected_frame());
        };
        if header.class_id != 60 && pending.header.is_none() {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!(
                    "UNEXPECTED_FRAME - expected content header for class 60, got one for class {} instead",
                    header.class_id
                ),
            )
            .during(&AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish::default(),
            ))));
        }
        if pending.header.is_some() {
            return Err(mid_content(true));
        }
        if header.body_size > MAX_MESSAGE_SIZE {
            return Err(AmqpError::precondition(format_args!(
                "message size {} is larger than configured max size {MAX_MESSAGE_SIZE}",
                header.body_size
            ))
            .during(&AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish::default(),
            ))));
        }
        let done = header.body_size == 0;
        pending.header = Some(header);
        pending.raw_properties = Some(raw_properties);
        if done {
            self.complete(ch)?;
        }
        Ok(())
    }

    fn body(&mut self, ch: u16, body: Bytes) -> Result<(), AmqpError> {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Err(unexpected_frame());
        };
        if chan.closing {
            return Ok(());
        }
        let Some(pending) = chan.pending.as_mut() else {
            return Err(unexpected_frame());
        };
        let Some(size) = pending.header.as_ref().map(|h| h.body_size) else {
            return Err(mid_content(false));
        };
        pending.received += body.len() as u64;
        if pending.received > size {
            return Err(unexpected_frame());
        }
        pending.parts.push(body);
        if pending.received == size {
            self.complete(ch)?;
        }
        Ok(())
    }

    /// A whole message has arrived: route it, return it if unroutable and mandatory,
    /// confirm it in confirm mode. An error is the channel's (see [`Conn::fail`]).
    fn complete(&mut self, ch: u16) -> Result<(), AmqpError> {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Ok(());
        };
        let Some(Pending {
            mut publish,
            header: Some(header),
            raw_properties,
            parts,
            received,
        }) = chan.pending.take()
        else {
            return Ok(());
        };
        let body = match <[Bytes; 1]>::try_from(parts) {
            Ok([one]) => one,
            Err(parts) => {
                let mut all = BytesMut::with_capacity(usize::try_from(received).unwrap_or(0));
                for p in parts {
                    all.extend_from_slice(&p);
                }
                all.freeze()
            }
        };
        // The message takes the names; from here on `publish` only says `mandatory`.
        let mut message = Message::new(
            std::mem::take(&mut publish.exchange),
            std::mem::take(&mut publish.routing_key),
            header.properties,
            body,
        );
        if let Some(raw) = raw_properties {
            message = message.with_raw_properties(raw);
        }
        // Errors name only the method's class and id: no copy of the publish needed.
        let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish::default()));
        if let Err(e) = self.allow_publish(ch, &message.exchange).and_then(|()| {
            self.allow_topic(
                Perm::Write,
                message.exchange.as_str(),
                message.routing_key.as_str(),
            )
        }) {
            return Err(e.during(&method));
        }
        if let Err(e) = self.check_properties(ch, &mut message) {
            // RabbitMQ looks the exchange up before it reads the properties.
            let e = self
                .broker
                .check_publish(message.exchange.as_str())
                .err()
                .unwrap_or(e);
            return Err(e.during(&method));
        }
        let p = BufferedPublish { publish, message };
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Ok(());
        };
        let Some(p) = chan.mode.buffer(p) else {
            // Inside a transaction: only the exchange is checked now, as RabbitMQ does.
            let exchange = self.channels.get(&ch).and_then(|c| match &c.mode {
                Mode::Tx(buffered) => buffered.last().map(|b| b.message.exchange.clone()),
                _ => None,
            });
            if let Some(exchange) = exchange
                && let Err(e) = self.broker.check_publish(exchange.as_str())
            {
                return Err(e.during(&method));
            }
            return Ok(());
        };
        let confirm = chan.mode.is_confirm();
        if confirm {
            chan.published += 1;
        }
        let seq = chan.published;
        let published = self.route(ch, p).map_err(|e| e.during(&method))?;
        if confirm {
            let ack = !published.rejected;
            match published.synced_at {
                Some(position) if self.synced.is_some() => {
                    self.confirms.push_back(WaitingConfirm {
                        position,
                        channel: ch,
                        tag: seq,
                        ack,
                    });
                }
                _ => {
                    self.outbox
                        .push_back(Outbound::Method(ch, confirm_method(seq, false, ack)));
                    self.broker.confirmed();
                }
            }
        }
        Ok(())
    }

    /// The publisher's properties as RabbitMQ checks them: the user it claims, a direct
    /// reply-to address (filled in here), the expiration and the delivery mode.
    fn check_properties(&self, ch: u16, message: &mut Message) -> Result<(), AmqpError> {
        if let Some(claimed) = message.properties().user_id()
            && claimed.as_str() != self.user.name
            && !self.user.has_tag("impersonator")
        {
            return Err(AmqpError::precondition(format_args!(
                "user_id property set to '{claimed}' but authenticated user was '{}'",
                self.user.name
            )));
        }
        if message
            .properties()
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == reply_to::PSEUDO_QUEUE)
        {
            let Some(address) = self.broker.reply_address(self.id, ch) else {
                return Err(AmqpError::precondition(
                    "fast reply consumer does not exist",
                ));
            };
            let properties = std::mem::take(message.properties_mut());
            *message.properties_mut() = properties.with_reply_to(short(&address));
        }
        if let Some(expiration) = message.properties().expiration()
            && let Err(reason) = parse_expiration(expiration.as_str())
        {
            return Err(AmqpError::precondition(format_args!(
                "invalid expiration '{expiration}': {reason}"
            )));
        }
        // 1 transient, 2 persistent; RabbitMQ refuses any other delivery mode.
        if let Some(mode) = *message.properties().delivery_mode()
            && !matches!(mode, 1 | 2)
        {
            return Err(AmqpError::precondition(format_args!(
                "invalid message: {{delivery_mode_unknown,{mode}}}"
            )));
        }
        Ok(())
    }

    /// Routes a publish, returning it (through `outbox`) if unroutable and mandatory.
    fn route(&mut self, ch: u16, p: BufferedPublish) -> Result<Published, AmqpError> {
        let BufferedPublish { publish, message } = p;
        let returned = publish.mandatory.then(|| {
            let mut copy = Message::new(
                message.exchange.clone(),
                message.routing_key.clone(),
                message.properties().clone(),
                message.body.clone(),
            );
            copy.strip_bcc();
            Arc::new(copy)
        });
        let published = self.broker.publish(message, Some((self.id, ch)))?;
        if let (false, Some(message)) = (published.routed, returned) {
            let ret = basic::Return {
                reply_code: code::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            };
            self.broker.returned();
            self.outbox.push_back(Outbound::Content {
                channel: ch,
                method: AMQPClass::Basic(basic::AMQPMethod::Return(ret)),
                message,
            });
        }
        Ok(published)
    }

    /// tx.select, tx.commit and tx.rollback; returns the reply.
    async fn tx(
        &mut self,
        ch: u16,
        m: &tx_class::AMQPMethod,
    ) -> Result<tx_class::AMQPMethod, AmqpError> {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Err(unimplemented_method());
        };
        match m {
            tx_class::AMQPMethod::Select(_) => {
                chan.mode.select_tx()?;
                self.broker.tx_select(self.id, ch);
                Ok(tx_class::AMQPMethod::SelectOk(tx_class::SelectOk {}))
            }
            tx_class::AMQPMethod::Commit(_) => {
                let buffered = chan.mode.take_buffered()?;
                let mut durable_at = None;
                let mut routed = Ok(());
                for p in buffered {
                    match self.route(ch, p) {
                        Ok(published) => durable_at = durable_at.max(published.synced_at),
                        Err(e) => {
                            routed = Err(e);
                            break;
                        }
                    }
                }
                // Returns go out before commit-ok (or the error), in routing order.
                self.flush_outbox().await;
                routed?;
                self.broker.tx_end(self.id, ch, true);
                // As in RabbitMQ, commit-ok means the persistent messages are on disk.
                if let Some(position) = durable_at {
                    self.wait_synced(position).await;
                }
                Ok(tx_class::AMQPMethod::CommitOk(tx_class::CommitOk {}))
            }
            tx_class::AMQPMethod::Rollback(_) => {
                chan.mode.take_buffered()?;
                self.broker.tx_end(self.id, ch, false);
                Ok(tx_class::AMQPMethod::RollbackOk(tx_class::RollbackOk {}))
            }
            _ => Err(unimplemented_method()),
        }
    }
}

/// Sends connection.close for a broken stream; nothing more can be read.
/// Closes the connection on input that is not AMQP, then waits (bounded) for the client's
/// close-ok as RabbitMQ does: a client whose socket is gone before it can answer reports
/// a broken pipe instead of the reason it was sent.
async fn codec_failed<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, AmqpCodec>,
    tx: &mpsc::Sender<Outbound>,
    id: ConnId,
    e: &CodecError,
) {
    if matches!(e, CodecError::Io(_)) {
        return;
    }
    debug!(id, "closing on bad input: {e}");
    let text = match e.reply_code() {
        code::INTERNAL_ERROR => "INTERNAL_ERROR".to_string(),
        code::SYNTAX_ERROR => format!("SYNTAX_ERROR - {e}"),
        code::NOT_IMPLEMENTED => format!("NOT_IMPLEMENTED - {e}"),
        _ => format!("FRAME_ERROR - {e}"),
    };
    let mut close = AmqpError::connection(e.reply_code(), text);
    match e {
        CodecError::PrefetchSize(_) => {
            close = close.during(&AMQPClass::Basic(basic::AMQPMethod::Qos(
                basic::Qos::default(),
            )));
        }
        CodecError::CannotDecode {
            class_id,
            method_id,
            ..
        } => (close.class_id, close.method_id) = (*class_id, *method_id),
        _ => {}
    }
    send_close(tx, &close).await;
    // The byte stream can no longer be split into frames: look for close-ok's bytes.
    let reader = frames.get_mut();
    let mut seen = Vec::with_capacity(1024);
    let linger = async {
        let mut chunk = [0u8; 1024];
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            let keep = seen.len().saturating_sub(CLOSE_OK_FRAME.len() - 1);
            seen.drain(..keep);
            seen.extend_from_slice(&chunk[..n]);
            if seen
                .windows(CLOSE_OK_FRAME.len())
                .any(|w| w == CLOSE_OK_FRAME)
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, linger).await;
}

async fn send_close(tx: &mpsc::Sender<Outbound>, e: &AmqpError) {
    let close = connection::Close {
        reply_code: e.code,
        reply_text: e.reply_text(),
        class_id: e.class_id,
        method_id: e.method_id,
    };
    let method = AMQPClass::Connection(connection::AMQPMethod::Close(close));
    // A failed send means the writer is gone: nothing left to tell.
    let _ = tx.send(Outbound::Method(0, method)).await;
}

/// Sends connection.close, then ignores everything but close(-ok) for a while.
async fn close_with<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, AmqpCodec>,
    tx: &mpsc::Sender<Outbound>,
    e: &AmqpError,
) {
    send_close(tx, e).await;
    let linger = async {
        while let Some(Ok(inbound)) = frames.next().await {
            match inbound {
                Inbound::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    return;
                }
                Inbound::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    let _ = tx.send(Outbound::Method(0, close_ok())).await;
                    return;
                }
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, linger).await;
}

/// Completes once the journal has `position` on disk; never without a journal, a
/// position, or a writer.
async fn synced_past(synced: &mut Option<watch::Receiver<u64>>, position: Option<u64>) {
    match (synced, position) {
        (Some(synced), Some(position)) => {
            if synced.wait_for(|s| *s >= position).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        _ => std::future::pending().await,
    }
}

/// Ticks of `every` until `interval` is set; pending forever without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// An interval whose first tick is one `period` from now, skipping missed ticks.
fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// A publisher confirm: basic.ack, or basic.nack (never asking for a requeue).
fn confirm_method(tag: u64, multiple: bool, ack: bool) -> AMQPClass {
    AMQPClass::Basic(if ack {
        basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        })
    } else {
        basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple,
            requeue: false,
        })
    })
}

fn close_ok() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
}

/// A frame other than the content a basic.publish announced, in RabbitMQ's words.
fn mid_content(header_seen: bool) -> AmqpError {
    let text = if header_seen {
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
    } else {
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    };
    AmqpError::connection(code::UNEXPECTED_FRAME, text).during(&AMQPClass::Basic(
        basic::AMQPMethod::Publish(basic::Publish::default()),
    ))
}

fn unexpected_frame() -> AmqpError {
    AmqpError::connection(
        code::UNEXPECTED_FRAME,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    )
}

/// A method only a server sends (an -ok, a deliver) or none we know, in RabbitMQ's words.
fn unimplemented_method() -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        "COMMAND_INVALID - unimplemented method",
    )
}

/// A name without the CR and LF characters RabbitMQ strips from the names of exchange
/// and queue methods (not from basic.publish's); `None` when it has none, the usual case.
fn strip_cr_lf(name: &ShortString) -> Option<ShortString> {
    let text = name.as_str();
    text.contains(['\r', '\n'])
        .then(|| text.replace(['\r', '\n'], "").into())
}

/// The method with CR and LF taken out of its exchange names, if it had any.
fn exchange_names_stripped(m: &exchange::AMQPMethod) -> Option<exchange::AMQPMethod> {
    let mut m = m.clone();
    let names: Vec<&mut ShortString> = match &mut m {
        exchange::AMQPMethod::Declare(d) => vec![&mut d.exchange],
        exchange::AMQPMethod::Delete(d) => vec![&mut d.exchange],
        exchange::AMQPMethod::Bind(b) => vec![&mut b.source, &mut b.destination],
        exchange::AMQPMethod::Unbind(b) => vec![&mut b.source, &mut b.destination],
        _ => return None,
    };
    strip_all(names).then_some(m)
}

/// The method with CR and LF taken out of its queue and exchange names, if it had any.
fn queue_names_stripped(m: &queue::AMQPMethod) -> Option<queue::AMQPMethod> {
    let mut m = m.clone();
    let names: Vec<&mut ShortString> = match &mut m {
        queue::AMQPMethod::Declare(d) => vec![&mut d.queue],
        queue::AMQPMethod::Delete(d) => vec![&mut d.queue],
        queue::AMQPMethod::Bind(b) => vec![&mut b.queue, &mut b.exchange],
        queue::AMQPMethod::Unbind(b) => vec![&mut b.queue, &mut b.exchange],
        _ => return None,
    };
    strip_all(names).then_some(m)
}

/// Strips each name; whether any changed.
fn strip_all(names: Vec<&mut ShortString>) -> bool {
    let mut changed = false;
    for name in names {
        if let Some(clean) = strip_cr_lf(name) {
            *name = clean;
            changed = true;
        }
    }
    changed
}

/// The routing key of queue.bind and queue.unbind: with neither a queue nor a key named,
/// RabbitMQ binds the channel's last declared queue by its own name.
fn shortcut_key<'a>(queue: &ShortString, key: &'a ShortString, resolved: &'a str) -> &'a str {
    if queue.as_str().is_empty() && key.as_str().is_empty() {
        resolved
    } else {
        key.as_str()
    }
}
