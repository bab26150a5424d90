//! How values cross the wire to Redis: a compact binary form, MessagePack by default.

use std::fmt;

/// Turns values into bytes for Redis and back. The tier treats a value it cannot decode as
/// a miss (counted in `TierStats::decode_errors`), so a format change between releases
/// costs reloads, not errors.
pub trait Codec<V>: Send + Sync + 'static {
    /// The value's bytes.
    ///
    /// # Errors
    /// If the value cannot be represented.
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError>;
    /// The value these bytes encode.
    ///
    /// # Errors
    /// If the bytes are not a value of this type (written by another version or program).
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// A value that could not be encoded or decoded, with the codec's explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "codec error: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

/// MessagePack through `rmp-serde`, with struct fields by name so a value written by an
/// older version still decodes when fields are added with `#[serde(default)]`.
///
/// ```
/// use larder::tier::{Codec, MessagePack};
/// let bytes = MessagePack.encode(&(7u32, "seven".to_string())).unwrap();
/// assert_eq!(MessagePack.decode(&bytes), Ok((7u32, "seven".to_string())));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

impl<V> Codec<V> for MessagePack
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        rmp_serde::to_vec_named(value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        rmp_serde::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}
