//! Serving a TCP listener with hyper, bounded against slow, silent and idle
//! clients: `axum::serve` and tonic's server set no header read timeout, no
//! body read timeout, never close an idle connection and accept without
//! limit, so a few clients that connect and send little or nothing held
//! connections, file descriptors and (declared) admission budget forever.
//!
//! Here every connection of a listener:
//! - counts against `server.max_connections` while open; past it, new ones
//!   wait in the kernel's accept queue until one closes;
//! - must send a complete request head within `server.header_read_timeout`:
//!   its first from accept (a silent connection is closed), and on HTTP/1.1
//!   each later one from the end of the previous response (hyper's timer);
//! - must send each request body within `server.body_read_timeout` of its
//!   head ([`TimedBody`]), or reading it fails and the request is refused;
//! - is closed once no request has been in flight for `server.idle_timeout`
//!   (HTTP/2 connections, which hyper never closes by itself).
//!
//! What a request holds in memory meanwhile is charged by the receivers as
//! its bytes arrive (see [`super::admission`]), so none of this waits on a
//! budget either.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// How long an idle connection asked to close may take to: an HTTP/2 one
/// waits for its client to answer a PING after the GOAWAY.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A boxed error of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long clients may take, and how many may be connected at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Which HTTP versions a listener speaks.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    /// HTTP/1.1, and HTTP/2 with prior knowledge.
    Http,
    /// HTTP/2 only, with larger flow-control windows: export requests are
    /// hundreds of KB, and the default 64 KiB windows would make every one
    /// wait for window updates.
    Grpc {
        stream_window: u32,
        connection_window: u32,
    },
}

/// Until when a request counts as in flight, keeping its connection from
/// being closed as idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlightUntil {
    /// Its response head is ready: answers are small and fully built by
    /// then, so a client that stops reading its answer (an HTTP/2 window
    /// of 0) cannot keep its connection open past the idle timeout.
    ResponseHead,
    /// Its response body is sent: answers are streamed (query results).
    ResponseEnd,
}

/// One listener's settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Names the listener in logs.
    pub what: &'static str,
    pub limits: Limits,
    pub protocol: Protocol,
    pub in_flight_until: InFlightUntil,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    #[error("request body not received within {} (server.body_read_timeout)", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("reading the request body: {0}")]
    Receive(#[from] hyper::Error),
}

impl BodyReadError {
    /// True when `error`, or an error it wraps, is a body that did not
    /// arrive in time.
    pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(BodyReadError::TimedOut(_)) = error.downcast_ref::<BodyReadError>() {
                return true;
            }
            next = error.source();
        }
        false
    }
}

/// A request body that fails once `server.body_read_timeout` has passed
/// since its head was read: the one thing that frees what a client holds
/// by sending its body a byte at a time.
pub struct TimedBody {
    inner: Incoming,
    /// None for an empty body, and once the body is done.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    timed_out: bool,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        let deadline = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(timeout)));
        TimedBody {
            inner,
            deadline,
            timeout,
            timed_out: false,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() {
                this.deadline = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyReadError::Receive)));
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                this.timed_out = true;
                this.deadline = None;
                return Poll::Ready(Some(Err(BodyReadError::TimedOut(this.timeout))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the idle watch of one connection reads.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to when a request last began or ended.
    last: AtomicU64,
    /// Whether any request has begun.
    served: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::SeqCst);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection is to be closed as idle if nothing happens
    /// before: a connection that has not sent its first request head within
    /// the header timeout is as idle as one whose requests are long done.
    fn idle_at(&self, limits: &Limits) -> Instant {
        let wait = if self.served.load(Ordering::SeqCst) {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        };
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Instant::now() + wait;
        }
        self.opened + Duration::from_millis(self.last.load(Ordering::SeqCst)) + wait
    }

    fn is_idle(&self, limits: &Limits) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() >= self.idle_at(limits)
    }
}

/// One request in flight on a connection; its end when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight until it is sent.
pub struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B> Body for Tracked<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The hyper service of one connection: the listener's service, with
/// bodies timed and requests counted for the idle watch.
struct Connection<S> {
    service: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
    until: InFlightUntil,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Connection<S>
where
    S: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    type Response = Response<Tracked<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let timeout = self.body_timeout;
        let request = request.map(|body| TimedBody::new(body, timeout));
        let mut service = self.service.clone();
        let until = self.until;
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            let response = service.call(request).await?;
            let in_flight = (until == InFlightUntil::ResponseEnd).then_some(in_flight);
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

fn builder(options: &Options) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.limits.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    match options.protocol {
        Protocol::Http => builder,
        Protocol::Grpc {
            stream_window,
            connection_window,
        } => {
            builder
                .http2()
                .initial_stream_window_size(stream_window)
                .initial_connection_window_size(connection_window);
            builder.http2_only()
        }
    }
}

