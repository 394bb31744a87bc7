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
use crate::error::{read_file, Error, Result};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

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
            let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
            if !meta.is_file() {
                return Err(Error::format(
                    &p,
                    "not a regular file (a FIFO, socket or device?): ImageFolder reads only regular files",
                ));
            }
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

fn decode(path: &Path, size: Option<(usize, usize)>) -> Result<image::RgbImage> {
    decode_bytes(path, &read_file(path)?, size)
}

/// Decodes PNG / JPEG bytes as RGB (resized when `size` differs); `path` names them in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8], size: Option<(usize, usize)>) -> Result<image::RgbImage> {
    // A corrupt header can claim a gigantic image: refuse before allocating it.
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(path, format!("cannot read image: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(1 << 14);
    limits.max_image_height = Some(1 << 14);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let img = img.into_rgb8();
    Ok(match size {
        Some((h, w)) if (img.height() as usize, img.width() as usize) != (h, w) => {
            image::imageops::resize(&img, w as u32, h as u32, image::imageops::FilterType::Triangle)
        }
        _ => img,
    })
}

/// Decodes image files (PNG / JPEG) as RGB, resized to `size` (h, w) where they differ; returns
/// (N, H, W, 3) bytes. Used for prediction on loose files.
pub fn decode_files(paths: &[PathBuf], size: (usize, usize)) -> Result<Vec<u8>> {
    let per = size.0 * size.1 * 3;
    let mut out = vec![0u8; paths.len() * per];
    crate::pool::shared().install(|| {
        out.par_chunks_mut(per.max(1))
            .zip(paths.par_iter())
            .try_for_each(|(dst, p)| {
                let img = decode(p, Some(size))?;
                dst.copy_from_slice(img.as_raw());
                Ok::<(), Error>(())
            })
    })??;
    Ok(out)
}

/// Decodes every image as RGB. With `size = Some((h, w))` each is resized (bilinear); without it all
/// images must share the first image's size.
pub fn load(root: &Path, size: Option<(usize, usize)>) -> Result<Dataset> {
    if let Some((h, w)) = size {
        if h == 0 || w == 0 {
            return Err(Error::invalid("size", format!("({h}, {w}) is empty")));
        }
    }
    let (classes, files) = scan(root)?;
    let (h, w) = match size {
        Some(s) => s,
        None => {
            let first = decode(&files[0].0, None)?;
            (first.height() as usize, first.width() as usize)
        }
    };
    let per = 3 * h * w;
    let mut images = super::ImageBuf::zeroed(files.len() * per);
    let decode_all = || {
        images
            .par_chunks_mut(per)
            .zip(files.par_iter())
            .with_min_len(16)
            .try_for_each(|(dst, (path, _))| {
                let img = decode(path, size)?;
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
        let ds = load(t.path(), None).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        assert_eq!(ds.labels, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(ds.shape, [3, 2, 4]);
        // PNG is lossless: R plane of image 0 is x*10.
        assert_eq!(&ds.image(0)[..4], &[0, 10, 20, 30]);
        let small = load(t.path(), Some((1, 2))).unwrap();
        assert_eq!(small.shape, [3, 1, 2]);
        // A differently sized image without `size` is an error naming the file.
        image::RgbImage::new(5, 5).save(t.path().join("cat/9.png")).unwrap();
        let e = load(t.path(), None).unwrap_err().to_string();
        assert!(e.contains("9.png") && e.contains("size="), "{e}");
        std::fs::write(t.path().join("cat/9.png"), b"not a png").unwrap();
        let e = load(t.path(), None).unwrap_err().to_string();
        assert!(e.contains("cannot decode"), "{e}");
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
