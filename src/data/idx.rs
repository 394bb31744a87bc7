//! The IDX format of MNIST and Fashion-MNIST (LeCun's "SN3 Pascal Vincent" files), plain or
//! gzipped: a 4-byte magic `0 0 <type> <ndim>`, `ndim` big-endian u32 sizes, then the values in C
//! order. Images are uint8 (N, rows, columns): already the (N, 1, H, W) order a data set holds, so
//! the pixels are read straight into its buffer. Labels are uint8 (N,).
//!
//! As torchvision's reader, only uint8 files are taken and the byte count must be exactly what the
//! header declares (torchvision's `view` fails otherwise); a gzip stream is recognised by its magic
//! bytes, whatever the file's name.
use std::io::{BufReader, Read};
use std::path::Path;

use super::guard;
use super::ImageBuf;
use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The element types IDX defines, by their type byte, for naming the ones that are refused.
fn type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x08 => "uint8",
        0x09 => "int8",
        0x0b => "int16",
        0x0c => "int32",
        0x0d => "float32",
        0x0e => "float64",
        _ => return None,
    })
}

/// Images read from an IDX file: `n` images of `h` x `w`, as (N, H, W) bytes.
pub struct Images {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub pixels: ImageBuf,
}

/// An open IDX file: its bytes (decompressed when gzipped) and, for a plain file, its length.
pub struct Source {
    reader: Box<dyn Read + Send>,
    /// The plain file's length, checked against the header before anything is allocated.
    len: Option<u64>,
}

impl Source {
    /// Opens a regular file, gzipped or not.
    pub fn open(path: &Path) -> Result<Source> {
        let file = crate::error::open_regular(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let head = std::io::BufRead::fill_buf(&mut reader).map_err(|e| Error::io(path, e))?;
        Ok(if head.starts_with(&GZIP_MAGIC) {
            Source::gzip(reader)
        } else {
            Source {
                reader: Box::new(reader),
                len: Some(len),
            }
        })
    }

    /// In-memory bytes, gzipped or not (the fuzz tests' entry point).
    pub fn bytes(bytes: Vec<u8>) -> Source {
        if bytes.starts_with(&GZIP_MAGIC) {
            Source::gzip(std::io::Cursor::new(bytes))
        } else {
            let len = bytes.len() as u64;
            Source {
                reader: Box::new(std::io::Cursor::new(bytes)),
                len: Some(len),
            }
        }
    }

    /// Several gzip members read as one stream, as Python's gzip module reads them.
    fn gzip(r: impl std::io::BufRead + Send + 'static) -> Source {
        Source {
            reader: Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            len: None,
        }
    }
}

/// Reads the magic and sizes; `ndim` is what the caller needs (3 for images, 1 for labels).
fn header(src: &mut Source, path: &Path, ndim: usize, what: &str) -> Result<Vec<usize>> {
    let mut magic = [0u8; 4];
    guard::read_exact(&mut src.reader, &mut magic, path, "the IDX header")?;
    let [z0, z1, ty, nd] = magic;
    if z0 != 0 || z1 != 0 {
        return Err(Error::format(
            path,
            format!("not an IDX file: its magic number is {magic:02x?}, expected 00 00 <type> <dimensions>"),
        ));
    }
    match type_name(ty) {
        Some("uint8") => {}
        Some(t) => {
            return Err(Error::format(
                path,
                format!("IDX file of {t} values: MNIST {what} are uint8 (type 0x08)"),
            ))
        }
        None => return Err(Error::format(path, format!("unknown IDX element type 0x{ty:02x}"))),
    }
    if nd as usize != ndim {
        return Err(Error::format(
            path,
            format!("IDX file of {nd} dimensions: MNIST {what} have {ndim}"),
        ));
    }
    let mut raw = vec![0u8; 4 * ndim];
    guard::read_exact(&mut src.reader, &mut raw, path, "the IDX header")?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect())
}

/// Checks that the values are exactly `count` bytes: against a plain file's length before reading,
/// and after reading for a stream (nothing may follow).
fn check_plain_len(src: &Source, path: &Path, ndim: usize, count: usize, dims: &[usize]) -> Result<()> {
    if let Some(len) = src.len {
        let want = (4 + 4 * ndim as u64).saturating_add(count as u64);
        if len != want {
            return Err(Error::format(
                path,
                format!(
                    "{len} bytes, but its header declares {dims:?} values, which take {want} bytes ({})",
                    if len < want { "truncated?" } else { "trailing bytes?" }
                ),
            ));
        }
    }
    Ok(())
}

