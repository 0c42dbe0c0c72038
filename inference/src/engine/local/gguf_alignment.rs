//! The GGUF header read ahead of candle, for what candle cannot take:
//! `general.alignment` (candle's `Content::read` divides by it unchecked
//! once it has read the whole header, so a file declaring 0 panics there;
//! caught by the loader's `catch_unwind`, but a panic on bad input is
//! still a bug: the `gguf` fuzz target aborts on it), and tensors of GGML
//! type MXFP4 (gpt-oss's experts), which candle 0.11 refuses by type
//! number: [`read_ahead`] finds them (with the alignment, in one walk),
//! and [`Overlay`] shows candle F32 in their type fields so it reads the
//! rest of the header; the loader
//! reads those tensors itself. This walks the header the way candle reads
//! it, skipping every value but those, keeps nothing else, and never reads
//! past the file: lengths move the reader with `seek`, so a huge declared
//! length ends at the file's end instead of in an allocation.

use std::io::{Read, Seek, SeekFrom};

/// `GGUF`, little-endian.
const MAGIC: u32 = 0x4655_4747;
const KEY: &[u8] = b"general.alignment";
/// Arrays nest at most this deep here (candle allows less).
const MAX_DEPTH: u32 = 8;
/// Longest tensor name read (GGML's own limit is 64 bytes).
const MAX_NAME: u64 = 1 << 12;
/// Most dimensions of a tensor (GGML's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// What the header walk found, in one pass over it (a real vocabulary's
/// 150k strings are walked once per load, not once per question).
#[derive(Debug, Default, PartialEq)]
pub struct Ahead {
    /// The alignment candle will use if the header declares one as an
    /// integer (the last declaration wins, as in candle's map).
    pub alignment: Option<u64>,
    /// The MXFP4 tensors, each with the file position of its type field.
    pub mxfp4: Vec<(String, u64)>,
}

/// GGML's type number of MXFP4: blocks of 32 values, a shared power-of-two
/// scale byte (E8M0) and 16 bytes of 4-bit E2M1 values.
pub const MXFP4: u32 = 39;

/// The header read ahead of candle; nothing found where the header does
/// not read as GGUF (candle then says why), no tensors where the tensor
/// list does not. The reader is put back where it was.
pub fn read_ahead<R: Read + Seek>(reader: &mut R) -> Ahead {
    walk(reader, |mut w| {
        let (tensors, alignment) = w.metadata()?;
        let mxfp4 = w.tensor_types(tensors, MXFP4).unwrap_or_default();
        Some(Ahead { alignment, mxfp4 })
    })
    .unwrap_or_default()
}

/// Runs `scan` on a walker from the reader's position and puts the reader
/// back.
fn walk<R: Read + Seek, T>(
    reader: &mut R,
    scan: impl FnOnce(Walker<'_, R>) -> Option<T>,
) -> Option<T> {
    let start = reader.stream_position().ok()?;
    let end = reader.seek(SeekFrom::End(0)).ok()?;
    reader.seek(SeekFrom::Start(start)).ok()?;
    let found = scan(Walker {
        r: &mut *reader,
        pos: start,
        end,
        wide: true,
    });
    reader.seek(SeekFrom::Start(start)).ok()?;
    found
}

/// A reader that shows type 0 (F32) in place of the type fields at the
/// given positions, and the file's bytes everywhere else: candle reads
/// the header of a file with MXFP4 tensors through it.
pub struct Overlay<'a, R> {
    inner: &'a mut R,
    /// Positions of 4-byte type fields to show as F32.
    patched: &'a [u64],
    pos: u64,
}

impl<'a, R: Read + Seek> Overlay<'a, R> {
    pub fn new(inner: &'a mut R, patched: &'a [u64]) -> std::io::Result<Self> {
        let pos = inner.stream_position()?;
        Ok(Self {
            inner,
            patched,
            pos,
        })
    }
}

