//! How a cache key becomes a Redis key and back.
//!
//! The way back matters: Redis reports changed keys by name (client tracking), and the tier
//! must turn each name into the L1 key to drop.

/// A key type the tier can name in Redis. The tier prepends its prefix; `to_redis_key` gives
/// the rest, and `from_redis_key` must invert it exactly (it may refuse names it did not
/// make, which the tier then ignores).
///
/// Implemented for `String`, `Vec<u8>` and the integer types (as decimal text, so the keys
/// read well in `redis-cli`).
///
/// ```
/// use larder::tier::RedisKey;
/// assert_eq!(42u64.to_redis_key(), b"42".to_vec());
/// assert_eq!(u64::from_redis_key(b"42"), Some(42));
/// assert_eq!(u64::from_redis_key(b"x"), None);
/// ```
pub trait RedisKey: Sized {
    /// The key's name in Redis, without the tier's prefix.
    fn to_redis_key(&self) -> Vec<u8>;
    /// The key named `name` (prefix already removed), or `None` if no key has that name.
    fn from_redis_key(name: &[u8]) -> Option<Self>;
}

impl RedisKey for String {
    fn to_redis_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_redis_key(name: &[u8]) -> Option<Self> {
        String::from_utf8(name.to_vec()).ok()
    }
}

impl RedisKey for Vec<u8> {
    fn to_redis_key(&self) -> Vec<u8> {
        self.clone()
    }
    fn from_redis_key(name: &[u8]) -> Option<Self> {
        Some(name.to_vec())
    }
}

macro_rules! decimal_keys {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn to_redis_key(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }
            fn from_redis_key(name: &[u8]) -> Option<Self> {
                let text = std::str::from_utf8(name).ok()?;
                let key: $t = text.parse().ok()?;
                // Only the canonical spelling: "007" or "+7" would name another Redis key.
                (key.to_string() == text).then_some(key)
            }
        }
    )*};
}

decimal_keys!(u16, u32, u64, u128, i16, i32, i64, i128, usize, isize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_refused() {
        for key in [0i64, -5, i64::MAX, i64::MIN] {
            assert_eq!(i64::from_redis_key(&key.to_redis_key()), Some(key));
        }
        assert_eq!(u32::from_redis_key(b"007"), None);
        assert_eq!(u32::from_redis_key(b"+7"), None);
        assert_eq!(u32::from_redis_key(b"99999999999"), None);
        let text = "user:\u{e9}".to_string();
        assert_eq!(String::from_redis_key(&text.to_redis_key()), Some(text));
        assert_eq!(String::from_redis_key(&[0xff]), None);
    }
}
