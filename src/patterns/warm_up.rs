//! Warm-up: save the hottest entries of a cache and load them into a new one on start, so a
//! deploy does not begin with a cold cache. Snapshots are MessagePack (compact, and any
//! serde type works) behind a header that names the types and checksums the entries, so a
//! snapshot that is not whole, was altered, or holds other types is refused.

use std::hash::{BuildHasher, Hash};
use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Cache;

/// Why a snapshot could not be written or read.
#[derive(Debug)]
#[non_exhaustive]
pub enum WarmUpError {
    /// A key or value serde could not encode.
    Save(rmp_serde::encode::Error),
    /// Writing the snapshot failed (I/O).
    Write(std::io::Error),
    /// Reading the snapshot failed (I/O).
    Read(std::io::Error),
    /// The bytes are not a whole snapshot written by [`save`]: not one at all, of a format
    /// version this build does not read, truncated, altered (its checksum differs), or
    /// followed by other bytes.
    Corrupt(&'static str),
    /// The snapshot holds other key or value types than the cache's (as Rust names them).
    OtherTypes {
        /// The snapshot's `(key, value)` types.
        snapshot: String,
        /// The cache's.
        cache: String,
    },
    /// The snapshot is whole but its entries do not decode as the cache's types.
    Load(rmp_serde::decode::Error),
}

impl std::fmt::Display for WarmUpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Save(e) => write!(f, "cannot save the warm-up snapshot: {e}"),
            Self::Write(e) => write!(f, "cannot save the warm-up snapshot: {e}"),
            Self::Read(e) => write!(f, "cannot load the warm-up snapshot: {e}"),
            Self::Corrupt(why) => write!(f, "cannot load the warm-up snapshot: {why}"),
            Self::OtherTypes { snapshot, cache } => write!(
                f,
                "cannot load the warm-up snapshot: it holds {snapshot}, the cache {cache}"
            ),
            Self::Load(e) => write!(f, "cannot load the warm-up snapshot: {e}"),
        }
    }
}

impl std::error::Error for WarmUpError {}

/// The first bytes of every snapshot, then the format version.
const MAGIC: &[u8; 8] = b"LARDERWU";
const VERSION: u8 = 1;

/// A snapshot is [`MAGIC`], [`VERSION`], the types' names (a little-endian `u32` length,
/// then UTF-8), the entries' length (`u64`) and their FNV-1a checksum (`u64`), then the
/// entries, MessagePack, and nothing after. Bare MessagePack let a flipped byte, bytes
/// appended by a torn write, or another cache's entries of compatible encoding load
/// without a word (session 22's review: a `(u64, u64)` snapshot filled a `Cache<u8, i32>`).
fn types<K, V>() -> String {
    format!(
        "({}, {})",
        std::any::type_name::<K>(),
        std::any::type_name::<V>()
    )
}

/// FNV-1a, 64 bits: enough to tell an altered snapshot, with no dependency.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes the `n` hottest entries (by the admission policy's frequency estimate, see
/// [`Cache::hottest`]) to `out`, hottest first. Returns how many were written.
///
/// # Errors
/// [`WarmUpError::Save`] if encoding fails, [`WarmUpError::Write`] if writing does.
pub fn save<K, V, S, W>(cache: &Cache<K, V, S>, n: usize, out: W) -> Result<usize, WarmUpError>
where
    K: Hash + Eq + Clone + Send + Sync + Serialize + 'static,
    V: Clone + Send + Sync + Serialize + 'static,
    S: BuildHasher,
    W: Write,
{
    let hottest = cache.hottest(n);
    let entries = rmp_serde::encode::to_vec(&hottest).map_err(WarmUpError::Save)?;
    let types = types::<K, V>();
    let types_len = u32::try_from(types.len()).expect("type names under 4 GiB");
    let mut out = out;
    let mut write = |bytes: &[u8]| out.write_all(bytes).map_err(WarmUpError::Write);
    write(MAGIC)?;
    write(&[VERSION])?;
    write(&types_len.to_le_bytes())?;
    write(types.as_bytes())?;
    write(&(entries.len() as u64).to_le_bytes())?;
    write(&checksum(&entries).to_le_bytes())?;
    write(&entries)?;
    Ok(hottest.len())
}

/// Reads a snapshot written by [`save`] and inserts its entries hottest first: a new cache
/// has no frequency history, and among equals its admission keeps the entries it already
/// holds (a newcomer must have been seen more often than its victim, by a margin), so the
/// hottest must arrive first. Measured: a 60-entry cache loaded from a 100-entry snapshot
/// kept 10 of the 50 hottest in reverse order and 50 in snapshot order. Entries get the
/// cache's default TTL.
/// Returns how many were inserted; entries too heavy for the budget are skipped.
///
/// # Errors
/// [`WarmUpError::Read`] if reading fails, [`WarmUpError::Corrupt`] if the bytes are not a
/// whole, unaltered snapshot, [`WarmUpError::OtherTypes`] if it holds other types than the
/// cache's, [`WarmUpError::Load`] if its entries do not decode. The cache is then
/// unchanged.
pub fn load<K, V, S, R>(cache: &Cache<K, V, S>, input: R) -> Result<usize, WarmUpError>
where
    K: Hash + Eq + Send + Sync + DeserializeOwned + 'static,
    V: Send + Sync + DeserializeOwned + 'static,
    S: BuildHasher,
    R: Read,
{
    let mut bytes = Vec::new();
    let mut input = input;
    input.read_to_end(&mut bytes).map_err(WarmUpError::Read)?;
    let entries = entries_of::<K, V>(&bytes)?;
    // Decode everything before inserting anything: a bad snapshot changes nothing.
    let entries: Vec<(K, V)> = rmp_serde::from_slice(entries).map_err(WarmUpError::Load)?;
    Ok(entries
        .into_iter()
        .filter_map(|(key, value)| cache.insert(key, value).ok())
        .count())
}

/// The entries' bytes of a whole, unaltered snapshot of `(K, V)`.
fn entries_of<K, V>(snapshot: &[u8]) -> Result<&[u8], WarmUpError> {
    let mut rest = snapshot;
    let mut take = |n: usize| -> Result<&[u8], WarmUpError> {
        if rest.len() < n {
            return Err(WarmUpError::Corrupt("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    if take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
        return Err(WarmUpError::Corrupt("not a larder warm-up snapshot"));
    }
    if take(1)? != [VERSION] {
        return Err(WarmUpError::Corrupt(
            "a snapshot format this build cannot read",
        ));
    }
    let types_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let types = take(types_len as usize)?;
    let expected = self::types::<K, V>();
    if types != expected.as_bytes() {
        return Err(WarmUpError::OtherTypes {
            snapshot: String::from_utf8_lossy(types).into_owned(),
            cache: expected,
        });
    }
    let len = word(take(8)?);
    let sum = word(take(8)?);
    let entries = take(usize::try_from(len).map_err(|_| WarmUpError::Corrupt("truncated"))?)?;
    if !rest.is_empty() {
        return Err(WarmUpError::Corrupt("other bytes follow the snapshot"));
    }
    if checksum(entries) != sum {
        return Err(WarmUpError::Corrupt("altered: its checksum differs"));
    }
    Ok(entries)
}