impl<R: Read> Read for Overlay<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (from, to) = (self.pos, self.pos + n as u64);
        for &at in self.patched {
            for (i, byte) in 0u32.to_le_bytes().iter().enumerate() {
                let p = at + i as u64;
                if (from..to).contains(&p) {
                    buf[(p - from) as usize] = *byte;
                }
            }
        }
        self.pos = to;
        Ok(n)
    }
}

impl<R: Seek> Seek for Overlay<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

/// A reader walked forward through the header. It knows its position and
/// the file's end itself, and skips with `seek_relative`, which a
/// `BufReader` serves from its buffer: asking the reader (one `lseek` per
/// call, and a dropped buffer per absolute seek) for each of a real
/// vocabulary's 150k strings made this walk 3x slower than candle's whole
/// header read.
struct Walker<'a, R> {
    r: &'a mut R,
    pos: u64,
    end: u64,
    /// Counts and lengths are 64-bit (GGUF v2, v3) rather than 32 (v1).
    wide: bool,
}

impl<R: Read + Seek> Walker<'_, R> {
    /// The header up to the tensor list: the tensor count and the
    /// declared alignment.
    fn metadata(&mut self) -> Option<(u64, Option<u64>)> {
        if self.u32()? != MAGIC {
            return None;
        }
        self.wide = match self.u32()? {
            1 => false,
            2 | 3 => true,
            _ => return None,
        };
        let tensors = self.length()?;
        let entries = self.length()?;
        let mut alignment = None;
        for _ in 0..entries {
            let key_len = self.length()?;
            let is_alignment = if key_len == KEY.len() as u64 {
                self.bytes::<{ KEY.len() }>()? == KEY
            } else {
                self.forward(key_len)?;
                false
            };
            let kind = self.u32()?;
            if is_alignment {
                alignment = self.integer(kind)?;
            } else {
                self.skip(kind, 0)?;
            }
        }
        Some((tensors, alignment))
    }

    /// The next `tensors` entries of the tensor list: those whose type is
    /// `wanted`, with the position of their type field.
    fn tensor_types(&mut self, tensors: u64, wanted: u32) -> Option<Vec<(String, u64)>> {
        let mut found = Vec::new();
        for _ in 0..tensors {
            let name_len = self.length()?;
            if name_len > MAX_NAME {
                return None;
            }
            let mut name = vec![0u8; name_len as usize];
            self.r.read_exact(&mut name).ok()?;
            self.pos += name_len;
            let dims = self.u32()?;
            if dims > MAX_DIMS {
                return None;
            }
            for _ in 0..dims {
                self.length()?;
            }
            let at = self.pos;
            let kind = self.u32()?;
            self.forward(8)?;
            if kind == wanted {
                found.push((String::from_utf8_lossy(&name).into_owned(), at));
            }
        }
        Some(found)
    }

    /// Reads a value of GGUF type `kind` as candle takes an alignment: the
    /// unsigned and non-negative signed integers of up to 32 bits; other
    /// values are skipped and give `Some(None)` (candle's default then).
    fn integer(&mut self, kind: u32) -> Option<Option<u64>> {
        Some(match kind {
            0 => Some(u64::from(self.bytes::<1>()?[0])),
            1 => u64::try_from(i8::from_le_bytes(self.bytes()?)).ok(),
            2 => Some(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => u64::try_from(i16::from_le_bytes(self.bytes()?)).ok(),
            4 => Some(u64::from(self.u32()?)),
            5 => u64::try_from(i32::from_le_bytes(self.bytes()?)).ok(),
            _ => {
                self.skip(kind, 0)?;
                None
            }
        })
    }

    /// Moves past one value of GGUF type `kind`.
    fn skip(&mut self, kind: u32, depth: u32) -> Option<()> {
        if let Some(size) = fixed_size(kind) {
            return self.forward(size);
        }
        match kind {
            8 => {
                let len = self.length()?;
                self.forward(len)
            }
            9 if depth < MAX_DEPTH => {
                let element = self.u32()?;
                let count = self.length()?;
                match fixed_size(element) {
                    Some(size) => self.forward(count.checked_mul(size)?),
                    // Strings or arrays: one by one, each read of a length
                    // failing at the end of the file.
                    None => (0..count).try_for_each(|_| self.skip(element, depth + 1)),
                }
            }
            _ => None,
        }
    }

    /// Skips `n` bytes, failing when fewer are left in the file.
    fn forward(&mut self, n: u64) -> Option<()> {
        let to = self.pos.checked_add(n).filter(|to| *to <= self.end)?;
        self.r.seek_relative(i64::try_from(n).ok()?).ok()?;
        self.pos = to;
        Some(())
    }

    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).ok()?;
        self.pos += N as u64;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes().map(u32::from_le_bytes)
    }

    /// A count or length: 32 bits in GGUF v1, 64 after.
    fn length(&mut self) -> Option<u64> {
        if self.wide {
            self.bytes().map(u64::from_le_bytes)
        } else {
            self.u32().map(u64::from)
        }
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
        assert_eq!(read_ahead(&mut r).alignment, Some(0));
        assert_eq!(r.position(), 0, "the reader is put back");
    }

    #[test]
    fn other_types_and_broken_headers_declare_nothing() {
        let float = header(&[("general.alignment", 6, 32f32.to_le_bytes().to_vec())]);
        assert_eq!(read_ahead(&mut Cursor::new(float)).alignment, None);
        let negative = header(&[("general.alignment", 5, (-1i32).to_le_bytes().to_vec())]);
        assert_eq!(read_ahead(&mut Cursor::new(negative)).alignment, None);
        let mut huge = header(&[("general.alignment", 4, 0u32.to_le_bytes().to_vec())]);
        // A string claiming more bytes than the file has: the scan stops.
        huge.splice(24..32, u64::MAX.to_le_bytes());
        assert_eq!(read_ahead(&mut Cursor::new(huge)).alignment, None);
        assert_eq!(
            read_ahead(&mut Cursor::new(b"NOPE".to_vec())),
            Ahead::default()
        );
    }

    /// `header` followed by tensor infos `(name, dims, type)`.
    fn with_tensors(mut bytes: Vec<u8>, tensors: &[(&str, &[u64], u32)]) -> Vec<u8> {
        bytes[8..16].copy_from_slice(&(tensors.len() as u64).to_le_bytes());
        for (name, dims, kind) in tensors {
            bytes.extend(string(name));
            bytes.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                bytes.extend(d.to_le_bytes());
            }
            bytes.extend(kind.to_le_bytes());
            bytes.extend(0u64.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn finds_mxfp4_tensors_and_shows_candle_f32_in_their_type_fields() {
        let bytes = with_tensors(
            header(&[("general.architecture", 8, string("gpt-oss"))]),
            &[
                ("a", &[32, 2], 8),
                ("blk.0.ffn_up_exps.weight", &[32, 4, 2], MXFP4),
                ("c", &[4], 0),
            ],
        );
        let mut r = Cursor::new(bytes.clone());
        let found = read_ahead(&mut r).mxfp4;
        assert_eq!(r.position(), 0, "the reader is put back");
        assert_eq!(found.len(), 1);
        let (name, at) = &found[0];
        assert_eq!(name, "blk.0.ffn_up_exps.weight");
        let at = *at as usize;
        assert_eq!(bytes[at..at + 4], MXFP4.to_le_bytes());

        // Read through the overlay in small pieces: only those four bytes
        // differ, and they read as type 0.
        let patched = [at as u64];
        let mut overlay = Overlay::new(&mut r, &patched).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = overlay.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let mut expected = bytes.clone();
        expected[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(seen, expected);

        // A name longer than any tensor's, or a broken header: nothing.
        let long = "x".repeat(MAX_NAME as usize + 1);
        let bytes = with_tensors(header(&[]), &[(&long, &[32], MXFP4)]);
        assert!(read_ahead(&mut Cursor::new(bytes)).mxfp4.is_empty());
        assert!(read_ahead(&mut Cursor::new(b"GGUF".to_vec()))
            .mxfp4
            .is_empty());
    }
}