/// Serves `service` on `listener` until `stop` resolves, then stops
/// accepting, asks every connection to finish (HTTP/2 GOAWAY, HTTP/1.1
/// close after the response in flight) and waits for them. Dropping the
/// future drops every connection.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    options: Options,
    stop: impl Future<Output = ()>,
) where
    S: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(builder(&options));
    let permits = Arc::new(Semaphore::new(
        options.limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut at_limit = false;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(listener = options.what, %error, "connection task failed");
                }
            }
            (stream, peer, permit) = accept(&listener, &permits, &mut at_limit, &options) => {
                connections.spawn(connection(
                    stream,
                    peer,
                    permit,
                    service.clone(),
                    builder.clone(),
                    options,
                    closing_rx.clone(),
                ));
            }
        }
    }
    // New connections are refused by the kernel from here on.
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// The next connection, once one may be opened.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    at_limit: &mut bool,
    options: &Options,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let permit = match permits.clone().try_acquire_owned() {
        Ok(permit) => {
            *at_limit = false;
            permit
        }
        Err(_) => {
            if !*at_limit {
                tracing::warn!(
                    listener = options.what,
                    limit = options.limits.max_connections,
                    "connection limit (server.max_connections) reached: new connections wait until one closes"
                );
                *at_limit = true;
            }
            match permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => match std::future::pending::<Infallible>().await {},
            }
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer, permit),
            // The peer gave up before it was accepted: nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            // Out of file descriptors or memory: it passes as connections
            // close, and retrying at once would spin.
            Err(error) => {
                tracing::warn!(listener = options.what, %error, "cannot accept a connection; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one connection, closing it once idle, until it ends or the
/// listener closes.
async fn connection<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    options: Options,
    mut closing: watch::Receiver<bool>,
) where
    S: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Answers are small and written at once; Nagle would hold them back.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(listener = options.what, %peer, %error, "cannot set TCP_NODELAY");
    }
    let activity = Arc::new(Activity::new());
    let limits = options.limits;
    let conn = builder.serve_connection(
        TokioIo::new(stream),
        Connection {
            service,
            activity: activity.clone(),
            body_timeout: limits.body_read_timeout,
            until: options.in_flight_until,
        },
    );
    tokio::pin!(conn);
    let mut shutting_down = false;
    // Set once an idle connection was asked to close: past it, it is dropped
    // whatever its peer does.
    let mut close_by: Option<Instant> = None;
    loop {
        let wake = close_by.unwrap_or_else(|| activity.idle_at(&limits));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(listener = options.what, %peer, %error, "connection closed");
                }
                return;
            }
            _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            () = tokio::time::sleep_until(wake), if !shutting_down || close_by.is_some() => {
                if let Some(by) = close_by {
                    if Instant::now() >= by {
                        tracing::debug!(listener = options.what, %peer, "idle connection did not close; dropped");
                        return;
                    }
                } else if activity.is_idle(&limits) {
                    if !activity.served.load(Ordering::SeqCst) {
                        // Never sent a request: nothing to finish.
                        tracing::debug!(listener = options.what, %peer, "closing a connection that sent no request");
                        return;
                    }
                    tracing::debug!(listener = options.what, %peer, "closing an idle connection");
                    // HTTP/2: GOAWAY, and a PING the client answers at once.
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                    close_by = Some(Instant::now() + IDLE_CLOSE_GRACE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_body_is_found_behind_the_errors_that_wrap_it() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BodyReadError);
        let timed_out = Outer(BodyReadError::TimedOut(Duration::from_secs(3)));
        assert!(BodyReadError::is_timeout(&timed_out));
        assert!(timed_out.0.to_string().contains("within 3s"));
        assert!(!BodyReadError::is_timeout(&std::io::Error::other("x")));
    }

    #[tokio::test]
    async fn connections_are_idle_after_the_header_timeout_before_a_first_request_and_the_idle_timeout_after(
    ) {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(100),
            body_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            max_connections: 1,
        };
        let activity = Arc::new(Activity::new());
        assert!(!activity.is_idle(&limits));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(activity.is_idle(&limits), "no first request in 100ms");
        let request = activity.begin();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!activity.is_idle(&limits), "a request is in flight");
        drop(request);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!activity.is_idle(&limits), "150ms after the request ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(activity.is_idle(&limits), "350ms after the request ended");
    }
}
