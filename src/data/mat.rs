//! The part of MATLAB's level-5 MAT-file format that SVHN's `.mat` files use (what torchvision reads
//! with `scipy.io.loadmat`): numeric arrays, each stored plain (`miMATRIX`) or zlib-compressed
//! (`miCOMPRESSED`, MATLAB's default since v7), in either byte order.
//!
//! Layout: a 128-byte header (text, subsystem offset, version 0x0100, the endian mark "IM" or "MI"),
//! then top-level elements, each an 8-byte tag (type, byte count) and its bytes, with no padding
//! between them. A matrix holds sub-elements, each padded to 8 bytes: array flags (class,
//! complex / logical bits), dimensions, name, then the real part. A tag whose upper 16 bits are set
//! is a "small" element: type and count in 4 bytes, its data in the next 4.
//!
//! Variables are found by name and read as a stream, so a compressed array is inflated once,
//! straight into its destination, and variables not asked for are skipped without inflating them.
//! Anything else (v4 and v7.3 files, cells, structs, sparse, complex or character arrays under a
//! wanted name) is refused by name.
use std::io::Read;
use std::path::Path;

use super::guard;
use crate::error::{Error, Result};

const HEADER: usize = 128;

const MI_INT8: u32 = 1;
const MI_UINT32: u32 = 6;
const MI_INT32: u32 = 5;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// mxOPAQUE: its name follows the flags directly, with no dimensions.
const MX_OPAQUE: u8 = 17;

/// MATLAB's array classes (the flags' low byte), for messages.
fn class_name(c: u8) -> &'static str {
    match c {
        1 => "a cell array",
        2 => "a struct",
        3 => "an object",
        4 => "a character array",
        5 => "a sparse array",
        6 => "double",
        7 => "single",
        8 => "int8",
        9 => "uint8",
        10 => "int16",
        11 => "uint16",
        12 => "int32",
        13 => "uint32",
        14 => "int64",
        15 => "uint64",
        16 => "a function handle",
        17 => "an opaque object",
        _ => "an unknown class",
    }
}

/// Whether a class is a plain numeric array (double to uint64).
fn is_numeric(class: u8) -> bool {
    (6..=15).contains(&class)
}

/// The numeric storage types of a real part, with their size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Num {
    fn from_type(t: u32) -> Option<Num> {
        Some(match t {
            1 => Num::I8,
            2 => Num::U8,
            3 => Num::I16,
            4 => Num::U16,
            5 => Num::I32,
            6 => Num::U32,
            7 => Num::F32,
            9 => Num::F64,
            12 => Num::I64,
            13 => Num::U64,
            _ => return None,
        })
    }

    /// MATLAB's name of the type, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Num::I8 => "int8",
            Num::U8 => "uint8",
            Num::I16 => "int16",
            Num::U16 => "uint16",
            Num::I32 => "int32",
            Num::U32 => "uint32",
            Num::F32 => "single",
            Num::F64 => "double",
            Num::I64 => "int64",
            Num::U64 => "uint64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Num::I8 | Num::U8 => 1,
            Num::I16 | Num::U16 => 2,
            Num::I32 | Num::U32 | Num::F32 => 4,
            Num::F64 | Num::I64 | Num::U64 => 8,
        }
    }
}

/// A wanted variable as its header describes it; its real part follows in the stream.
#[derive(Debug, Clone)]
pub struct Var {
    pub name: String,
    pub class: u8,
    pub dims: Vec<usize>,
    /// The storage type of the real part and its byte count.
    pub num: Num,
    pub bytes: usize,
    pub big_endian: bool,
}

impl Var {
    pub fn class_name(&self) -> &'static str {
        class_name(self.class)
    }

    /// Decodes `raw` (the real part's bytes, `num` typed in the file's byte order) as f64.
    pub fn value(&self, raw: &[u8]) -> f64 {
        let mut b = [0u8; 8];
        let k = raw.len().min(8);
        b[..k].copy_from_slice(&raw[..k]);
        if self.big_endian {
            b[..k].reverse();
        }
        match self.num {
            Num::I8 => b[0] as i8 as f64,
            Num::U8 => b[0] as f64,
            Num::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            Num::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            Num::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Num::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Num::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Num::F64 => f64::from_le_bytes(b),
            Num::I64 => i64::from_le_bytes(b) as f64,
            Num::U64 => u64::from_le_bytes(b) as f64,
        }
    }
}

