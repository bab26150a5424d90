//! The user-profile service of the classic multi-tier caching guide, on real Redis: each
//! service instance has larder in process (L1) in front of a shared `redis-server` (L2),
//! and SQLite behind both is the source of truth.
//!
//! Two instances (two `TieredCache`s, each with its own L1 and its own Redis connection:
//! what two processes would have) serve Zipf-distributed profile reads from four tasks for
//! three seconds. Updates go through instance A: write the row to SQLite, then write the new
//! profile through A to Redis and A's L1 (write-through; Redis then tells B to drop its
//! copy). After each update the updater measures how long B's L1 kept the old profile, and
//! every read checks what it got against the last committed update: the example fails if
//! any read served an old profile later after its update than B's slowest measured
//! invalidation.
//!
//! Run: `cargo run --release --features redis --example tier_profiles` (starts a
//! `redis-server` on a free port and stops it at the end; set `REDIS_URL` to use yours).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder::tier::{Codec, CodecError, TieredCache};
use larder::Cache;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rusqlite::{params, Connection};

const USERS: u64 = 10_000;
const RUN: Duration = Duration::from_secs(3);
/// Updates touch the hottest profiles, where stale copies would be served most.
const UPDATED: u64 = 200;

#[derive(Debug, Clone, PartialEq)]
struct Profile {
    id: u64,
    version: u64,
    name: String,
    email: String,
}

impl Profile {
    /// A profile from a row of `version, name, email`.
    fn from_row(id: u64, row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id,
            version: row.get(0)?,
            name: row.get(1)?,
            email: row.get(2)?,
        })
    }
}

/// Profiles on the wire: version, id, then name and email separated by a NUL.
#[derive(Debug, Clone, Copy)]
struct ProfileCodec;

impl Codec<Profile> for ProfileCodec {
    fn encode(&self, p: &Profile) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::with_capacity(16 + p.name.len() + 1 + p.email.len());
        bytes.extend_from_slice(&p.version.to_le_bytes());
        bytes.extend_from_slice(&p.id.to_le_bytes());
        bytes.extend_from_slice(p.name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(p.email.as_bytes());
        Ok(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Profile, CodecError> {
        let bad = || CodecError("not a profile".into());
        let word = |at: usize| -> Result<u64, CodecError> {
            let word = bytes.get(at..at + 8).ok_or_else(bad)?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| bad())?))
        };
        let text = std::str::from_utf8(bytes.get(16..).ok_or_else(bad)?).map_err(|_| bad())?;
        let (name, email) = text.split_once('\0').ok_or_else(bad)?;
        Ok(Profile {
            version: word(0)?,
            id: word(8)?,
            name: name.to_string(),
            email: email.to_string(),
        })
    }
}

/// The database: one SQLite connection, counting the queries it answers.
struct Database {
    conn: Mutex<Connection>,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Database {
    fn open() -> rusqlite::Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE profiles (id INTEGER PRIMARY KEY, version INTEGER, name TEXT, email TEXT)",
        )?;
        {
            let mut insert = conn.prepare(
                "INSERT INTO profiles (id, version, name, email) VALUES (?1, 0, ?2, ?3)",
            )?;
            for id in 0..USERS {
                insert.execute(params![
                    id,
                    format!("user {id}"),
                    format!("u{id}@example.com")
                ])?;
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    fn profile(&self, id: u64) -> rusqlite::Result<Profile> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        // A real query costs a round trip; keep a little of that here.
        std::thread::sleep(Duration::from_micros(200));
        self.conn.lock().unwrap().query_row(
            "SELECT version, name, email FROM profiles WHERE id = ?1",
            [id],
            |row| Profile::from_row(id, row),
        )
    }

    /// Renames a user; returns the updated profile.
    fn rename(&self, id: u64, name: &str) -> rusqlite::Result<Profile> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.conn.lock().unwrap().query_row(
            "UPDATE profiles SET version = version + 1, name = ?2 WHERE id = ?1 \
             RETURNING version, name, email",
            params![id, name],
            |row| Profile::from_row(id, row),
        )
    }
}

