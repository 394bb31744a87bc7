//! SVHN's cropped digits, `root/{train,test,extra}_32x32.mat`, as torchvision reads them: `X` a
//! uint8 (H, W, 3, N) array and `y` an (N, 1) array of labels 1 to 10, where 10 is the digit 0
//! (torchvision makes it 0). MATLAB stores arrays column-major, so each image is three planes with
//! the rows varying fastest; each plane is transposed into the data set's (C, H, W) order.
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::mat::{self, Num, Var};
use super::{guard, Dataset, ImageBuf};
use crate::error::{Error, Result};

/// Loads `root/<file>`. Returns the data set and the path read.
pub fn load(root: &Path, file: &str, classes: Vec<String>) -> Result<(Dataset, PathBuf)> {
    let path = root.join(file);
    if !path.exists() {
        let msg = if root.is_dir() {
            format!(
                "no such file: SVHN's {file} goes directly in {} (pass download=True to fetch it)",
                root.display()
            )
        } else {
            format!(
                "data folder {} does not exist (pass download=True to fetch {file})",
                root.display()
            )
        };
        return Err(Error::not_found(&path, msg));
    }
    let f = crate::error::open_regular(&path)?;
    let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
    let ds = if len == 0 {
        decode(&[], &path, classes)?
    } else {
        // SAFETY: a read-only private mapping, dropped before this function returns; the bytes are
        // copied out (as for numpy.memmap, a file truncated meanwhile by another process is not
        // supported).
        let map = unsafe { memmap2::MmapOptions::new().map(&f) }.map_err(|e| Error::io(&path, e))?;
        decode(&map, &path, classes)?
    };
    Ok((ds, path))
}

/// Decodes the bytes of an SVHN `.mat` file; `path` names it in errors. (The fuzz tests' entry.)
pub fn decode(bytes: &[u8], path: &Path, classes: Vec<String>) -> Result<Dataset> {
    let mut images: Option<(ImageBuf, [usize; 3])> = None;
    let mut labels: Option<Vec<i64>> = None;
    let seen = mat::scan(bytes, path, &["X", "y"], &mut |var, r| {
        if var.name == "X" {
            images = Some(read_images(var, r, path)?);
        } else {
            labels = Some(read_labels(var, r, path, classes.len())?);
        }
        Ok(())
    })?;
    let missing = |name: &str, what: &str| {
        let held = if seen.is_empty() {
            "no variables".to_string()
        } else {
            seen.join(", ")
        };
        Error::format(
            path,
            format!("no variable '{name}' ({what}) in the file, which holds: {held}"),
        )
    };
    let (pixels, [h, w, n]) = images.ok_or_else(|| missing("X", "the images, uint8 (32, 32, 3, N)"))?;
    let labels = labels.ok_or_else(|| missing("y", "the labels, (N, 1)"))?;
    if labels.len() != n {
        return Err(Error::format(
            path,
            format!("X holds {n} images but y has {} labels", labels.len()),
        ));
    }
    Dataset::new(pixels, labels, classes, [3, h, w])
}