/// Reads tags and sub-elements from a stream, in the file's byte order.
struct Elements<'p, R> {
    r: R,
    big: bool,
    path: &'p Path,
    /// For messages: which variable, at which file offset.
    at: String,
}

impl<R: Read> Elements<'_, R> {
    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn bad(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("{}: {msg}", self.at))
    }

    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        guard::read_exact(&mut self.r, buf, self.path, &format!("{} ({what})", self.at))
    }

    /// One tag: (type, byte count, the data of a small element).
    fn tag(&mut self, what: &str) -> Result<(u32, usize, Option<[u8; 4]>)> {
        let mut t = [0u8; 8];
        self.read(&mut t, what)?;
        let first = self.u32([t[0], t[1], t[2], t[3]]);
        let data = [t[4], t[5], t[6], t[7]];
        if first >> 16 != 0 {
            let n = (first >> 16) as usize;
            if n > 4 {
                return Err(self.bad(format!("{what}: a small element of {n} bytes (at most 4 fit)")));
            }
            return Ok((first & 0xffff, n, Some(data)));
        }
        Ok((first, self.u32(data) as usize, None))
    }

    /// A whole sub-element of at most `max` bytes (padding skipped): its type and bytes.
    fn sub(&mut self, what: &str, max: usize) -> Result<(u32, Vec<u8>)> {
        let (ty, n, small) = self.tag(what)?;
        if let Some(d) = small {
            return Ok((ty, d[..n].to_vec()));
        }
        if n > max {
            return Err(self.bad(format!("{what} of {n} bytes (at most {max} expected: a corrupt file?)")));
        }
        let mut v = vec![0u8; n + (8 - n % 8) % 8];
        self.read(&mut v, what)?;
        v.truncate(n);
        Ok((ty, v))
    }
}

/// What a callback sees for one wanted variable: its header and a stream of exactly its real
/// part's bytes (`var.bytes` of them).
pub type Visit<'a> = dyn FnMut(&Var, &mut dyn Read) -> Result<()> + 'a;

/// Finds the variables named in `wanted` (each at most once: later copies are ignored) and calls
/// `visit` for each, in file order. Returns the names of every variable seen, for messages.
pub fn scan(bytes: &[u8], path: &Path, wanted: &[&str], visit: &mut Visit<'_>) -> Result<Vec<String>> {
    if bytes.len() < HEADER {
        return Err(Error::format(
            path,
            format!(
                "{} bytes: too short for a MAT-file (its header alone is 128)",
                bytes.len()
            ),
        ));
    }
    let big = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ => {
            let what = if bytes.starts_with(b"\x89HDF") || bytes[..116].starts_with(b"MATLAB 7.3") {
                "a MAT v7.3 (HDF5) file, which scipy.io.loadmat cannot read either: save it with `save(..., '-v7')`"
            } else {
                "not a MATLAB 5 MAT-file (no 'IM' / 'MI' endian mark at byte 126; a v4 file?)"
            };
            return Err(Error::format(path, what));
        }
    };
    let version = if big {
        u16::from_be_bytes([bytes[124], bytes[125]])
    } else {
        u16::from_le_bytes([bytes[124], bytes[125]])
    };
    if version == 0x0200 {
        return Err(Error::format(
            path,
            "a MAT v7.3 (HDF5) file, which scipy.io.loadmat cannot read either: save it with `save(..., '-v7')`",
        ));
    }
    if version != 0x0100 {
        return Err(Error::format(
            path,
            format!("MAT-file version 0x{version:04x} (only level 5, 0x0100, is read)"),
        ));
    }
    let mut seen = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    let mut pos = HEADER;
    while pos < bytes.len() && done.len() < wanted.len() {
        let mut top = Elements {
            r: &bytes[pos..],
            big,
            path,
            at: format!("element at byte {pos}"),
        };
        let (ty, n, small) = top.tag("tag")?;
        let body = pos + 8;
        let end = if small.is_some() { body } else { body.saturating_add(n) };
        if end > bytes.len() {
            return Err(top.bad(format!(
                "declares {n} bytes, but only {} remain (a truncated file?)",
                bytes.len() - body
            )));
        }
        let content = &bytes[body..end];
        let found = match ty {
            MI_MATRIX => {
                top.r = content;
                visit_matrix(top, wanted, &done, visit)?
            }
            MI_COMPRESSED => {
                let mut inner = Elements {
                    r: flate2::read::ZlibDecoder::new(content),
                    big,
                    path,
                    at: format!("compressed element at byte {pos}"),
                };
                match inner.tag("tag")? {
                    (MI_MATRIX, n, None) => {
                        let limited = Elements {
                            r: inner.r.take(n as u64),
                            big,
                            path,
                            at: inner.at,
                        };
                        visit_matrix(limited, wanted, &done, visit)?
                    }
                    _ => None, // not an array: scipy names nothing here either
                }
            }
            _ => None,
        };
        if let Some((name, visited)) = found {
            if visited {
                if let Some(&w) = wanted.iter().find(|&&w| w == name) {
                    done.push(w);
                }
            }
            if seen.len() < 64 {
                seen.push(name);
            }
        }
        pos = end;
    }
    Ok(seen)
}

