//! A class-per-subfolder tree of PNG / JPEG files (torchvision's `ImageFolder`), decoded in parallel
//! straight into the data set's CHW buffer.
//!
//! Symlinks are followed (as torchvision's `os.walk(followlinks=True)`), except a link to a folder
//! that is already on the way down from the root (`a/loop -> .`, `a/up -> ..`): that is a cycle,
//! which would list files again and again, under the wrong class. Only regular files are read (a
//! FIFO named `x.png` would block forever), and class names must be UTF-8 (a lossy conversion could
//! merge two folders into one class).
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{hwc_to_chw, Dataset};
use crate::error::{check_regular, read_file, Error, Result};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The most pixels an image may have unless the caller says otherwise: PIL's own threshold for
/// `DecompressionBombError` (twice its `Image.MAX_IMAGE_PIXELS` of 89,478,485). A 760 KB PNG can
/// declare 16000x16000 pixels, 768 MB decoded; twelve of them asked for 9.2 GB.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Collects the images under `dir`; `above` holds the real paths of `dir`'s ancestors up to the root.
fn walk(dir: &Path, above: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if above.contains(&real) {
        return Ok(()); // a symlink back up the tree: a cycle (module doc)
    }
    above.push(real);
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            walk(&p, above, out)?;
        } else if is_image(&p) {
            // Refused by name now, not as a hang when it is read (which goes through open_regular).
            check_regular(&p, &std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?)?;
            out.push(p);
        }
    }
    above.pop();
    Ok(())
}

/// What `scan` finds: the class names, and every image file with its class index.
pub type Scan = (Vec<String>, Vec<(PathBuf, i64)>);

/// The class names (sorted folder names) and every image file with its class index.
pub fn scan(root: &Path) -> Result<Scan> {
    if !root.is_dir() {
        return Err(Error::not_found(root, "image folder does not exist"));
    }
    let mut classes = Vec::new();
    let mut files = Vec::new();
    let real_root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        // Entries of `read_dir` always have a file name; a missing one reads as not UTF-8.
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            return Err(Error::format(
                &dir,
                "class folder name is not valid UTF-8: rename it (class names are text)",
            ));
        };
        let mut found = Vec::new();
        walk(&dir, &mut vec![real_root.clone()], &mut found)?;
        if found.is_empty() {
            return Err(Error::not_found(
                &dir,
                format!("class folder '{name}' holds no .jpg, .jpeg or .png file"),
            ));
        }
        files.extend(found.into_iter().map(|f| (f, classes.len() as i64)));
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(Error::not_found(
            root,
            "no class subfolders found (expected root/<class>/<image>.png|jpg)",
        ));
    }
    Ok((classes, files))
}

fn decode(path: &Path, size: Option<(usize, usize)>, max_pixels: Option<u64>) -> Result<image::RgbImage> {
    decode_bytes(path, &read_file(path)?, size, max_pixels)
}

/// Decodes PNG / JPEG bytes as RGB (resized when `size` differs); `path` names them in errors.
/// An image of more than `max_pixels` pixels (None: no limit) is refused from its header, before
/// anything its size is allocated, as PIL refuses a decompression bomb.
pub fn decode_bytes(
    path: &Path,
    bytes: &[u8],
    size: Option<(usize, usize)>,
    max_pixels: Option<u64>,
) -> Result<image::RgbImage> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(path, format!("cannot read image: {e}")))?;
    // The decoders' own allocations stay within what the largest image allowed needs (8 bytes a
    // pixel: 16-bit RGBA); the pixel count itself is checked below, from the header.
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = max_pixels.map(|p| p.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let pixels = u64::from(w) * u64::from(h);
    if let Some(limit) = max_pixels.filter(|&l| pixels > l) {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            msg: format!(
                "image is {w}x{h} = {pixels} pixels, more than the limit of {limit} (a decompression bomb?, as \
                 PIL refuses it); if you trust the file, raise fastcifar.datasets.MAX_IMAGE_PIXELS (None: no limit)"
            ),
        });
    }
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let img = img.into_rgb8();
    Ok(match size {
        Some((h, w)) if (img.height() as usize, img.width() as usize) != (h, w) => {
            image::imageops::resize(&img, w as u32, h as u32, image::imageops::FilterType::Triangle)
        }
        _ => img,
    })
}

