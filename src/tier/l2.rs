//! The Redis side of the tier: one self-reconnecting connection, to a single node or to a
//! cluster (whose client routes each key to its slot's master), every call bounded by a
//! timeout and gated by the circuit breaker.

use crate::sync::{AtomicBool, Ordering};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, Slot};
use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};

use super::breaker::{Breaker, Transition};

/// Why a Redis call gave no answer. The tier turns each into a miss; the caller never sees it
/// on a read.
#[derive(Debug)]
pub(crate) enum L2Error {
    /// The circuit breaker is open: the call was not made.
    Skipped,
    /// Redis answered with an error, or the connection failed.
    Failed(RedisError),
    /// No answer within the call timeout.
    TimedOut,
}

impl L2Error {
    /// Whether Redis itself answered (with an error such as `BUSY` or `LOADING`): the
    /// connection delivered a reply, so it also delivered every push sent before it.
    pub(crate) fn answered(&self) -> bool {
        matches!(self, Self::Failed(e) if e.code().is_some())
    }
}

impl std::fmt::Display for L2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Skipped => f.write_str("redis skipped: circuit breaker open"),
            Self::Failed(e) => write!(f, "redis error: {e}"),
            Self::TimedOut => f.write_str("redis timed out"),
        }
    }
}

/// A multiplexed connection that reconnects by itself; cheap to clone.
#[derive(Clone)]
pub(crate) enum Connection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One query on a clone of the connection. In a cluster every command of `pipe` must name
/// the same key (one slot).
async fn query<T: redis::FromRedisValue>(
    connection: Connection,
    pipe: &Pipeline,
) -> RedisResult<T> {
    match connection {
        Connection::Node(mut c) => pipe.query_async(&mut c).await,
        Connection::Cluster(mut c) => pipe.query_async(&mut c).await,
    }
}

/// Whether a cluster answered with a redirect the client could not follow for a pipeline:
/// while a slot migrates, the node it moves to answers `ASKING` and then the pipeline's
/// first command only, and sends the next back with `MOVED`.
fn is_redirect(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::Moved) | ErrorKind::Server(ServerErrorKind::Ask)
    )
}

/// [`reads`] for one key as two commands, each redirected on its own (session 21's review:
/// the pipeline made every read of a key in a migrating slot fail). The value and its TTL
/// are then read a moment apart; a write between them is a change like any other, which
/// the fill's coherence ticket catches (see `coherence.rs`).
async fn read_apart(connection: Connection, key: &[u8]) -> RedisResult<Vec<Value>> {
    let mut get = redis::cmd("GET");
    get.arg(key);
    let mut pttl = redis::cmd("PTTL");
    pttl.arg(key);
    match connection {
        Connection::Node(mut c) => Ok(vec![
            get.query_async(&mut c).await?,
            pttl.query_async(&mut c).await?,
        ]),
        Connection::Cluster(mut c) => Ok(vec![
            get.query_async(&mut c).await?,
            pttl.query_async(&mut c).await?,
        ]),
    }
}

/// What a read found: the value and how long it has left (`None`: no expiry).
pub(crate) type Found = Option<(Vec<u8>, Option<Duration>)>;

/// A read's result, and whether the cluster redirected it (its slot is moving). A value read
/// through a redirect may come from a node the client reached only for it, over a
/// connection that does not track (session 21's review: an `ASK` to a node that owns no
/// slot yet): no invalidation of it would arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub(crate) found: Found,
    pub(crate) redirected: bool,
}

/// `GET` and `PTTL` for each key, in one pipeline.
fn reads<'k>(keys: impl Iterator<Item = &'k [u8]>) -> Pipeline {
    let mut pipe = redis::pipe();
    // One key's server error (another type stored under it) fails that key's reply, not
    // every key's: `get_many` reads the replies one by one.
    pipe.ignore_errors();
    for key in keys {
        pipe.get(key).cmd("PTTL").arg(key);
    }
    pipe
}

/// What one key's pair of replies to [`reads`] found. A reply that is an error or of an
/// unexpected shape (another type stored under the key: `WRONGTYPE`) is a miss for that key
/// only: Redis answered, so the call did not fail (and the breaker hears a success).
fn found_in(replies: &[Value]) -> Found {
    let [value, pttl] = replies else {
        return None;
    };
    let value = redis::from_redis_value_ref(value).ok().flatten();
    let pttl = redis::from_redis_value_ref(pttl).unwrap_or(-2);
    found(value, pttl)
}