/// `X`: uint8 (H, W, 3, N), or (H, W, 3) for one image (MATLAB drops a trailing 1).
fn read_images(var: &Var, r: &mut dyn Read, path: &Path) -> Result<(ImageBuf, [usize; 3])> {
    let bad = |m: String| Error::format(path, format!("variable 'X': {m}"));
    if var.class != 9 || var.num != Num::U8 {
        return Err(bad(format!(
            "is a {} array stored as {}: SVHN's images are uint8",
            var.class_name(),
            var.num.name()
        )));
    }
    let (h, w, n) = match var.dims[..] {
        [h, w, 3, n] => (h, w, n),
        [h, w, 3] => (h, w, 1),
        _ => return Err(bad(format!("has dimensions {:?}, expected (H, W, 3, N)", var.dims))),
    };
    let per = h.checked_mul(w).and_then(|p| p.checked_mul(3)).unwrap_or(usize::MAX);
    let total = guard::image_bytes(path, n, per, &format!("{n} x {h} x {w} x 3"))?;
    if var.bytes != total {
        return Err(bad(format!(
            "holds {} bytes, but its dimensions {:?} take {total}",
            var.bytes, var.dims
        )));
    }
    let mut out = guard::image_buf(total, path)?;
    if total == 0 {
        return Ok((out, [h, w, n]));
    }
    // Inflate (or copy) a few MB of images at a time, then transpose them on all cores. The scratch
    // space grows with the bytes that arrive, never with what the header declares.
    let batch = ((4 << 20) / per).max(1) * per;
    for dst in out.chunks_mut(batch) {
        let src = guard::read_vec(r, dst.len(), path, "variable 'X'")?;
        let work = || {
            dst.par_chunks_mut(per)
                .zip(src.par_chunks(per))
                .for_each(|(d, s)| column_major_to_chw(s, d, h, w))
        };
        crate::pool::shared().install(work)?;
    }
    Ok((out, [h, w, n]))
}

/// One image from MATLAB's (H, W, C) column-major order to (C, H, W) row-major.
fn column_major_to_chw(src: &[u8], dst: &mut [u8], h: usize, w: usize) {
    let plane = h * w;
    for (s, d) in src.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
        for (col, column) in s.chunks_exact(h).enumerate() {
            for (row, &v) in column.iter().enumerate() {
                d[row * w + col] = v;
            }
        }
    }
}

