//! Trace loading for the hit-ratio simulator: turns ARC, LIRS, cache2k and plain-text
//! traces (zstd- or gzip-compressed when named `.zst` or `.gz`) into the sequence of
//! requested keys.
//!
//! Self-contained (only `zstd` and `flate2`) so a cargo-fuzz target can include it with
//! `#[path]`. It is fuzzed, so no input may make it panic: every error is a [`TraceError`].

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// Most keys one `.lis` line may expand to; a larger range is taken to be garbage input.
pub const MAX_LINE_KEYS: u64 = 100_000_000;
/// Most keys a trace may hold when read with [`parse`] or [`load`] (800 MB of keys): over
/// seven times the largest real trace (P12, 13.2M requests), and little enough that a few
/// bytes of `.lis` asking for more are refused rather than run the machine out of memory.
pub const MAX_TOTAL_KEYS: u64 = 100_000_000;
const _: () = assert!(MAX_TOTAL_KEYS >= 5 * 13_208_930, "real traces must load");

/// Largest decompressed trace accepted: above any real trace, below this machine's memory.
pub const MAX_DECOMPRESSED_BYTES: u64 = 16 << 30;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];

/// The layout of a (decompressed) trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ARC `.lis` text: `start_block num_blocks ignored request_no` per line, fields after the
    /// second ignored; the line requests keys `start_block..start_block + num_blocks` in order.
    Arc,
    /// LIRS `.trc` text: one unsigned integer key per line; `*` lines (checkpoints) are skipped.
    Lirs,
    /// Binary big-endian `u32` keys (cache2k traces).
    U32Be,
    /// Binary big-endian `u64` keys.
    U64Be,
    /// Text, one key per line, trimmed of surrounding ASCII whitespace. A key that parses as a
    /// `u64` is used as is; any other string is hashed with 64-bit FNV-1a over its UTF-8 bytes.
    Text,
}

impl Format {
    const ALL: [Format; 5] = [Self::Arc, Self::Lirs, Self::U32Be, Self::U64Be, Self::Text];

    fn name(self) -> &'static str {
        match self {
            Self::Arc => "arc",
            Self::Lirs => "lirs",
            Self::U32Be => "u32be",
            Self::U64Be => "u64be",
            Self::Text => "text",
        }
    }
}

impl FromStr for Format {
    type Err = String;

