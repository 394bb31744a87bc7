//! What the IDX and MAT readers (MNIST, Fashion-MNIST, SVHN) do before they trust a file: open only
//! regular files (the core's one check), bound every size a header declares, and allocate fallibly.
//!
//! A FIFO named `train-images-idx3-ubyte` would block `open` until a writer came, and a header can
//! claim any size: a named error beats a hang, an abort or an out-of-memory kill.
use std::path::Path;

use super::ImageBuf;
use crate::error::{Error, Result};

/// The most pixel bytes one file may declare: 4 GiB, 2.5 times the largest real file these readers
/// take (SVHN's `extra_32x32.mat`, 531,131 images of 3,072 bytes).
pub const MAX_IMAGE_BYTES: usize = 4 << 30;

/// The most labels one file may declare (EMNIST, the largest IDX set, has 814,255).
pub const MAX_LABELS: usize = 1 << 25;

/// A zeroed image buffer of `len` bytes (`ImageBuf::zeroed`: fallible, checked against memory).
pub fn image_buf(len: usize, path: &Path) -> Result<ImageBuf> {
    ImageBuf::zeroed(len, &format!("the images of {}", path.display()))
}

/// An empty vector with room for `n` items, or `OutOfMemory` naming them.
pub fn vec_with_capacity<T>(n: usize, path: &Path, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what: format!("{n} {what} of {}", path.display()),
        bytes: n.saturating_mul(size_of::<T>()),
        reason: String::new(),
    })?;
    Ok(v)
}

/// `n` images of `per_image` bytes each, checked against `MAX_IMAGE_BYTES`; `shape` names them.
pub fn image_bytes(path: &Path, n: usize, per_image: usize, shape: &str) -> Result<usize> {
    n.checked_mul(per_image)
        .filter(|&b| b <= MAX_IMAGE_BYTES)
        .ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "declares {shape} images, more than the {} GiB of pixels one file may hold (a corrupt header?)",
                    MAX_IMAGE_BYTES >> 30
                ),
            )
        })
}

/// `n` labels, checked against `MAX_LABELS`.
pub fn label_count(path: &Path, n: usize) -> Result<usize> {
    if n > MAX_LABELS {
        return Err(Error::format(
            path,
            format!("declares {n} labels, more than the {MAX_LABELS} one file may hold (a corrupt header?)"),
        ));
    }
    Ok(n)
}

/// Reads exactly `buf.len()` bytes, naming a short read as truncation (with how much was there).
pub fn read_exact(r: &mut (impl std::io::Read + ?Sized), buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(Error::format(
                    path,
                    format!("{what}: truncated after {done} of {} bytes", buf.len()),
                ))
            }
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::format(path, format!("cannot read {what}: {e}"))),
        }
    }
    Ok(())
}

/// Reads exactly `n` bytes into a vector that grows as they arrive, so that a header declaring more
/// than the stream holds costs only what is there.
pub fn read_vec(r: &mut (impl std::io::Read + ?Sized), n: usize, path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut v = vec_with_capacity(n.min(1 << 20), path, "bytes")?;
    let read = r.take(n as u64).read_to_end(&mut v);
    read.map_err(|e| Error::format(path, format!("cannot read {what}: {e}")))?;
    if v.len() < n {
        return Err(Error::format(
            path,
            format!("{what}: truncated after {} of {n} bytes", v.len()),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn fifos_and_folders_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("train-images-idx3-ubyte");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = crate::error::open_regular(&fifo).unwrap_err().to_string();
        assert!(
            e.contains("not a regular file") && e.contains("train-images-idx3-ubyte"),
            "{e}"
        );
        assert!(crate::error::open_regular(dir.path()).is_err());
        let e = crate::error::open_regular(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }));
    }

    #[test]
    fn sizes_are_bounded_and_short_reads_named() {
        let p = Path::new("f");
        assert_eq!(image_bytes(p, 10, 784, "").unwrap(), 7840);
        assert!(image_bytes(p, usize::MAX, 2, "(huge)").is_err());
        assert!(image_bytes(p, MAX_IMAGE_BYTES + 1, 1, "").is_err());
        assert!(label_count(p, MAX_LABELS + 1).is_err());
        let mut buf = [0u8; 4];
        let e = read_exact(&mut &[1u8, 2][..], &mut buf, p, "the pixels")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the pixels: truncated after 2 of 4 bytes"), "{e}");
        assert_eq!(image_buf(5 << 20, p).unwrap().len(), 5 << 20);
        assert_eq!(image_buf(3, p).unwrap().len(), 3);
    }
}