fn check_end(src: &mut Source, path: &Path, count: usize, dims: &[usize]) -> Result<()> {
    let mut extra = [0u8; 1];
    match src.reader.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::format(
            path,
            format!("more data than the {count} values its header declares ({dims:?})"),
        )),
        Err(e) => Err(Error::format(path, format!("cannot read past the values: {e}"))),
    }
}

/// Reads an image file: uint8 (N, rows, columns).
pub fn read_images(mut src: Source, path: &Path) -> Result<Images> {
    let dims = header(&mut src, path, 3, "images")?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    let count = guard::image_bytes(path, n, h.saturating_mul(w), &format!("{n} x {h} x {w}"))?;
    check_plain_len(&src, path, 3, count, &dims)?;
    let mut pixels = guard::image_buf(count, path)?;
    guard::read_exact(&mut src.reader, &mut pixels, path, "the pixels")?;
    check_end(&mut src, path, count, &dims)?;
    Ok(Images { n, h, w, pixels })
}

/// Reads a label file: uint8 (N,).
pub fn read_labels(mut src: Source, path: &Path) -> Result<Vec<u8>> {
    let dims = header(&mut src, path, 1, "labels")?;
    let n = guard::label_count(path, dims[0])?;
    check_plain_len(&src, path, 1, n, &dims)?;
    let labels = guard::read_vec(&mut src.reader, n, path, "the labels")?;
    check_end(&mut src, path, n, &dims)?;
    Ok(labels)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// An IDX file of uint8 values with the given sizes.
    pub fn idx(dims: &[u32], values: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(values);
        b
    }

    pub fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn without_trailer(mut g: Vec<u8>) -> Vec<u8> {
        g.truncate(g.len() - 8); // the CRC and length
        g
    }

    fn images(bytes: Vec<u8>) -> Result<Images> {
        read_images(Source::bytes(bytes), Path::new("f"))
    }

    #[test]
    fn plain_and_gzipped_images_and_labels() {
        let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        for bytes in [idx(&[2, 3, 4], &px), gz(&idx(&[2, 3, 4], &px))] {
            let im = images(bytes).unwrap();
            assert_eq!((im.n, im.h, im.w), (2, 3, 4));
            assert_eq!(&im.pixels[..], &px[..]);
        }
        // Two gzip members are one stream, as Python's gzip reads them.
        let file = idx(&[3], &[7, 8, 9]);
        let mut two = gz(&file[..5]);
        two.extend(gz(&file[5..]));
        assert_eq!(read_labels(Source::bytes(two), Path::new("l")).unwrap(), vec![7, 8, 9]);
    }

    #[test]
    fn malformed_files_are_named() {
        let px = vec![0u8; 24];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "the IDX header: truncated after 3 of 4 bytes"),
            (vec![0x50, 0x4b, 3, 4, 0, 0, 0, 0], "not an IDX file"),
            ([&[0u8, 0, 0x0b, 3][..], &[0; 12]].concat(), "int16 values"),
            (
                [&[0u8, 0, 0x42, 3][..], &[0; 12]].concat(),
                "unknown IDX element type 0x42",
            ),
            (idx(&[24], &px), "1 dimensions"),
            (idx(&[2, 3, 4], &px[..23]), "truncated?"),
            ([idx(&[2, 3, 4], &px), vec![0]].concat(), "trailing bytes?"),
            (gz(&idx(&[2, 3, 4], &px[..23])), "truncated after 23 of 24 bytes"),
            (
                gz(&[idx(&[2, 3, 4], &px), vec![0]].concat()),
                "more data than the 24 values",
            ),
            (idx(&[u32::MAX, u32::MAX, u32::MAX], &[]), "more than the 4 GiB"),
            (gz(&idx(&[100_000, 200, 300], &[])), "more than the 4 GiB"),
            (
                gz(&idx(&[1_000_000, 28, 28], &[])),
                "the pixels: truncated after 0 of 784000000 bytes",
            ),
            (gz(&idx(&[2, 3, 4], &px))[..20].to_vec(), "cannot read the IDX header"),
            (
                without_trailer(gz(&idx(&[2, 3, 4], &px))),
                "cannot read past the values",
            ),
        ];
        for (bytes, want) in cases {
            let e = images(bytes).err().expect("refused").to_string();
            assert!(e.starts_with("f: ") && e.contains(want), "{want}: {e}");
        }
        let e = read_labels(Source::bytes(idx(&[u32::MAX], &[])), Path::new("l")).unwrap_err();
        assert!(e.to_string().contains("labels, more than"), "{e}");
    }
}