    /// Accepts the [`Display`](fmt::Display) names, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown trace format `{s}` (try arc, lirs, u32be, u64be, text)")
            })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a trace could not be read; displays as `FILE:LINE: message` or `FILE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// The file (or name) the trace came from.
    pub file: String,
    /// The 1-based line of a text trace the problem is on, if it is on one.
    pub line: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for TraceError {}

fn error(file: &str, line: Option<u64>, message: impl Into<String>) -> TraceError {
    let (file, message) = (file.to_owned(), message.into());
    TraceError {
        file,
        line,
        message,
    }
}

/// Guesses the format from a file name, after stripping one `.zst` or `.gz` suffix:
/// `.lis` is [`Format::Arc`], `.trc` [`Format::Lirs`], `.u32be` / `.u64be` the binary
/// formats, anything else [`Format::Text`]. Case is ignored.
pub fn detect_format(path: &str) -> Format {
    let lower = path.to_ascii_lowercase();
    let base = lower.strip_suffix(".zst").or(lower.strip_suffix(".gz"));
    match base.unwrap_or(&lower).rsplit_once('.').map(|(_, ext)| ext) {
        Some("lis") => Format::Arc,
        Some("trc") => Format::Lirs,
        Some("u32be") => Format::U32Be,
        Some("u64be") => Format::U64Be,
        _ => Format::Text,
    }
}

/// How a trace's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed: the bytes are the trace.
    None,
    /// zstd.
    Zstd,
    /// gzip, possibly several members concatenated.
    Gzip,
}

impl Compression {
    /// From a file name: a `.zst` suffix means zstd, `.gz` gzip, anything else none. Case is
    /// ignored. The name decides, not the first bytes: a raw binary trace may start with a
    /// key that reads as a magic number (a `.u32be` key 0x1F8B_0001 starts like gzip).
    pub fn of_name(path: &str) -> Self {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".zst") {
            Self::Zstd
        } else if lower.ends_with(".gz") {
            Self::Gzip
        } else {
            Self::None
        }
    }

    /// From the magic bytes, for data that has no file name (the fuzz target's), and for
    /// hinting at a missing suffix.
    pub fn sniff(bytes: &[u8]) -> Self {
        if bytes.starts_with(&ZSTD_MAGIC) {
            Self::Zstd
        } else if bytes.starts_with(&GZIP_MAGIC) {
            Self::Gzip
        } else {
            Self::None
        }
    }

    /// The file name suffix that says so, without its dot.
    fn suffix(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Zstd => Some("zst"),
            Self::Gzip => Some("gz"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        }
    }
}

/// Decompresses `bytes` as `compression` says, refusing output beyond `max` bytes so a
/// small crafted stream (a "decompression bomb", or a fuzz input) cannot exhaust memory.
/// [`Compression::None`] returns the bytes unchanged. `name` is only used in errors.
pub fn decompress(
    name: &str,
    compression: Compression,
    bytes: &[u8],
    max: u64,
) -> Result<Vec<u8>, TraceError> {
    let kind = compression.name();
    let corrupt =
        |e: std::io::Error| error(name, None, format!("corrupt or truncated {kind} data: {e}"));
    let decoder: Box<dyn Read + '_> = match compression {
        Compression::None => return Ok(bytes.to_vec()),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(bytes).map_err(corrupt)?)
        }
        // Multi-member, like `gzip -d`: concatenated .gz files are one valid stream.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
    };
    let mut out = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    decoder
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() as u64 > max {
        return Err(error(
            name,
            None,
            format!("decompresses to more than {max} bytes"),
        ));
    }
    Ok(out)
}

/// [`decompress`] of whatever compression the magic bytes show ([`Compression::sniff`]),
/// for data that has no file name to tell it (the fuzz target's).
pub fn decompress_with_limit(name: &str, bytes: &[u8], max: u64) -> Result<Vec<u8>, TraceError> {
    decompress(name, Compression::sniff(bytes), bytes, max)
}

/// Parses decompressed trace bytes into keys, refusing traces of more than
/// [`MAX_TOTAL_KEYS`] keys. `name` is only used in errors.
pub fn parse(name: &str, format: Format, bytes: &[u8]) -> Result<Vec<u64>, TraceError> {
    parse_with_limit(name, format, bytes, MAX_TOTAL_KEYS)
}

/// [`parse`] refusing traces of more than `max` keys, so a fuzz target can keep a few
/// bytes of `.lis` from expanding into gigabytes.
pub fn parse_with_limit(
    name: &str,
    format: Format,
    bytes: &[u8],
    max: u64,
) -> Result<Vec<u64>, TraceError> {
    let keys = match format {
        Format::U32Be => parse_binary::<4>(name, bytes, max)?,
        Format::U64Be => parse_binary::<8>(name, bytes, max)?,
        Format::Arc | Format::Lirs | Format::Text => parse_lines(name, format, bytes, max)?,
    };
    if keys.is_empty() {
        return Err(error(name, None, "trace holds no requests"));
    }
    Ok(keys)
}

/// Reads, decompresses ([`Compression::of_name`]) and parses a trace file; `format: None`
/// means [`detect_format`].
pub fn load(path: &Path, format: Option<Format>) -> Result<Vec<u64>, TraceError> {
    let name = path.display().to_string();
    let raw = std::fs::read(path).map_err(|e| error(&name, None, format!("cannot read: {e}")))?;
    let compression = Compression::of_name(&name);
    let bytes = if compression == Compression::None {
        raw
    } else {
        let bytes = decompress(&name, compression, &raw, MAX_DECOMPRESSED_BYTES);
        // The compressed copy is dead weight while the keys are parsed.
        drop(raw);
        bytes?
    };
    let format = format.unwrap_or_else(|| detect_format(&name));
    parse(&name, format, &bytes).map_err(|mut e| {
        // Compressed data under a name that does not say so: the likely cause, told.
        let looks = Compression::sniff(&bytes);
        if let (Compression::None, Some(suffix)) = (compression, looks.suffix()) {
            let kind = looks.name();
            let hint = format!(" (the file starts like {kind} data: name it *.{suffix}?)");
            e.message.push_str(&hint);
        }
        e
    })
}

fn parse_binary<const W: usize>(
    name: &str,
    bytes: &[u8],
    max: u64,
) -> Result<Vec<u64>, TraceError> {
    let (len, tail) = (bytes.len(), bytes.len() % W);
    if tail != 0 {
        let why = format!(
            "truncated {}-bit big-endian trace: length {len} is not a multiple of {W}; \
             the {tail} byte(s) from byte offset {} do not make a whole key",
            W * 8,
            len - tail
        );
        return Err(error(name, None, why));
    }
    if (len / W) as u64 > max {
        let why = format!("trace exceeds the limit of {max} keys");
        return Err(error(name, None, why));
    }
    let mut keys = reserve(name, len / W)?;
    // A fold rather than `from_be_bytes(chunk.try_into())` leaves nothing to unwrap.
    let key = |c: &[u8]| c.iter().fold(0, |k, &b| (k << 8) | u64::from(b));
    keys.extend(bytes.chunks_exact(W).map(key));
    Ok(keys)
}

/// An empty vector with room for `count` keys, or the trace error that memory ran out: a
/// failed allocation would otherwise abort the simulator with no word of which trace.
fn reserve(name: &str, count: usize) -> Result<Vec<u64>, TraceError> {
    let mut keys = Vec::new();
    keys.try_reserve_exact(count).map_err(|e| {
        let why = format!("cannot allocate memory for {count} keys: {e}");
        error(name, None, why)
    })?;
    Ok(keys)
}

fn parse_lines(name: &str, format: Format, bytes: &[u8], max: u64) -> Result<Vec<u64>, TraceError> {
    let newlines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
    // One up-front check lets the per-line loop stay on raw bytes.
    if let Err(e) = std::str::from_utf8(bytes) {
        let at = e.valid_up_to();
        let line = newlines(bytes.get(..at).unwrap_or(bytes)) as u64 + 1;
        let why = format!("invalid UTF-8 at byte offset {at}");
        return Err(error(name, Some(line), why));
    }
    // Two passes: the first checks every line and counts the keys, so a trace over `max` is
    // refused (at the line that crosses it) before anything is allocated, and the second
    // fills a vector allocated once at its exact size, not doubled past it as it grows.
    let mut total = 0u64;
    for range in ranges(name, format, bytes) {
        let (line, _, count) = range?;
        total = total.saturating_add(count);
        if total > max {
            let why = format!("trace exceeds the limit of {max} keys");
            return Err(error(name, Some(line), why));
        }
    }
    let mut keys = reserve(name, usize::try_from(total).unwrap_or(usize::MAX))?;
    for range in ranges(name, format, bytes) {
        let (_, first, count) = range?;
        // `first + i` cannot overflow: `arc_range` checked `first + count`.
        keys.extend((0..count).map(|i| first + i));
    }
    Ok(keys)
}

/// Each request line of a text trace as (1-based line number, first key, key count), or
/// the error on it; blank lines and LIRS checkpoints are skipped.
fn ranges<'a>(
    name: &'a str,
    format: Format,
    bytes: &'a [u8],
) -> impl Iterator<Item = Result<(u64, u64, u64), TraceError>> + 'a {
    let lines = bytes.split(|&b| b == b'\n').enumerate();
    lines.filter_map(move |(index, raw)| {
        let line = raw.trim_ascii(); // also drops the `\r` of CRLF files
        if line.is_empty() || (format == Format::Lirs && line == b"*") {
            return None;
        }
        let at = index as u64 + 1;
        let range = match format {
            Format::Arc => arc_range(line),
            Format::Lirs => number(line, "key").map(|key| (key, 1)),
            _ => Ok((parse_u64(line).unwrap_or_else(|_| fnv1a(line)), 1)),
        };
        Some(
            range
                .map(|(first, count)| (at, first, count))
                .map_err(|why| error(name, Some(at), why)),
        )
    })
}

/// The first key and key count of one `.lis` line.
fn arc_range(line: &[u8]) -> Result<(u64, u64), String> {
    let mut fields = line
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty());
    let (Some(start), Some(count)) = (fields.next(), fields.next()) else {
        return Err("expected `start_block num_blocks ...` but found fewer than 2 fields".into());
    };
    let (start, count) = (number(start, "start_block")?, number(count, "num_blocks")?);
    if count > MAX_LINE_KEYS {
        let max = MAX_LINE_KEYS;
        let why = format!("num_blocks {count} is over the limit of {max} per line");
        return Err(why);
    }
    if start.checked_add(count).is_none() {
        let why = format!("start_block {start} + num_blocks {count} overflows u64");
        return Err(why);
    }
    Ok((start, count))
}

fn number(field: &[u8], what: &str) -> Result<u64, String> {
    parse_u64(field).map_err(|why| {
        // Cut so that a garbage megabyte line still makes a readable message.
        let shown = String::from_utf8_lossy(field.get(..40).unwrap_or(field));
        let more = if field.len() > 40 { "..." } else { "" };
        format!("{what} `{shown}{more}` {why}")
    })
}

/// Digits only (no sign, no spaces), checked against `u64` overflow.
fn parse_u64(bytes: &[u8]) -> Result<u64, &'static str> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Err("is not an unsigned integer");
    }
    let digit = |n: u64, &b: &u8| n.checked_mul(10)?.checked_add(u64::from(b - b'0'));
    let value = bytes.iter().try_fold(0, digit);
    value.ok_or("does not fit in 64 bits")
}

/// 64-bit FNV-1a: fixed and seedless, so a text trace maps to the same keys on every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |h: u64, &b: &u8| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ok(format: Format, input: &[u8]) -> Vec<u64> {
        parse("t", format, input).unwrap()
    }

    fn fails(format: Format, input: &[u8]) -> String {
        let limited = parse_with_limit("t", format, input, 5);
        limited.unwrap_err().to_string()
    }

    #[test]
    fn text_formats() {
        let arc = b"10 3 0 0\n5 1 0 1 extra\n\n  7\t2 0 2\r\n9 0 0 3\n4 1";
        assert_eq!(ok(Format::Arc, arc), [10, 11, 12, 5, 7, 8, 4]);
        assert_eq!(ok(Format::Lirs, b"1\r\n*\r\n\r\n2\n  3 \n*\n"), [1, 2, 3]);
        assert_eq!(ok(Format::Lirs, b"18446744073709551615"), [u64::MAX]);
        let (hi, minus) = (fnv1a(b"hi"), fnv1a(b"-1"));
        let text = b"42\nhi\r\n\n 42 \nhi\n18446744073709551615\n-1\n";
        assert_eq!(ok(Format::Text, text), [42, hi, 42, hi, u64::MAX, minus]);
        // Published FNV-1a 64 test vectors, pinning the documented hash.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn binary_formats() {
        let bytes = [0, 0, 0, 1, 255, 255, 255, 254];
        assert_eq!(ok(Format::U32Be, &bytes), [1, 0xffff_fffe]);
        let mut bytes = 7u64.to_be_bytes().to_vec();
        bytes.extend(u64::MAX.to_be_bytes());
        assert_eq!(ok(Format::U64Be, &bytes), [7, u64::MAX]);
        assert!(fails(Format::U32Be, &[0; 5]).starts_with("t: truncated 32-bit"));
        assert!(fails(Format::U32Be, &[0; 6]).contains("from byte offset 4"));
        assert!(fails(Format::U64Be, &[0; 12]).contains("from byte offset 8"));
        assert!(fails(Format::U32Be, &[0; 24]).contains("limit of 5 keys"));
    }

    #[test]
    fn errors_name_file_and_line() {
        #[rustfmt::skip]
        let cases: [(Format, &[u8], &str); 13] = [
            (Format::Arc, b"1 1 0 0\nx 1 0 0\n", "t:2: start_block `x` is not an unsigned"),
            (Format::Arc, b"1 1\n1 -2 0 0", "t:2: num_blocks `-2` is not an unsigned"),
            (Format::Arc, b"1 1\r\n\r\n 5 \r\n", "t:3: expected `start_block num_blocks"),
            (Format::Arc, b"18446744073709551615 1", "t:1: start_block 18446744073709551615 + num"),
            (Format::Arc, b"1 1\n0 100000001 0 0", "t:2: num_blocks 100000001 is over the limit of 100000000 per line"),
            (Format::Arc, b"0 3\n0 2\n9 1", "t:3: trace exceeds the limit of 5 keys"),
            (Format::Arc, b"0 1\n1 1\n\xff 1", "t:3: invalid UTF-8 at byte offset 8"),
            (Format::Lirs, b"1\n\n2x\n", "t:3: key `2x` is not an unsigned integer"),
            (Format::Lirs, b"1\n99999999999999999999", "t:2: key `99999999999999999999` does not fit"),
            (Format::Lirs, b"1\n2\n3\n4\n5\n6", "t:6: trace exceeds the limit of 5 keys"),
            (Format::Text, b"a\nb\xc3(", "t:2: invalid UTF-8 at byte offset 3"),
            (Format::Lirs, b"*\r\n\r\n*", "t: trace holds no requests"),
            (Format::Arc, b"1 0 0 0\n", "t: trace holds no requests"),
        ];
        for (format, input, want) in cases {
            let got = fails(format, input);
            assert!(got.starts_with(want), "{format}: {got:?} vs {want:?}");
        }
        for format in Format::ALL {
            assert_eq!(fails(format, b""), "t: trace holds no requests");
        }
        let long = parse("t", Format::Lirs, &[b'7'; 100]).unwrap_err().message;
        assert!(long.len() < 100, "long fields are shortened: {long}");
    }

    #[test]
    fn compression_round_trips() {
        let plain = b"3\n*\n4\r\n".to_vec();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        for (compression, packed) in [
            (Compression::None, &plain),
            (Compression::Zstd, &zst),
            (Compression::Gzip, &gz),
        ] {
            let bytes = decompress("x", compression, packed, MAX_DECOMPRESSED_BYTES).unwrap();
            assert_eq!(parse("x", Format::Lirs, &bytes).unwrap(), [3, 4]);
            // The fuzz target's way in, by magic bytes.
            assert_eq!(decompress_with_limit("x", packed, 1 << 10).unwrap(), bytes);
        }
        for packed in [&zst, &gz] {
            let cut = decompress_with_limit("c.zst", &packed[..packed.len() - 3], 1 << 10);
            let cut = cut.unwrap_err().to_string();
            assert!(cut.starts_with("c.zst: corrupt or truncated"), "{cut}");
        }
        let path = std::env::temp_dir().join(format!("h_trace_{}.trc.gz", std::process::id()));
        std::fs::write(&path, &gz).unwrap();
        let loaded = load(&path, None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), [3, 4]);
        let missing = load(Path::new("/no/such.lis"), None).unwrap_err();
        assert!(missing.to_string().starts_with("/no/such.lis: cannot read"));
    }

    /// Writes `bytes` to a temporary file called `name`, and [`load`]s it.
    fn load_file(name: &str, bytes: &[u8]) -> Result<Vec<u64>, TraceError> {
        let path = std::env::temp_dir().join(format!("h_trace_{}_{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let loaded = load(&path, None);
        std::fs::remove_file(&path).unwrap();
        loaded
    }

    /// The file name, not the first bytes, says whether a trace is compressed: raw binary
    /// keys may start like gzip or zstd data.
    #[test]
    fn a_raw_trace_starting_like_compressed_data_loads_as_keys() {
        let gzip_like = [0x1F, 0x8B, 0x00, 0x01, 0, 0, 0, 2];
        assert_eq!(load_file("g.u32be", &gzip_like).unwrap(), [0x1F8B_0001, 2]);
        let mut zstd_like = 0x28B5_2FFD_0000_0001_u64.to_be_bytes().to_vec();
        zstd_like.extend(7u64.to_be_bytes());
        assert_eq!(
            load_file("z.u64be", &zstd_like).unwrap(),
            [0x28B5_2FFD_0000_0001, 7]
        );
        // The same keys compressed are read through their suffix, in any case.
        let zst = zstd::encode_all(&gzip_like[..], 3).unwrap();
        assert_eq!(load_file("g.U32BE.ZST", &zst).unwrap(), [0x1F8B_0001, 2]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&zstd_like).unwrap();
        assert_eq!(
            load_file("z.u64be.gz", &gz.finish().unwrap()).unwrap()[1],
            7
        );
        // Compressed data under a plain name is parsed raw, and the error says what it looks like.
        let text = load_file("keys.txt", &zst).unwrap_err().message;
        assert!(
            text.ends_with("(the file starts like zstd data: name it *.zst?)"),
            "{text}"
        );
    }

    /// A few bytes of `.lis` can ask for any number of keys: past [`MAX_TOTAL_KEYS`] they are
    /// refused, naming the file and the line that crossed it, before any is allocated.
    #[test]
    fn a_lis_asking_for_too_many_keys_is_refused_at_its_line() {
        let err = load_file("big.lis", b"0 60000000 0 0\n\n7 50000000 0 1\n").unwrap_err();
        assert!(err.file.ends_with("big.lis"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
        assert_eq!(err.message, "trace exceeds the limit of 100000000 keys");
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![b'0'; 1 << 20];
        let zst = zstd::encode_all(&zeros[..], 19).unwrap();
        assert!(zst.len() < 1 << 10, "{} compressed bytes", zst.len());
        let err = decompress("bomb.zst", Compression::Zstd, &zst, 1 << 16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bomb.zst: decompresses to more than 65536 bytes"
        );
        let exact = decompress("fits.zst", Compression::Zstd, &zst, 1 << 20).unwrap();
        assert_eq!(exact.len(), 1 << 20);
    }

    #[test]
    fn format_names_and_detection() {
        for (path, want) in [
            ("arc/P12.lis.zst", Format::Arc),
            ("a/B.TRC.GZ", Format::Lirs),
            ("orm.u32be.zst", Format::U32Be),
            ("k.u64be", Format::U64Be),
            ("keys.txt.gz", Format::Text),
            ("lis", Format::Text),
            ("x.lis.zst.gz", Format::Text),
        ] {
            assert_eq!(detect_format(path), want, "{path}");
        }
        for format in Format::ALL {
            assert_eq!(format.to_string().parse::<Format>(), Ok(format));
        }
        assert_eq!("ARC".parse::<Format>(), Ok(Format::Arc));
        let unknown = "xz".parse::<Format>().unwrap_err();
        assert!(unknown.starts_with("unknown trace format `xz`"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let zst = zstd::encode_all(&b"1 2 0 0\n5 3\n"[..], 1).unwrap();
        let mut gz = Vec::new();
        flate2::read::GzEncoder::new(&b"7\r\n*\n"[..], Default::default())
            .read_to_end(&mut gz)
            .unwrap();
        let seeds: [&[u8]; 5] = [
            b"10 3 0 0\n5 1 0 1\r\n",
            b"1\r\n*\n22\n",
            b"ab\n12\n",
            &zst,
            &gz,
        ];
        // Bytes that steer inputs into the parsers' interesting paths.
        let alphabet = b"0123456789 \t\r\n*\xff\xc3-99999999999";
        let pick = |r: u64| alphabet[r as usize % alphabet.len()];
        for i in 0..10_000 {
            let mut input: Vec<u8> = match i % 3 {
                0 => (0..next() % 200).map(|_| next() as u8).collect(),
                1 => (0..next() % 200).map(|_| pick(next())).collect(),
                _ => seeds[i % seeds.len()].to_vec(),
            };
            for _ in 0..next() % 4 {
                let at = next() as usize % (input.len() + 1);
                match next() % 3 {
                    0 if at < input.len() => input[at] = next() as u8,
                    1 => input.insert(at, pick(next())),
                    _ => input.truncate(at),
                }
            }
            let bytes = decompress_with_limit("f", &input, 1 << 20).unwrap_or(input);
            for format in Format::ALL {
                let _ = parse_with_limit("f", format, &bytes, 1 << 16);
            }
        }
    }

    /// Run with `cargo test --release -- --ignored --nocapture`; `LARDER_TRACES` overrides the directory.
    #[test]
    #[ignore]
    fn real_traces_match_readme() {
        let dir = std::env::var("LARDER_TRACES").unwrap_or_else(|_| "/work/shared/traces".into());
        #[rustfmt::skip]
        let table: [(&str, usize, usize); 21] = [
            ("arc/OLTP.lis.zst", 914_145, 186_880), ("arc/P2.lis.zst", 12_729_495, 913_347),
            ("arc/P3.lis.zst", 3_912_296, 762_543), ("arc/P6.lis.zst", 12_672_123, 773_770),
            ("arc/P12.lis.zst", 13_208_930, 3_153_310), ("lirs/loop.trc.gz", 505_500, 1_011),
            ("lirs/2_pools.trc.gz", 100_000, 9_939), ("lirs/sprite.trc.gz", 133_996, 7_075),
            ("lirs/multi1.trc.gz", 15_858, 2_606), ("lirs/multi2.trc.gz", 26_311, 5_684),
            ("lirs/multi3.trc.gz", 30_241, 7_454), ("lirs/zigzag.trc.gz", 52_001, 2_001),
            ("lirs/scan.trc.gz", 50_025, 2_001), ("lirs/gli.trc.gz", 6_015, 2_529),
            ("lirs/cs.trc.gz", 6_781, 1_409), ("lirs/ps.trc.gz", 10_448, 3_083),
            ("lirs/cpp.trc.gz", 9_047, 1_223), ("cache2k/orm-busy.u32be.zst", 5_000_000, 76_349),
            ("cache2k/orm-night.u32be.zst", 5_000_000, 86_466),
            ("cache2k/web07.u32be.zst", 76_118, 20_484), ("cache2k/web12.u32be.zst", 95_607, 13_756),
        ];
        let mut wrong = Vec::new();
        for (file, requests, unique) in table {
            let start = std::time::Instant::now();
            let keys = load(&Path::new(&dir).join(file), None).unwrap();
            let elapsed = start.elapsed();
            let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len();
            println!(
                "{file}: {} requests, {distinct} unique, {elapsed:.1?}",
                keys.len()
            );
            if (keys.len(), distinct) != (requests, unique) {
                wrong.push(format!("{file}: README says {requests} / {unique}"));
            }
        }
        // Every trace file in the directory must be in the table, so none goes unchecked.
        for sub in ["arc", "lirs", "cache2k"] {
            for entry in std::fs::read_dir(Path::new(&dir).join(sub)).unwrap() {
                let name = format!("{sub}/{}", entry.unwrap().file_name().to_string_lossy());
                if !name.ends_with("LICENSE.txt") && !table.iter().any(|t| t.0 == name) {
                    wrong.push(format!("{name}: not in the README table"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