/// The images asked for are images too: `size` may not exceed `max_pixels` either.
fn check_size_pixels((h, w): (usize, usize), max_pixels: Option<u64>) -> Result<()> {
    let pixels = (h as u64).saturating_mul(w as u64);
    match max_pixels {
        Some(limit) if pixels > limit => Err(Error::invalid(
            "size",
            format!(
                "({h}, {w}) is {pixels} pixels an image, more than the limit of {limit} \
                 (fastcifar.datasets.MAX_IMAGE_PIXELS; None: no limit)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Decodes image files (PNG / JPEG) as RGB, resized to `size` (h, w) where they differ; returns
/// (N, H, W, 3) bytes. Used for prediction on loose files.
pub fn decode_files(paths: &[PathBuf], size: (usize, usize), max_pixels: Option<u64>) -> Result<Vec<u8>> {
    check_size_pixels(size, max_pixels)?;
    let per = size.0.saturating_mul(size.1).saturating_mul(3);
    let len = paths.len().saturating_mul(per);
    let mut out = Vec::new();
    crate::error::try_reserve(&mut out, len, "images")?;
    out.resize(len, 0);
    crate::pool::shared().install(|| {
        out.par_chunks_mut(per.max(1))
            .zip(paths.par_iter())
            .try_for_each(|(dst, p)| {
                let img = decode(p, Some(size), max_pixels)?;
                dst.copy_from_slice(img.as_raw());
                Ok::<(), Error>(())
            })
    })??;
    Ok(out)
}

/// Decodes every image as RGB. With `size = Some((h, w))` each is resized (bilinear); without it all
/// images must share the first image's size. Each image may have at most `max_pixels` pixels
/// (see `decode_bytes`), and the buffer of all of them is allocated fallibly.
pub fn load(root: &Path, size: Option<(usize, usize)>, max_pixels: Option<u64>) -> Result<Dataset> {
    if let Some((h, w)) = size {
        if h == 0 || w == 0 {
            return Err(Error::invalid("size", format!("({h}, {w}) is empty")));
        }
        check_size_pixels((h, w), max_pixels)?;
    }
    let (classes, files) = scan(root)?;
    let (h, w) = match size {
        Some(s) => s,
        None => {
            let first = decode(&files[0].0, None, max_pixels)?;
            (first.height() as usize, first.width() as usize)
        }
    };
    let per = 3 * h * w;
    let len = files.len().saturating_mul(per);
    let mut images = super::ImageBuf::zeroed(len, "images")?;
    let decode_all = || {
        images
            .par_chunks_mut(per)
            .zip(files.par_iter())
            .with_min_len(16)
            .try_for_each(|(dst, (path, _))| {
                let img = decode(path, size, max_pixels)?;
                if (img.height() as usize, img.width() as usize) != (h, w) {
                    return Err(Error::format(
                        path,
                        format!(
                            "image is {}x{}, the first was {h}x{w}; pass size=(h, w) to resize",
                            img.height(),
                            img.width()
                        ),
                    ));
                }
                hwc_to_chw(img.as_raw(), dst, 3);
                Ok(())
            })
    };
    crate::pool::shared().install(decode_all)??;
    let labels = files.iter().map(|(_, l)| *l).collect();
    Dataset::new(images, labels, classes, [3, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_png_and_jpeg_tree_with_resize() {
        let t = tempfile::tempdir().unwrap();
        for (class, ext) in [("cat", "png"), ("dog", "jpg")] {
            let d = t.path().join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..3u8 {
                let img = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 10, y as u8 * 100, i]));
                img.save(d.join(format!("{i}.{ext}"))).unwrap();
            }
        }
        let ds = load(t.path(), None, Some(DEFAULT_MAX_PIXELS)).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        assert_eq!(ds.labels, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(ds.shape, [3, 2, 4]);
        // PNG is lossless: R plane of image 0 is x*10.
        assert_eq!(&ds.image(0)[..4], &[0, 10, 20, 30]);
        let small = load(t.path(), Some((1, 2)), Some(DEFAULT_MAX_PIXELS)).unwrap();
        assert_eq!(small.shape, [3, 1, 2]);
        // A differently sized image without `size` is an error naming the file.
        image::RgbImage::new(5, 5).save(t.path().join("cat/9.png")).unwrap();
        let e = load(t.path(), None, Some(DEFAULT_MAX_PIXELS)).unwrap_err().to_string();
        assert!(e.contains("9.png") && e.contains("size="), "{e}");
        std::fs::write(t.path().join("cat/9.png"), b"not a png").unwrap();
        let e = load(t.path(), None, Some(DEFAULT_MAX_PIXELS)).unwrap_err().to_string();
        assert!(e.contains("cannot decode"), "{e}");
    }

    /// A PNG whose header declares `w` x `h` RGB pixels, followed by no image data (a bomb's
    /// header: its real data would be a few hundred KB of compressed zeros).
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        for chunk in [&ihdr[..], b"IDAT", b"IEND"] {
            let mut crc = flate2::Crc::new();
            crc.update(chunk);
            p.extend((chunk.len() as u32 - 4).to_be_bytes());
            p.extend(chunk);
            p.extend(crc.sum().to_be_bytes());
        }
        p
    }

    #[test]
    fn images_above_the_pixel_limit_are_refused_from_their_header() {
        let e = decode_bytes(
            Path::new("bomb.png"),
            &png_header(16_000, 16_000),
            None,
            Some(DEFAULT_MAX_PIXELS),
        )
        .unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("bomb.png") && e.contains("16000x16000") && e.contains("MAX_IMAGE_PIXELS"),
            "{e}"
        );
        // Without a limit, a header gets as far as its (missing) data.
        let e = decode_bytes(Path::new("b.png"), &png_header(2_000, 2_000), None, None).unwrap_err();
        assert!(e.to_string().contains("cannot decode"), "{e}");
        // The limit is the caller's: a 4x2 image against a limit of 7 pixels, and a size asked for.
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        image::RgbImage::new(4, 2).save(t.path().join("a/0.png")).unwrap();
        assert!(matches!(load(t.path(), None, Some(7)), Err(Error::TooLarge { .. })));
        assert_eq!(load(t.path(), None, Some(8)).unwrap().shape, [3, 2, 4]);
        let e = load(t.path(), Some((3, 3)), Some(8)).unwrap_err().to_string();
        assert!(e.starts_with("size: (3, 3) is 9 pixels"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_cycles_are_not_followed_and_only_regular_files_are_read() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(t.path().join(class)).unwrap();
            for i in 0..3u8 {
                image::RgbImage::from_pixel(2, 2, image::Rgb([i, 0, 0]))
                    .save(t.path().join(format!("{class}/{i}.png")))
                    .unwrap();
            }
        }
        std::os::unix::fs::symlink(".", t.path().join("a/loop")).unwrap();
        std::os::unix::fs::symlink("..", t.path().join("a/up")).unwrap();
        std::os::unix::fs::symlink("../a", t.path().join("b/deep")).unwrap();
        let (classes, files) = scan(t.path()).unwrap();
        assert_eq!(classes, vec!["a", "b"]);
        // b/deep -> a is not a cycle (a is not above b): followed, as torchvision does.
        let labels: Vec<i64> = files.iter().map(|f| f.1).collect();
        assert_eq!(labels, vec![0, 0, 0, 1, 1, 1, 1, 1, 1], "{files:?}");
        // A FIFO named like an image is refused by name instead of blocking the load.
        let fifo = t.path().join("b/x.png");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = scan(t.path()).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("regular file"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
        // A class folder whose name is not UTF-8 is refused, not merged with another.
        let bad = t.path().join(std::ffi::OsStr::from_bytes(b"c\xff"));
        std::fs::create_dir(&bad).unwrap();
        std::fs::copy(t.path().join("a/0.png"), bad.join("0.png")).unwrap();
        let e = scan(t.path()).unwrap_err().to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }
}