fn found(value: Option<Vec<u8>>, pttl: i64) -> Found {
    value.map(|bytes| {
        // -1: no expiry; -2 (gone between the two commands) is covered by `value`.
        let left = u64::try_from(pttl).ok().map(Duration::from_millis);
        (bytes, left)
    })
}

/// The `PX` of a value stored for `ttl` (at least 1 ms); `None` for no expiry. As in the
/// engine (`Cache::insert_with_ttl`), `Duration::MAX` or any TTL beyond about 584 years
/// (`u64::MAX` nanoseconds) means no expiry. Redis refuses a `PX` past its own clock's end
/// (`i64::MAX` ms from its epoch): without this, such a TTL would fail every write.
fn expiry_millis(ttl: Duration) -> Option<u64> {
    if crate::time::duration_to_nanos(ttl) == u64::MAX {
        return None;
    }
    // Below 2^64 ns: about 1.8e13 ms, far within what Redis takes.
    Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// A message for other tiers: the channel, and what to publish on it.
pub(crate) type Notice = (Vec<u8>, Vec<u8>);

/// Whether Redis refused a command for good: it is unknown (renamed away, or a proxy that
/// lacks it) or the user may not run it.
pub(crate) fn refused_for_good(e: &RedisError) -> bool {
    // Matched on the text: inside a pipeline the error carries the failures of each
    // command, with no detail of its own.
    let text = e.to_string();
    e.code() == Some("NOPERM")
        || text.contains("NOPERM")
        || text.contains("unknown command")
        || text.contains("unknown subcommand")
}

/// A write of one key (`KEYS[1]`: the command after the notice in `ARGV`) and its notice to
/// the other tiers (`ARGV[1]` channel, `ARGV[2]` message), as one script: Redis runs both
/// or neither. As a pipeline of two commands, a connection lost between them left the write
/// applied and no tier told (session 23's review).
const WRITE_AND_ANNOUNCE: &str = "redis.call(ARGV[3], KEYS[1], unpack(ARGV, 4)) \
     redis.call('PUBLISH', ARGV[1], ARGV[2])";

/// `command` (`SET` or `DEL` of `key`, then `args`) with `notice`: one script where Redis
/// runs them, else (scripts refused) a pipeline.
fn announced(
    scripts: bool,
    command: &str,
    key: &[u8],
    args: &[&[u8]],
    notice: Option<&Notice>,
) -> Pipeline {
    let mut pipe = redis::pipe();
    match notice {
        Some((channel, message)) if scripts => {
            let eval = pipe.cmd("EVAL").arg(WRITE_AND_ANNOUNCE).arg(1).arg(key);
            eval.arg(channel).arg(message).arg(command);
            for arg in args {
                eval.arg(*arg);
            }
            eval.ignore();
        }
        _ => {
            let write = pipe.cmd(command).arg(key);
            for arg in args {
                write.arg(*arg);
            }
            write.ignore();
            if let Some((channel, message)) = notice {
                pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
            }
        }
    }
    pipe
}

/// Runs `cmd` on every node the cluster client holds a connection to: the primaries, and
/// the replicas once its slot map lists them (right after a cluster is created it may not,
/// and a promoted replica is then covered by the opening watch and the periodic check).
async fn on_every_node(connection: &mut ClusterConnection, cmd: Cmd) -> RedisResult<()> {
    let everywhere = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllNodes,
        Some(ResponsePolicy::AllSucceeded),
    ));
    connection.route_command(cmd, everywhere).await.map(drop)
}

/// Whether a `CLIENT INFO` reply describes a connection in broadcast tracking: its flags
/// hold `t` (tracking) and `B` (broadcast).
fn tracks(reply: &Value) -> bool {
    let text = match reply {
        Value::VerbatimString { text, .. } => text.as_bytes(),
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        _ => return false,
    };
    text.split(|&b| b == b' ' || b == b'\n')
        .find_map(|field| field.strip_prefix(b"flags="))
        .is_some_and(|flags| flags.contains(&b't') && flags.contains(&b'B'))
}

