//! `general.alignment` read ahead of candle: candle's `Content::read`
//! divides by it unchecked once it has read the whole header, so a file
//! declaring 0 panics there (caught by the loader's `catch_unwind`, but a
//! panic on bad input is still a bug: the `gguf` fuzz target aborts on
//! it). This walks the metadata the way candle reads it, skipping every
//! value but that one, keeps nothing else, and never reads past the file:
//! lengths move the reader with `seek`, so a huge declared length ends at
//! the file's end instead of in an allocation.

use std::io::{Read, Seek, SeekFrom};

/// `GGUF`, little-endian.
const MAGIC: u32 = 0x4655_4747;
const KEY: &[u8] = b"general.alignment";
/// Arrays nest at most this deep here (candle allows less).
const MAX_DEPTH: u32 = 8;

/// The alignment candle will use if the header declares one as an integer
/// (the last declaration wins, as in candle's map); `None` when there is
/// none or the header does not read as GGUF (candle then says why). The
/// reader is put back where it was.
pub fn declared<R: Read + Seek>(reader: &mut R) -> Option<u64> {
    let start = reader.stream_position().ok()?;
    let found = scan(reader);
    reader.seek(SeekFrom::Start(start)).ok()?;
    found
}

fn scan<R: Read + Seek>(r: &mut R) -> Option<u64> {
    if u32_le(r)? != MAGIC {
        return None;
    }
    let wide = match u32_le(r)? {
        1 => false,
        2 | 3 => true,
        _ => return None,
    };
    let _tensors = length(r, wide)?;
    let entries = length(r, wide)?;
    let mut alignment = None;
    for _ in 0..entries {
        let key_len = length(r, wide)?;
        let is_alignment = if key_len == KEY.len() as u64 {
            let mut key = [0u8; KEY.len()];
            r.read_exact(&mut key).ok()?;
            key == KEY
        } else {
            forward(r, key_len)?;
            false
        };
        let kind = u32_le(r)?;
        if is_alignment {
            alignment = integer(r, kind, wide)?;
        } else {
            skip(r, kind, wide, 0)?;
        }
    }
    alignment
}

/// Reads a value of GGUF type `kind` as candle takes an alignment: the
/// unsigned and non-negative signed integers of up to 32 bits; other
/// values are skipped and give `Some(None)` (candle's default then).
fn integer<R: Read + Seek>(r: &mut R, kind: u32, wide: bool) -> Option<Option<u64>> {
    let mut b = [0u8; 4];
    Some(match kind {
        0 => {
            r.read_exact(&mut b[..1]).ok()?;
            Some(u64::from(b[0]))
        }
        1 => {
            r.read_exact(&mut b[..1]).ok()?;
            u64::try_from(i8::from_le_bytes([b[0]])).ok()
        }
        2 => {
            r.read_exact(&mut b[..2]).ok()?;
            Some(u64::from(u16::from_le_bytes([b[0], b[1]])))
        }
        3 => {
            r.read_exact(&mut b[..2]).ok()?;
            u64::try_from(i16::from_le_bytes([b[0], b[1]])).ok()
        }
        4 => Some(u64::from(u32_le(r)?)),
        5 => {
            r.read_exact(&mut b).ok()?;
            u64::try_from(i32::from_le_bytes(b)).ok()
        }
        _ => {
            skip(r, kind, wide, 0)?;
            None
        }
    })
}

/// Moves past one value of GGUF type `kind`.
fn skip<R: Read + Seek>(r: &mut R, kind: u32, wide: bool, depth: u32) -> Option<()> {
    if let Some(size) = fixed_size(kind) {
        return forward(r, size);
    }
    match kind {
        8 => {
            let len = length(r, wide)?;
            forward(r, len)
        }
        9 if depth < MAX_DEPTH => {
            let element = u32_le(r)?;
            let count = length(r, wide)?;
            match fixed_size(element) {
                Some(size) => forward(r, count.checked_mul(size)?),
                // Strings or arrays: one by one, each read of a length
                // failing at the end of the file.
                None => (0..count).try_for_each(|_| skip(r, element, wide, depth + 1)),
            }
        }
        _ => None,
    }
}

/// Bytes of a value of fixed-size GGUF type `kind`.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Skips `n` bytes, failing when fewer are left in the file.
fn forward<R: Read + Seek>(r: &mut R, n: u64) -> Option<()> {
    let at = r.stream_position().ok()?;
    let end = r.seek(SeekFrom::End(0)).ok()?;
    let to = at.checked_add(n).filter(|to| *to <= end)?;
    r.seek(SeekFrom::Start(to)).ok()?;
    Some(())
}

/// A count or length: 32 bits in GGUF v1, 64 after.
fn length<R: Read>(r: &mut R, wide: bool) -> Option<u64> {
    if wide {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    } else {
        u32_le(r).map(u64::from)
    }
}

fn u32_le<R: Read>(r: &mut R) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A v3 header with `entries` (key, type, value bytes).
    fn header(entries: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend((entries.len() as u64).to_le_bytes());
        for (key, kind, value) in entries {
            out.extend((key.len() as u64).to_le_bytes());
            out.extend(key.as_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(value);
        }
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn finds_the_last_alignment_past_strings_and_arrays() {
        let mut strings = 8u32.to_le_bytes().to_vec();
        strings.extend(2u64.to_le_bytes());
        strings.extend(string("a"));
        strings.extend(string("bc"));
        let bytes = header(&[
            ("general.architecture", 8, string("llama")),
            ("general.alignment", 4, 64u32.to_le_bytes().to_vec()),
            ("tokenizer.ggml.tokens", 9, strings),
            ("x.float", 6, 1.5f32.to_le_bytes().to_vec()),
            ("general.alignment", 0, vec![0]),
        ]);
        let mut r = Cursor::new(bytes);
        r.set_position(0);
        assert_eq!(declared(&mut r), Some(0));
        assert_eq!(r.position(), 0, "the reader is put back");
    }

    #[test]
    fn other_types_and_broken_headers_declare_nothing() {
        let float = header(&[("general.alignment", 6, 32f32.to_le_bytes().to_vec())]);
        assert_eq!(declared(&mut Cursor::new(float)), None);
        let negative = header(&[("general.alignment", 5, (-1i32).to_le_bytes().to_vec())]);
        assert_eq!(declared(&mut Cursor::new(negative)), None);
        let mut huge = header(&[("general.alignment", 4, 0u32.to_le_bytes().to_vec())]);
        // A string claiming more bytes than the file has: the scan stops.
        huge.splice(24..32, u64::MAX.to_le_bytes());
        assert_eq!(declared(&mut Cursor::new(huge)), None);
        assert_eq!(declared(&mut Cursor::new(b"NOPE".to_vec())), None);
    }
}