/// A `redis-server` this example started, stopped when dropped.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `REDIS_URL`, or a `redis-server` started on a free loopback port.
fn redis() -> Result<(String, Option<OwnRedis>), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok((url, None));
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server (set REDIS_URL to use a running one): {e}"))?;
    let server = OwnRedis(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if answered.is_ok() {
            return Ok((url, Some(server)));
        }
        if Instant::now() > deadline {
            return Err("redis-server did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Tier = TieredCache<u64, Profile, ProfileCodec>;

async fn instance(url: &str, prefix: &str) -> Result<Tier, Box<dyn std::error::Error>> {
    let l1 = Cache::<u64, Profile>::builder()
        .max_entries(2_000)
        .build()?;
    Ok(TieredCache::builder(l1, url)
        .prefix(prefix)
        .l2_ttl(Duration::from_secs(60))
        .codec(ProfileCodec)
        .build()
        .await?)
}

/// The last update committed for each profile: its version, and when its write-through
/// returned.
struct Committed {
    updates: Mutex<Vec<Option<(u64, Instant)>>>,
}

/// How reads compared with the last committed update when they began.
#[derive(Default)]
struct Staleness {
    reads: AtomicU64,
    /// Reads that returned an older version than the one committed before they began.
    stale: AtomicU64,
    /// The longest such a read began after the update's write-through returned (ns).
    oldest_ns: AtomicU64,
}

async fn read_loop(tier: Tier, db: Arc<Database>, seed: u64, shared: Arc<Shared>) {
    let zipf = Zipf::new(USERS as f64, 1.0).expect("valid Zipf");
    let mut rng = StdRng::seed_from_u64(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        let id = zipf.sample(&mut rng) as u64 - 1;
        let committed = shared.committed.updates.lock().unwrap()[id as usize];
        let began = Instant::now();
        let db = db.clone();
        let profile = tier
            .get_or_load(id, async move {
                tokio::task::spawn_blocking(move || db.profile(id))
                    .await
                    .expect("database task")
            })
            .await
            .expect("the database answers");
        assert_eq!(profile.id, id);
        shared.staleness.reads.fetch_add(1, Ordering::Relaxed);
        if let Some((version, at)) = committed {
            if profile.version < version {
                shared.staleness.stale.fetch_add(1, Ordering::Relaxed);
                let age = began.saturating_duration_since(at).as_nanos() as u64;
                shared.staleness.oldest_ns.fetch_max(age, Ordering::Relaxed);
            }
        }
    }
}

struct Shared {
    stop: AtomicBool,
    committed: Committed,
    staleness: Staleness,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, own_redis) = redis()?;
    let prefix = format!("profile:{}:", std::process::id());
    let db = Arc::new(Database::open()?);
    let (a, b) = (
        instance(&url, &prefix).await?,
        instance(&url, &prefix).await?,
    );
    assert!(
        a.is_tracked() && b.is_tracked(),
        "Redis tracks both instances"
    );
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        committed: Committed {
            updates: Mutex::new(vec![None; USERS as usize]),
        },
        staleness: Staleness::default(),
    });

    let started = Instant::now();
    let readers: Vec<_> = (0..4u64)
        .map(|seed| {
            let tier = if seed % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(read_loop(tier, db.clone(), seed, shared.clone()))
        })
        .collect();

    // Updates through A: SQLite first, then write-through. B learns from Redis.
    let mut delays = Vec::new();
    let mut rng = StdRng::seed_from_u64(99);
    while started.elapsed() < RUN {
        let id = rng.random_range(0..UPDATED);
        let name = format!("user {id} (renamed at {:?})", started.elapsed());
        let (db_, name_) = (db.clone(), name.clone());
        let profile = tokio::task::spawn_blocking(move || db_.rename(id, &name_)).await??;
        let version = profile.version;
        a.insert(id, profile).await?;
        let written = Instant::now();
        shared.committed.updates.lock().unwrap()[id as usize] = Some((version, written));
        // How long B's L1 keeps a profile older than the one just written.
        while b.l1().get(&id).is_some_and(|p| p.version < version) {
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        delays.push(written.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await?;
    }
    let elapsed = started.elapsed();

    delays.sort();
    let pct = |p: usize| delays[(delays.len() - 1) * p / 100];
    let slowest = *delays.last().expect("updates ran");
    let reads = shared.staleness.reads.load(Ordering::Relaxed);
    let stale = shared.staleness.stale.load(Ordering::Relaxed);
    let oldest = Duration::from_nanos(shared.staleness.oldest_ns.load(Ordering::Relaxed));
    println!("profile service on real Redis: {USERS} users in SQLite, 2 instances, each a 2,000-entry larder L1");
    println!(
        "  reads                 {reads:>10}  ({:.0}/s over {:.1} s, Zipf 1.0, 2 tasks per instance)",
        reads as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    for (name, tier) in [("A", &a), ("B", &b)] {
        let s = tier.stats();
        let total = (s.l1_hits + s.l2_hits + s.misses).max(1) as f64;
        println!(
            "  instance {name}: L1 hits {:>8} ({:.1}%), L2 hits {:>6} ({:.1}%), misses {:>5} \
             ({:.1}%), loads {:>5}, invalidations received {:>5}",
            s.l1_hits,
            100.0 * s.l1_hits as f64 / total,
            s.l2_hits,
            100.0 * s.l2_hits as f64 / total,
            s.misses,
            100.0 * s.misses as f64 / total,
            s.loads,
            s.invalidations,
        );
    }
    println!(
        "  database              {:>10} reads, {} updates (without a cache: {reads} reads)",
        db.reads.load(Ordering::Relaxed),
        db.writes.load(Ordering::Relaxed),
    );
    println!(
        "  update through A -> B's L1 drops the old profile: p50 {:?}, p99 {:?}, max {slowest:?} \
         ({} updates)",
        pct(50),
        pct(99),
        delays.len()
    );
    println!(
        "  reads that got an older profile than the last committed update: {stale}, \
         begun at most {oldest:?} after the update"
    );
    drop(own_redis);
    if oldest > slowest {
        return Err(format!(
            "a read got an old profile {oldest:?} after its update, past the slowest measured \
             invalidation ({slowest:?})"
        )
        .into());
    }
    Ok(())
}