/// Redis behind a breaker and a timeout.
pub(crate) struct L2 {
    connection: Connection,
    breaker: Breaker,
    /// The most one call may take, connecting included.
    call_timeout: Duration,
    /// Redis refused a script (`EVAL` renamed away, or not allowed): writes and their
    /// notices go as a pipeline, which a lost connection can split.
    scripts_refused: AtomicBool,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("breaker", &self.breaker)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl L2 {
    pub(crate) fn new(connection: Connection, breaker: Breaker, call_timeout: Duration) -> Self {
        Self {
            connection,
            breaker,
            call_timeout,
            scripts_refused: AtomicBool::new(false),
        }
    }

    /// Runs one call through the breaker and the timeout, and reports how it went.
    async fn call<T, F>(&self, run: impl FnOnce(Connection) -> F) -> Result<T, L2Error>
    where
        F: Future<Output = RedisResult<T>>,
    {
        if !self.breaker.allow(Instant::now()) {
            return Err(L2Error::Skipped);
        }
        let outcome = self.timed(run).await;
        let _: Transition = self.breaker.record(outcome.is_ok(), Instant::now());
        outcome
    }

    /// Runs one call under the timeout only: for the periodic tracking check, which no
    /// caller waits on, and whose success (every node answered a `CLIENT INFO`) says
    /// nothing about the node a caller's key lives on, so it must not close the breaker.
    async fn timed<T, F>(&self, run: impl FnOnce(Connection) -> F) -> Result<T, L2Error>
    where
        F: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(self.call_timeout, run(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(L2Error::Failed(e)),
            Err(_) => Err(L2Error::TimedOut),
        }
    }

    /// The value of `key` and how long it has left (`None`: no expiry), if it exists.
    pub(crate) async fn get(&self, key: &[u8]) -> Result<Read, L2Error> {
        let pipe = reads(std::iter::once(key));
        let (replies, redirected): (Vec<Value>, bool) = self
            .call(|c| async move {
                match query(c.clone(), &pipe).await {
                    Err(e) if is_redirect(&e) => Ok((read_apart(c, key).await?, true)),
                    replies => Ok((replies?, false)),
                }
            })
            .await?;
        Ok(Read {
            found: found_in(&replies),
            redirected,
        })
    }

    /// [`get`](Self::get) for each of `keys`, in one round of requests: one pipeline on a
    /// single node; on a cluster one pipeline per hash slot (a pipeline, like `MGET`, must
    /// stay within a slot), all sent at once, each routed to its slot's master. A key whose
    /// slot's pipeline failed is `None`; the call fails only if every one did.
    pub(crate) async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Read>>, L2Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Indices into `keys`, one group per pipeline.
        let groups: Vec<Vec<usize>> = match self.connection {
            Connection::Node(_) => vec![(0..keys.len()).collect()],
            Connection::Cluster(_) => {
                let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
                for (i, key) in keys.iter().enumerate() {
                    by_slot.entry(Slot::for_key(key)).or_default().push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let pipes: Vec<(Pipeline, Vec<Vec<u8>>)> = groups
            .iter()
            .map(|group| {
                let pipe = reads(group.iter().map(|&i| keys[i].as_slice()));
                (pipe, group.iter().map(|&i| keys[i].clone()).collect())
            })
            .collect();
        let replies = self
            .call(|c| async move {
                let mut queries = tokio::task::JoinSet::new();
                for (g, (pipe, group_keys)) in pipes.into_iter().enumerate() {
                    let c = c.clone();
                    queries.spawn(async move {
                        let mut redirected = false;
                        let reply = match query::<Vec<Value>>(c.clone(), &pipe).await {
                            // A slot in migration: each key on its own (see `read_apart`).
                            Err(e) if is_redirect(&e) => {
                                redirected = true;
                                let mut values = Vec::with_capacity(2 * group_keys.len());
                                let mut failed = None;
                                for key in &group_keys {
                                    match read_apart(c.clone(), key).await {
                                        Ok(pair) => values.extend(pair),
                                        Err(e) => {
                                            failed = Some(e);
                                            break;
                                        }
                                    }
                                }
                                failed.map_or(Ok(values), Err)
                            }
                            reply => reply,
                        };
                        (g, reply.map(|values| (values, redirected)))
                    });
                }
                let mut replies = vec![None; queries.len()];
                let mut last_error = None;
                while let Some(done) = queries.join_next().await {
                    let (g, reply) = done.map_err(|e| {
                        RedisError::from(std::io::Error::other(format!("read task: {e}")))
                    })?;
                    match reply {
                        Ok(values) => replies[g] = Some(values),
                        Err(e) => last_error = Some(e),
                    }
                }
                match last_error {
                    Some(e) if replies.iter().all(Option::is_none) => Err(e),
                    _ => Ok(replies),
                }
            })
            .await?;
        let mut out = vec![None; keys.len()];
        for (group, reply) in groups.iter().zip(replies) {
            let Some((values, redirected)) = reply else {
                continue;
            };
            for (&i, pair) in group.iter().zip(values.chunks(2)) {
                out[i] = Some(Read {
                    found: found_in(pair),
                    redirected,
                });
            }
        }
        Ok(out)
    }

    /// Stores `key` → `bytes` for `ttl` (at least 1 ms; see [`expiry_millis`] for TTLs that
    /// mean no expiry), and publishes `notice` in the same round trip if given. Returns
    /// whether the connection that took the write tracks: on a cluster, a write to a moving
    /// slot can land on a node the client reached only for it (see [`Read`]), and then no
    /// other client's change of the key would be reported.
    pub(crate) async fn set(
        &self,
        key: &[u8],
        bytes: &[u8],
        ttl: Duration,
        notice: Option<&Notice>,
    ) -> Result<bool, L2Error> {
        self.store(key, bytes, ttl, false, notice).await
    }

    /// Stores `key` → `bytes` for `ttl` unless `key` already exists (a loader's fill must
    /// not overwrite a value another process wrote meanwhile).
    pub(crate) async fn set_if_absent(
        &self,
        key: &[u8],
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<bool, L2Error> {
        self.store(key, bytes, ttl, true, None).await
    }

    async fn store(
        &self,
        key: &[u8],
        bytes: &[u8],
        ttl: Duration,
        only_if_absent: bool,
        notice: Option<&Notice>,
    ) -> Result<bool, L2Error> {
        // `SET key bytes [PX ttl] [NX]` (see `expiry_millis` for TTLs that mean no expiry).
        let millis = expiry_millis(ttl).map(|millis| millis.to_string());
        let mut args: Vec<&[u8]> = vec![bytes];
        if let Some(millis) = &millis {
            args.extend([&b"PX"[..], millis.as_bytes()]);
        }
        if only_if_absent {
            args.push(b"NX");
        }
        let Connection::Cluster(_) = &self.connection else {
            // One connection, tracked unless a disconnection said otherwise.
            return self
                .announced_write("SET", key, &args, notice)
                .await
                .map(|()| true);
        };
        debug_assert!(notice.is_none(), "pub/sub is for a single node only");
        // The SET's reply is read here, so that an error in GETREDIR's place does not fail a
        // write Redis took.
        let mut pipe = redis::pipe();
        let set = pipe.cmd("SET").arg(key);
        for arg in &args {
            set.arg(*arg);
        }
        // Keyless, so it runs wherever the pipeline lands, redirect included (`ASKING`
        // covers the first command only, and the others need none): -1 when that
        // connection does not track. An error instead (an ACL written before the tier
        // needed it, without `client|getredir`) says nothing: not trusted either (session
        // 23's review: it failed every write, and opened the breaker).
        pipe.cmd("CLIENT").arg("GETREDIR").ignore_errors();
        let replies: Vec<Value> = self.call(|c| async move { query(c, &pipe).await }).await?;
        if let Some(Value::ServerError(e)) = replies.first() {
            return Err(L2Error::Failed(e.clone().into()));
        }
        Ok(matches!(replies.get(1), Some(Value::Int(redirect)) if *redirect != -1))
    }

    /// Deletes `key`, and publishes `notice` in the same round trip if given.
    pub(crate) async fn delete(&self, key: &[u8], notice: Option<&Notice>) -> Result<(), L2Error> {
        self.announced_write("DEL", key, &[], notice).await
    }

    /// Runs `command` on `key` with `args`, and publishes `notice` with it if given (see
    /// [`announced`]). A script refused for good is not tried again.
    async fn announced_write(
        &self,
        command: &str,
        key: &[u8],
        args: &[&[u8]],
        notice: Option<&Notice>,
    ) -> Result<(), L2Error> {
        let scripts = !self.scripts_refused.load(Ordering::Relaxed);
        let pipe = announced(scripts, command, key, args, notice);
        let written = self
            .call(|c| async move { query::<()>(c, &pipe).await })
            .await;
        match written {
            Err(L2Error::Failed(e)) if scripts && notice.is_some() && refused_for_good(&e) => {
                self.scripts_refused.store(true, Ordering::Relaxed);
                let pipe = announced(false, command, key, args, notice);
                self.call(|c| async move { query::<()>(c, &pipe).await })
                    .await
            }
            written => written,
        }
    }

    /// Subscribes the connection to `channel` (RESP3: messages arrive as pushes). After a
    /// reconnection the tracking task subscribes again (the manager does not by itself).
    pub(crate) async fn subscribe(&self, channel: &[u8]) -> Result<(), L2Error> {
        let channel = channel.to_vec();
        self.call(|c| async move {
            match c {
                Connection::Node(mut c) => c.subscribe(channel).await,
                Connection::Cluster(mut c) => c.subscribe(channel).await,
            }
        })
        .await
    }

    /// Turns on broadcast client tracking for keys under `prefix` on the current connection,
    /// without reports of this connection's own writes (`NOLOOP`). Turns it off first: Redis
    /// refuses a prefix the connection already tracks, which happens when an earlier attempt
    /// succeeded but its reply was lost to a timeout.
    pub(crate) async fn enable_tracking(&self, prefix: &[u8]) -> Result<(), L2Error> {
        let mut off = redis::cmd("CLIENT");
        off.arg("TRACKING").arg("OFF");
        let mut on = redis::cmd("CLIENT");
        on.arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(prefix)
            .arg("NOLOOP");
        self.call(|c| async move {
            match c {
                Connection::Node(_) => {
                    let mut pipe = redis::pipe();
                    pipe.add_command(off).add_command(on);
                    let _: Vec<Value> = query(c, &pipe).await?;
                }
                Connection::Cluster(mut c) => {
                    on_every_node(&mut c, off).await?;
                    on_every_node(&mut c, on).await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// A `PING` under the timeout only, like [`L2::tracked_nodes`]: the tier's heartbeat on
    /// a single node (see `keep_tracking`), which no caller waits on and which must go on
    /// while the breaker is open.
    pub(crate) async fn ping(&self) -> Result<(), L2Error> {
        self.timed(|c| async move {
            let ping = redis::cmd("PING");
            match c {
                Connection::Node(mut c) => ping.query_async::<Value>(&mut c).await.map(drop),
                Connection::Cluster(mut c) => ping.query_async::<Value>(&mut c).await.map(drop),
            }
        })
        .await
    }

    /// The nodes (`host:port`) of a cluster client's connections if every one of them tracks
    /// (broadcast mode), checked with `CLIENT INFO` on each; `None` if one does not. The
    /// client opens connections by itself (see `watch.rs`), and none tracks until told to.
    /// A single node's `ConnectionManager` reports each new connection with a
    /// `Disconnection` push, so there is nothing to check there (no nodes are named).
    pub(crate) async fn tracked_nodes(&self) -> Result<Option<Vec<String>>, L2Error> {
        let Connection::Cluster(_) = &self.connection else {
            return Ok(Some(Vec::new()));
        };
        let mut info = redis::cmd("CLIENT");
        info.arg("INFO");
        self.timed(|c| async move {
            let Connection::Cluster(mut c) = c else {
                unreachable!("checked above");
            };
            // No response policy: one reply per node, keyed by its address.
            let each_node = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
            let Value::Map(replies) = c.route_command(info, each_node).await? else {
                return Ok(None);
            };
            let mut nodes = Vec::with_capacity(replies.len());
            let mut busy = None;
            for (node, reply) in &replies {
                if let Value::ServerError(error) = reply {
                    // A node that answered with an error (`BUSY` running a script, `LOADING`)
                    // said nothing about tracking: no answer, not a "no" (session 21's
                    // review: a node busy for 0.6 s emptied every L1). The others' replies
                    // still count: one that does not track is a "no" (session 23's review).
                    busy = Some(error);
                    continue;
                }
                match node {
                    Value::BulkString(node) if tracks(reply) => {
                        nodes.push(String::from_utf8_lossy(node).into_owned());
                    }
                    _ => return Ok(None),
                }
            }
            if let Some(error) = busy {
                return Err(error.clone().into());
            }
            Ok((!nodes.is_empty()).then_some(nodes))
        })
        .await
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    pub(crate) fn breaker_is_open(&self) -> bool {
        self.breaker.is_open(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_is_read_from_client_info_flags() {
        let line = |flags: &str| {
            format!("id=12 addr=127.0.0.1:48098 fd=9 name= age=5 flags={flags} db=0 resp=3\n")
        };
        assert!(tracks(&Value::BulkString(line("tB").into_bytes())));
        assert!(tracks(&Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: line("tB"),
        }));
        assert!(!tracks(&Value::BulkString(line("N").into_bytes())), "new");
        assert!(
            !tracks(&Value::BulkString(line("t").into_bytes())),
            "not bcast"
        );
        assert!(!tracks(&Value::Nil));
    }

    #[test]
    fn ttls_past_the_engine_s_horizon_mean_no_expiry() {
        assert_eq!(expiry_millis(Duration::MAX), None);
        assert_eq!(expiry_millis(Duration::from_nanos(u64::MAX)), None);
        let below = Duration::from_nanos(u64::MAX - 1);
        assert_eq!(expiry_millis(below), Some(18_446_744_073_709));
        assert_eq!(expiry_millis(Duration::from_micros(10)), Some(1));
        assert_eq!(expiry_millis(Duration::from_secs(300)), Some(300_000));
    }
}