/// Reads a matrix header and, for a wanted name not yet seen, hands its real part to `visit`.
/// Returns the name and whether `visit` ran.
fn visit_matrix<R: Read>(
    mut e: Elements<'_, R>,
    wanted: &[&str],
    done: &[&str],
    visit: &mut Visit<'_>,
) -> Result<Option<(String, bool)>> {
    let head = e.matrix_head()?;
    let name = match &head {
        Head::Numeric { var, .. } => var.name.clone(),
        Head::Other { name, .. } => name.clone(),
    };
    if !wanted.contains(&name.as_str()) || done.contains(&name.as_str()) {
        return Ok(Some((name, false)));
    }
    match head {
        Head::Other { class, .. } => Err(e.bad(format!("is {}: only numeric arrays are read here", class_name(class)))),
        // A small real part's bytes came with its tag.
        Head::Numeric { var, small: Some(d) } => {
            visit(&var, &mut &d[..var.bytes])?;
            Ok(Some((name, true)))
        }
        Head::Numeric { var, small: None } => {
            visit(&var, &mut (&mut e.r).take(var.bytes as u64))?;
            Ok(Some((name, true)))
        }
    }
}

enum Head {
    Numeric { var: Var, small: Option<[u8; 4]> },
    Other { name: String, class: u8 },
}

impl<R: Read> Elements<'_, R> {
    /// `matrix`, with a small real part's bytes returned beside the header.
    fn matrix_head(&mut self) -> Result<Head> {
        let (ty, flags) = self.sub("array flags", 8)?;
        if ty != MI_UINT32 || flags.len() != 8 {
            return Err(self.bad(format!(
                "array flags of type {ty} and {} bytes (expected 8 uint32 bytes)",
                flags.len()
            )));
        }
        let f = self.u32([flags[0], flags[1], flags[2], flags[3]]);
        let class = (f & 0xff) as u8;
        let mut dims = Vec::new();
        if class != MX_OPAQUE {
            // MATLAB arrays have at most a few dozen dimensions; 64 bounds a corrupt count.
            let (ty, raw) = self.sub("dimensions", 64 * 4)?;
            if ty != MI_INT32 || raw.len() % 4 != 0 || raw.len() < 8 {
                return Err(self.bad(format!(
                    "dimensions of type {ty} and {} bytes (expected at least 2 int32 values)",
                    raw.len()
                )));
            }
            for b in raw.chunks_exact(4) {
                let d = self.u32([b[0], b[1], b[2], b[3]]) as i32;
                if d < 0 {
                    return Err(self.bad(format!("negative dimension {d}")));
                }
                dims.push(d as usize);
            }
        }
        // MATLAB names are at most 63 characters; 4096 bounds a corrupt count.
        let (ty, name) = self.sub("array name", 4096)?;
        if ty != MI_INT8 && ty != MI_UTF8 {
            return Err(self.bad(format!("array name of type {ty} (expected int8 text)")));
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        self.at = format!("variable '{name}'");
        if !is_numeric(class) {
            return Ok(Head::Other { name, class });
        }
        if f & 0x0800 != 0 {
            return Err(self.bad(format!(
                "is a complex {} array: only real arrays are read",
                class_name(class)
            )));
        }
        if f & 0x0200 != 0 {
            return Err(self.bad("is a logical array: only numeric arrays are read"));
        }
        let (ty, bytes, small) = self.tag("real part")?;
        let num = Num::from_type(ty).ok_or_else(|| self.bad(format!("real part of unknown numeric type {ty}")))?;
        Ok(Head::Numeric {
            var: Var {
                name,
                class,
                dims,
                num,
                bytes,
                big_endian: self.big,
            },
            small,
        })
    }
}