/// `y`: (N, 1) or (1, N) of whole numbers 0 to 10 in any numeric class; 10 becomes 0.
fn read_labels(var: &Var, r: &mut dyn Read, path: &Path, num_classes: usize) -> Result<Vec<i64>> {
    let bad = |m: String| Error::format(path, format!("variable 'y': {m}"));
    let n = match var.dims[..] {
        [n, 1] | [1, n] => n,
        _ => return Err(bad(format!("has dimensions {:?}, expected (N, 1)", var.dims))),
    };
    let n = guard::label_count(path, n)?;
    let size = var.num.size();
    if Some(var.bytes) != n.checked_mul(size) {
        return Err(bad(format!(
            "holds {} bytes, but {n} values of {} take {}",
            var.bytes,
            var.num.name(),
            n * size
        )));
    }
    let raw = guard::read_vec(r, var.bytes, path, "variable 'y'")?;
    let mut labels = guard::vec_with_capacity(n, path, "labels")?;
    for (i, b) in raw.chunks_exact(size).enumerate() {
        let v = var.value(b);
        // SVHN's labels are 1 to 10 (10 for the digit 0); a 0 is taken as 0, as torchvision does.
        if v.fract() != 0.0 || !(0.0..=10.0).contains(&v) {
            return Err(bad(format!(
                "label {v} at index {i} is not a whole number from 1 to 10 (10 is the digit 0)"
            )));
        }
        let l = if v == 10.0 { 0 } else { v as i64 };
        if l as usize >= num_classes {
            return Err(bad(format!(
                "label {l} at index {i} is out of range for {num_classes} classes"
            )));
        }
        labels.push(l);
    }
    Ok(labels)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub fn classes() -> Vec<String> {
        (0..10).map(|i| i.to_string()).collect()
    }

    fn pad8(b: &mut Vec<u8>) {
        while !b.len().is_multiple_of(8) {
            b.push(0);
        }
    }

    fn sub(out: &mut Vec<u8>, ty: u32, data: &[u8], small: bool) {
        if small && data.len() <= 4 {
            out.extend((ty | (data.len() as u32) << 16).to_le_bytes());
            let mut d = data.to_vec();
            d.resize(4, 0);
            out.extend(d);
        } else {
            out.extend(ty.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
            pad8(out);
        }
    }

    /// A little-endian miMATRIX element: class, dims, name, real part of storage type `ty`.
    pub fn matrix(name: &str, class: u8, dims: &[i32], ty: u32, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        sub(
            &mut body,
            6,
            &[&(class as u32).to_le_bytes()[..], &[0; 4]].concat(),
            false,
        );
        let d: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        sub(&mut body, 5, &d, false);
        sub(&mut body, 1, name.as_bytes(), true);
        sub(&mut body, ty, data, true);
        let mut e = Vec::new();
        e.extend(14u32.to_le_bytes());
        e.extend((body.len() as u32).to_le_bytes());
        e.extend(body);
        e
    }

    pub fn compressed(element: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(element).unwrap();
        let z = z.finish().unwrap();
        [&15u32.to_le_bytes()[..], &(z.len() as u32).to_le_bytes(), &z].concat()
    }

    pub fn file(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut h = b"MATLAB 5.0 MAT-file, written by a test".to_vec();
        h.resize(116, b' ');
        h.extend([0; 8]);
        h.extend(0x0100u16.to_le_bytes());
        h.extend(b"IM");
        for e in elements {
            h.extend(e);
        }
        h
    }

    /// X of `n` 2x2 RGB images (value = 100 * image + 10 * channel + 2 * col + row) and y.
    pub fn svhn(n: usize, y: &[u8], zip: bool) -> Vec<u8> {
        let mut x = Vec::new();
        for i in 0..n {
            for c in 0..3 {
                for col in 0..2 {
                    for row in 0..2 {
                        x.push((100 * i + 10 * c + 2 * col + row) as u8);
                    }
                }
            }
        }
        let xm = matrix("X", 9, &[2, 2, 3, n as i32], 2, &x);
        let ym = matrix("y", 6, &[y.len() as i32, 1], 2, y); // double labels stored as uint8, as MATLAB does
        if zip {
            file(&[compressed(&ym), compressed(&xm)])
        } else {
            file(&[xm, ym])
        }
    }

    #[test]
    fn plain_and_compressed_files_decode_the_same() {
        for zip in [false, true] {
            let ds = decode(&svhn(2, &[10, 3], zip), Path::new("s"), classes()).unwrap();
            assert_eq!((ds.len(), ds.shape, &ds.labels[..]), (2, [3, 2, 2], &[0, 3][..]));
            // (C, H, W): channel 1 of image 1 is rows (0, 1) by columns (0, 1).
            assert_eq!(&ds.image(1)[4..8], &[110, 112, 111, 113]);
        }
        // One image: MATLAB drops the trailing 1.
        let x = matrix("X", 9, &[1, 1, 3], 2, &[1, 2, 3]);
        let y = matrix("y", 9, &[1, 1], 2, &[5]);
        let ds = decode(&file(&[x, y]), Path::new("s"), classes()).unwrap();
        assert_eq!((ds.image(0), &ds.labels[..]), (&[1u8, 2, 3][..], &[5][..]));
    }

    #[test]
    fn big_endian_files_and_wide_label_types() {
        // y as int32 and as double, little-endian; then a whole big-endian file.
        for (ty, bytes) in [(5u32, 7i32.to_le_bytes().to_vec()), (9, 7f64.to_le_bytes().to_vec())] {
            let f = file(&[
                matrix("X", 9, &[1, 1, 3, 1], 2, &[1, 2, 3]),
                matrix("y", 6, &[1, 1], ty, &bytes),
            ]);
            assert_eq!(decode(&f, Path::new("s"), classes()).unwrap().labels, vec![7]);
        }
        let mut be = file(&[]);
        be[126..128].copy_from_slice(b"MI");
        be[124..126].copy_from_slice(&0x0100u16.to_be_bytes());
        let mut body = Vec::new();
        let be_sub = |out: &mut Vec<u8>, ty: u32, data: &[u8]| {
            out.extend(ty.to_be_bytes());
            out.extend((data.len() as u32).to_be_bytes());
            out.extend(data);
            pad8(out);
        };
        be_sub(&mut body, 6, &[0, 0, 0, 6, 0, 0, 0, 0]);
        be_sub(&mut body, 5, &[&1i32.to_be_bytes()[..], &1i32.to_be_bytes()].concat());
        be_sub(&mut body, 1, b"y");
        be_sub(&mut body, 3, &1000i16.to_be_bytes()); // int16: 1000, out of range
        be.extend(14u32.to_be_bytes());
        be.extend((body.len() as u32).to_be_bytes());
        be.extend(body);
        let e = decode(&be, Path::new("s"), classes()).unwrap_err().to_string();
        assert!(e.contains("label 1000 at index 0"), "{e}");
    }

    #[test]
    fn malformed_files_are_named() {
        let good_x = matrix("X", 9, &[1, 1, 3, 1], 2, &[1, 2, 3]);
        let good_y = matrix("y", 6, &[1, 1], 2, &[1]);
        let mut v73 = file(&[]);
        v73[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
        let mut trunc = file(&[good_x.clone(), good_y.clone()]);
        trunc.truncate(trunc.len() - 3);
        let mut bad_zip = file(&[compressed(&good_x), good_y.clone()]);
        bad_zip[128 + 12] ^= 0xff;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "0 bytes: too short for a MAT-file"),
            (vec![0; 200], "not a MATLAB 5 MAT-file"),
            (v73, "v7.3 (HDF5)"),
            (trunc, "a truncated file?"),
            (file(std::slice::from_ref(&good_y)), "no variable 'X'"),
            (
                file(&[good_x.clone(), matrix("z", 9, &[1, 1], 2, &[1])]),
                "which holds: X, z",
            ),
            (
                file(&[matrix("X", 1, &[1, 1], 2, &[]), good_y.clone()]),
                "is a cell array",
            ),
            (
                file(&[matrix("X", 6, &[1, 1, 3, 1], 9, &[0; 24]), good_y.clone()]),
                "is a double array",
            ),
            (
                file(&[matrix("X", 9, &[2, 2, 1, 1], 2, &[0; 4]), good_y.clone()]),
                "expected (H, W, 3, N)",
            ),
            (
                file(&[matrix("X", 9, &[1, 1, 3, 2], 2, &[0; 3]), good_y.clone()]),
                "holds 3 bytes",
            ),
            (
                file(&[matrix("X", 9, &[65536, 65536, 3, 1], 2, &[]), good_y.clone()]),
                "more than the 4 GiB",
            ),
            (
                file(&[good_x.clone(), matrix("y", 6, &[2, 2], 2, &[1; 4])]),
                "expected (N, 1)",
            ),
            (
                file(&[good_x.clone(), matrix("y", 6, &[1, 1], 2, &[11])]),
                "label 11 at index 0",
            ),
            (
                file(&[good_x.clone(), matrix("y", 6, &[1, 1], 9, &2.5f64.to_le_bytes())]),
                "label 2.5",
            ),
            (
                file(&[good_x.clone(), matrix("y", 6, &[2, 1], 2, &[1, 2])]),
                "X holds 1 images but y has 2",
            ),
            (bad_zip, "compressed element at byte 128"),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes, Path::new("s.mat"), classes())
                .expect_err(want)
                .to_string();
            assert!(e.starts_with("s.mat: ") && e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn missing_file_says_where_it_goes() {
        let t = tempfile::tempdir().unwrap();
        let e = load(t.path(), "train_32x32.mat", classes()).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }));
        assert!(
            e.to_string().contains("goes directly in") && e.to_string().contains("download=True"),
            "{e}"
        );
        std::fs::write(t.path().join("test_32x32.mat"), svhn(3, &[1, 2, 10], true)).unwrap();
        let (ds, p) = load(t.path(), "test_32x32.mat", classes()).unwrap();
        assert_eq!((ds.labels, p), (vec![1, 2, 0], t.path().join("test_32x32.mat")));
    }
}
