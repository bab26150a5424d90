//! The user-profile service of the classic multi-tier caching guide: SQLite is the source of
//! truth, larder sits in front as a read-through cache with early refresh, and profile
//! updates invalidate the cached copy (cache-aside). Four client threads read profiles with
//! a Zipf skew for three seconds while a fifth updates some; then 64 clients hit one hot
//! profile the moment it expires, with larder and with plain cache-aside. The statistics at
//! the end show what reached the database.
//!
//! Run: `cargo run --release --example profile_service`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use larder::patterns::Refresh;
use larder::Cache;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use rusqlite::{params, Connection};

const USERS: u64 = 10_000;
const TTL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
struct Profile {
    name: String,
    email: String,
    visits: u64,
}

/// The database: one SQLite connection, counting the queries it answers.
struct Database {
    conn: Mutex<Connection>,
    queries: AtomicU64,
}

impl Database {
    fn open() -> rusqlite::Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE profiles (id INTEGER PRIMARY KEY, name TEXT, email TEXT, visits INTEGER)",
        )?;
        {
            let mut insert = conn
                .prepare("INSERT INTO profiles (id, name, email, visits) VALUES (?1, ?2, ?3, 0)")?;
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
            queries: AtomicU64::new(0),
        })
    }

    fn profile(&self, id: u64) -> rusqlite::Result<Profile> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        // A real query costs a round trip; keep a little of that here.
        std::thread::sleep(Duration::from_micros(200));
        self.conn.lock().unwrap().query_row(
            "SELECT name, email, visits FROM profiles WHERE id = ?1",
            [id],
            |row| {
                Ok(Profile {
                    name: row.get(0)?,
                    email: row.get(1)?,
                    visits: row.get(2)?,
                })
            },
        )
    }

    fn record_visit(&self, id: u64) -> rusqlite::Result<()> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE profiles SET visits = visits + 1 WHERE id = ?1",
                [id],
            )
            .map(|_| ())
    }
}

/// Runs `read` from 64 clients released at the same moment; returns the database queries
/// they caused.
fn stampede(db: &Database, read: impl Fn() + Sync) -> u64 {
    let before = db.queries.load(Ordering::Relaxed);
    let barrier = Barrier::new(64);
    std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                barrier.wait();
                read();
            });
        }
    });
    db.queries.load(Ordering::Relaxed) - before
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Arc::new(Database::open()?);
    let loader_db = Arc::clone(&db);
    let profiles = Cache::<u64, Arc<Profile>>::builder()
        .max_entries(2_000)
        .default_ttl(TTL)
        .loader(move |id: &u64| loader_db.profile(*id).map(Arc::new))
        .refresh(Refresh::Early { beta: 1.0 })
        .build()?;

    let requests = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..4u64 {
            let (profiles, requests, stop) = (&profiles, &requests, &stop);
            scope.spawn(move || {
                let zipf = Zipf::new(USERS as f64, 1.0).expect("valid Zipf");
                let mut rng = StdRng::seed_from_u64(client);
                while !stop.load(Ordering::Relaxed) {
                    let id = zipf.sample(&mut rng) as u64 - 1;
                    let profile = profiles.get(&id).expect("the database answers");
                    assert!(profile.email.starts_with('u'), "{}", profile.name);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Updates: write to the database, then drop the cached copy (cache-aside).
        let (profiles, db, stop) = (&profiles, &db, &stop);
        scope.spawn(move || {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                db.record_visit(id % 100).expect("update");
                profiles.remove(&(id % 100));
                id += 7;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();

    // A stampede: the hottest profile expires and 64 clients want it at the same moment.
    std::thread::sleep(TTL + Duration::from_millis(50));
    let stampede_queries = stampede(&db, || {
        profiles.get(&0).expect("the database answers");
    });

    // The same stampede against plain cache-aside (get; on a miss query and insert): every
    // client that misses before the first query returns goes to the database.
    let plain = Cache::<u64, Arc<Profile>>::builder()
        .max_entries(2_000)
        .build()?;
    let unprotected_queries = stampede(&db, || {
        if plain.get(&0).is_none() {
            let profile = Arc::new(db.profile(0).expect("the database answers"));
            plain.insert(0, profile).expect("fits");
        }
    });

    let requests = requests.load(Ordering::Relaxed) + 64;
    let engine = profiles.cache_stats();
    let loading = profiles.stats();
    println!(
        "profile service, {USERS} users in SQLite, a 2,000-entry larder in front, TTL {TTL:?}"
    );
    println!(
        "  requests              {requests:>10}  ({:.0}/s over {:.1} s)",
        requests as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  cache hits            {:>10}  ({:.1}%)",
        engine.hits,
        100.0 * engine.hit_ratio()
    );
    println!("  cache misses          {:>10}", engine.misses);
    println!("  loads from SQLite     {:>10}", loading.loads);
    println!("  early refreshes       {:>10}", loading.refreshes);
    println!(
        "  stampedes avoided     {:>10}  (callers served by another's load)",
        engine.loads_joined
    );
    println!(
        "  database queries      {:>10}  (without a cache: {requests} reads)",
        db.queries.load(Ordering::Relaxed)
    );
    println!(
        "  expired hot key, 64 clients at once: {stampede_queries} database query with larder, \
         {unprotected_queries} with plain cache-aside"
    );
    // Updates invalidated the cached copies: the cache answers what the database holds.
    let cached = profiles.get(&7)?.visits;
    let stored = db.profile(7)?.visits;
    println!("  profile 7: {cached} visits cached, {stored} in the database");
    Ok(())
}
