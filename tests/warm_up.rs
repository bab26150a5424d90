//! Warm-up: the hottest entries saved through serde and loaded into a new cache; a key list
//! preloaded through the loader.

use larder::patterns::warm_up;
use larder::Cache;

#[test]
fn the_hottest_entries_survive_a_restart() {
    let old: Cache<u64, String> = Cache::builder().max_entries(1000).build().unwrap();
    for key in 0..1000u64 {
        old.insert(key, format!("v{key}")).unwrap();
    }
    // Keys 0..50 are hot.
    for _ in 0..10 {
        for key in 0..50u64 {
            assert!(old.get(&key).is_some());
        }
    }
    let mut snapshot = Vec::new();
    assert_eq!(warm_up::save(&old, 100, &mut snapshot).unwrap(), 100);
    println!("100 entries in {} bytes", snapshot.len());

    // The new process: a smaller cache, filled from the snapshot before traffic.
    let new: Cache<u64, String> = Cache::builder().max_entries(60).build().unwrap();
    assert_eq!(warm_up::load(&new, &snapshot[..]).unwrap(), 100);
    let hot_present = (0..50u64)
        .filter(|k| new.get(k) == Some(format!("v{k}")))
        .count();
    println!("{hot_present} of 50 hot keys warm in a 60-entry cache");
    assert!(hot_present >= 45, "only {hot_present} of 50 hot keys warm");
}

#[test]
fn a_corrupt_or_truncated_snapshot_is_refused_and_changes_nothing() {
    let old: Cache<u64, String> = Cache::builder().max_entries(100).build().unwrap();
    for key in 0..20u64 {
        old.insert(key, format!("v{key}")).unwrap();
    }
    let mut snapshot = Vec::new();
    warm_up::save(&old, 20, &mut snapshot).unwrap();
    let new: Cache<u64, String> = Cache::builder().max_entries(100).build().unwrap();
    new.insert(999, "kept".into()).unwrap();
    let truncated = warm_up::load(&new, &snapshot[..snapshot.len() - 3]);
    assert!(matches!(
        truncated,
        Err(warm_up::WarmUpError::Corrupt("truncated"))
    ));
    let garbage = warm_up::load(&new, &b"not a snapshot"[..]);
    assert!(garbage.unwrap_err().to_string().starts_with("cannot load"));
    // Other types than the snapshot's.
    let wrong: Cache<String, u64> = Cache::builder().max_entries(100).build().unwrap();
    assert!(warm_up::load(&wrong, &snapshot[..]).is_err());
    assert_eq!(new.len(), 1, "nothing inserted from a bad snapshot");
    assert_eq!(new.get(&999).as_deref(), Some("kept"));
}

#[test]
fn a_key_list_preloads_through_the_loader() {
    let cache = Cache::<u64, u64>::builder()
        .max_entries(100)
        .loader(|key: &u64| {
            if *key == 13 {
                Err("missing")
            } else {
                Ok(key * 2)
            }
        })
        .build()
        .unwrap();
    assert_eq!(cache.preload(0..20), 1, "one key failed to load");
    assert_eq!(cache.stats().loads, 20);
    assert_eq!(cache.get(&7), Ok(14));
    assert_eq!(cache.stats().loads, 20, "preloaded: no load on first use");
}

// Session 22's review: bare MessagePack accepted these three.

fn snapshot() -> Vec<u8> {
    let old: Cache<u64, String> = Cache::builder().max_entries(100).build().unwrap();
    for key in 0..5u64 {
        old.insert(key, format!("value-{key}")).unwrap();
    }
    let mut snap = Vec::new();
    warm_up::save(&old, 5, &mut snap).unwrap();
    snap
}

#[test]
fn warm_up_refuses_a_snapshot_with_a_corrupted_byte() {
    let mut snap = snapshot();
    // Flip one byte inside a string value ("value-N" -> "walue-N").
    let at = snap.iter().position(|&b| b == b'v').unwrap();
    snap[at] = b'w';
    let new: Cache<u64, String> = Cache::builder().max_entries(100).build().unwrap();
    let r = warm_up::load(&new, &snap[..]);
    assert!(
        r.is_err(),
        "corrupt snapshot accepted: {r:?}, cache now holds {:?}",
        (0..5u64).filter_map(|k| new.get(&k)).collect::<Vec<_>>()
    );
}

#[test]
fn warm_up_refuses_a_snapshot_with_trailing_garbage() {
    let mut snap = snapshot();
    snap.extend_from_slice(b"\x93garbage appended by a torn write");
    let new: Cache<u64, String> = Cache::builder().max_entries(100).build().unwrap();
    let r = warm_up::load(&new, &snap[..]);
    assert!(r.is_err(), "snapshot with trailing garbage accepted: {r:?}");
}

#[test]
fn warm_up_refuses_a_snapshot_of_other_types() {
    let old: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    for key in 0..5u64 {
        old.insert(key, key * 10).unwrap();
    }
    let mut snap = Vec::new();
    warm_up::save(&old, 5, &mut snap).unwrap();
    let other: Cache<u8, i32> = Cache::builder().max_entries(100).build().unwrap();
    let r = warm_up::load(&other, &snap[..]);
    assert!(
        r.is_err(),
        "a (u64, u64) snapshot loaded into a Cache<u8, i32>: {r:?}"
    );
}
