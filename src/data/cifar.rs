//! CIFAR-10 and CIFAR-100 in every official form: the binary records, the Python 2 pickles, and the
//! two `.tar.gz` archives, read in place without extracting anything to disk.
//!
//! When `root` holds several forms, the first found in this order is used: the extracted pickle
//! folder, the extracted binary folder, the pickle archive, the binary archive. Extracted files are
//! faster to read and are what torchvision itself would pick.
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::mapped::{FileImages, Segment};
use super::pickle;
use super::{Dataset, ImageBuf};
use crate::error::{human_bytes, open_regular, try_reserve, Error, Result};

pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// The most bytes one load reads, in one file or in all together: the whole data set (60,000
/// images) as CIFAR-100's records or pickled with file names and labels (about 3,100 bytes an
/// image), with room to spare. A file or archive member that declares more is no CIFAR batch (a
/// 9 MB archive can hold a 2 GB member of zeros), and is refused before it is read.
pub const MAX_DATA_BYTES: u64 = 60_000 * 3_200 + (1 << 20);

/// Refuses `len` bytes more when `total` bytes were read already (see `MAX_DATA_BYTES`).
fn check_size(path: &Path, what: &str, len: u64, total: u64) -> Result<()> {
    if len > MAX_DATA_BYTES || total.saturating_add(len) > MAX_DATA_BYTES {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            msg: format!(
                "{what} of {} ({} read before it) is more than all of CIFAR can be ({}): not a CIFAR file",
                human_bytes(len as usize),
                human_bytes(total as usize),
                human_bytes(MAX_DATA_BYTES as usize)
            ),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    /// `coarse` picks the 20 super-classes instead of the 100 fine classes.
    Cifar100 {
        coarse: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    PythonDir,
    BinaryDir,
    PythonArchive,
    BinaryArchive,
}

/// File names and record layout of one variant, as the official downloads have them.
struct Spec {
    name: &'static str,
    py_dir: &'static str,
    bin_dir: &'static str,
    py_archive: &'static str,
    bin_archive: &'static str,
    py_train: &'static [&'static str],
    py_test: &'static [&'static str],
    py_meta: &'static str,
    py_meta_key: &'static str,
    py_labels_key: &'static str,
    bin_train: &'static [&'static str],
    bin_test: &'static [&'static str],
    bin_meta: &'static str,
    /// Bytes per binary record: label byte(s) then the image.
    record: usize,
    /// Which of the label bytes is the label asked for.
    label_byte: usize,
    num_classes: usize,
}

const CIFAR10: Spec = Spec {
    name: "CIFAR-10",
    py_dir: "cifar-10-batches-py",
    bin_dir: "cifar-10-batches-bin",
    py_archive: "cifar-10-python.tar.gz",
    bin_archive: "cifar-10-binary.tar.gz",
    py_train: &[
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
    ],
    py_test: &["test_batch"],
    py_meta: "batches.meta",
    py_meta_key: "label_names",
    py_labels_key: "labels",
    bin_train: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    bin_test: &["test_batch.bin"],
    bin_meta: "batches.meta.txt",
    record: 1 + IMAGE_BYTES,
    label_byte: 0,
    num_classes: 10,
};

const CIFAR100_FINE: Spec = Spec {
    name: "CIFAR-100",
    py_dir: "cifar-100-python",
    bin_dir: "cifar-100-binary",
    py_archive: "cifar-100-python.tar.gz",
    bin_archive: "cifar-100-binary.tar.gz",
    py_train: &["train"],
    py_test: &["test"],
    py_meta: "meta",
    py_meta_key: "fine_label_names",
    py_labels_key: "fine_labels",
    bin_train: &["train.bin"],
    bin_test: &["test.bin"],
    bin_meta: "fine_label_names.txt",
    record: 2 + IMAGE_BYTES,
    label_byte: 1,
    num_classes: 100,
};

const CIFAR100_COARSE: Spec = Spec {
    py_meta_key: "coarse_label_names",
    py_labels_key: "coarse_labels",
    bin_meta: "coarse_label_names.txt",
    label_byte: 0,
    num_classes: 20,
    ..CIFAR100_FINE
};

impl Variant {
    fn spec(self) -> &'static Spec {
        match self {
            Variant::Cifar10 => &CIFAR10,
            Variant::Cifar100 { coarse: false } => &CIFAR100_FINE,
            Variant::Cifar100 { coarse: true } => &CIFAR100_COARSE,
        }
    }

    /// The archive `download=True` fetches (the pickle one, as torchvision does).
    pub fn download_name(self) -> &'static str {
        self.spec().py_archive
    }
}

/// Where the bytes come from: an extracted folder, or members already read out of an archive.
enum Source {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        members: HashMap<String, Vec<u8>>,
    },
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Archive { path: p, .. } => p,
        }
    }

    /// Opens several members: files are memory-mapped, archive members are already in memory.
    /// One file's path and bytes (`read_all` of one name, which yields exactly one entry).
    fn read_one(&mut self, name: &str) -> Result<(PathBuf, Bytes)> {
        self.read_all(&[name])?
            .pop()
            .ok_or_else(|| Error::not_found(name, "no such file"))
    }

    fn read_all(&mut self, names: &[&str]) -> Result<Vec<(PathBuf, Bytes)>> {
        match self {
            Source::Dir(dir) => {
                let files: Vec<(PathBuf, Bytes)> = crate::pool::shared()
                    .install(|| names.par_iter().map(|n| map_file(&dir.join(n))).collect::<Result<_>>())??;
                let mut total = 0u64;
                for (p, b) in &files {
                    check_size(p, "the files together", b.len() as u64, total)?;
                    total += b.len() as u64;
                }
                Ok(files)
            }
            Source::Archive { path, members } => names
                .iter()
                .map(|n| {
                    let p = PathBuf::from(format!("{}:{n}", path.display()));
                    members
                        .remove(*n)
                        .map(|b| (p, Bytes::Owned(b)))
                        .ok_or_else(|| Error::format(path.as_path(), format!("archive has no member {n}")))
                })
                .collect(),
        }
    }
}

/// A file's bytes: mapped (with the file, for `mmap=True`), or owned when they came out of an
/// archive.
enum Bytes {
    Mapped(memmap2::Mmap, std::fs::File),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m, _) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Maps a file read-only. Reading 150 MB through `read` into fresh buffers costs more in page
/// faults than the decode itself; mapping reuses the page cache. (As with numpy.memmap, a file
/// truncated by another process while it is being read is not supported.)
fn map_file(path: &Path) -> Result<(PathBuf, Bytes)> {
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    check_size(path, "a file", len, 0)?;
    if len == 0 {
        return Ok((path.to_path_buf(), Bytes::Owned(Vec::new())));
    }
    // SAFETY: read-only private mapping; the bytes are copied out before the map is dropped.
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok((path.to_path_buf(), Bytes::Mapped(map, file)))
}

/// Reads the members named `wanted` out of a `.tar.gz`, in one streaming pass, into memory.
/// Members match by file name under any folder, so re-packed archives load too.
/// A member's declared size is checked before it is read (the tar reader then reads exactly that
/// many bytes), and so is the sum of the members read (`MAX_DATA_BYTES`).
pub fn read_archive(path: &Path, wanted: &[&str]) -> Result<HashMap<String, Vec<u8>>> {
    let file = open_regular(path)?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut tar = tar::Archive::new(gz);
    let corrupt = |e: std::io::Error| Error::format(path, format!("corrupt or truncated archive: {e}"));
    let mut out = HashMap::new();
    let mut total = 0u64;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let entry_path = entry.path().map_err(corrupt)?.into_owned();
        let Some(name) = entry_path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(&w) = wanted.iter().find(|&&w| w == name) {
            let size = entry.size();
            let member = PathBuf::from(format!("{}:{}", path.display(), entry_path.display()));
            check_size(&member, "a member", size, total)?;
            total += size;
            let mut buf = Vec::new();
            try_reserve(&mut buf, size as usize, member.display())?;
            entry.read_to_end(&mut buf).map_err(corrupt)?;
            out.insert(w.to_string(), buf);
            if out.len() == wanted.len() {
                break;
            }
        }
    }
    Ok(out)
}

/// The form found under `root`, in the documented order of preference.
fn locate(root: &Path, spec: &Spec) -> Result<(Layout, PathBuf)> {
    if !root.exists() {
        return Err(Error::not_found(
            root,
            format!("data folder does not exist (looking for {})", spec.name),
        ));
    }
    // `root` may also be one of the folders or archives itself.
    let base = root.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let candidates = [
        (Layout::PythonDir, spec.py_dir),
        (Layout::BinaryDir, spec.bin_dir),
        (Layout::PythonArchive, spec.py_archive),
        (Layout::BinaryArchive, spec.bin_archive),
    ];
    for (layout, name) in candidates {
        if base == name {
            return Ok((layout, root.to_path_buf()));
        }
    }
    for (layout, name) in candidates {
        let p = root.join(name);
        let ok = match layout {
            Layout::PythonDir | Layout::BinaryDir => p.is_dir(),
            // Anything but a folder: a FIFO of that name is then refused by name when it is read.
            _ => std::fs::metadata(&p).is_ok_and(|m| !m.is_dir()),
        };
        if ok {
            return Ok((layout, p));
        }
    }
    Err(Error::not_found(
        root,
        format!(
            "no {} data found: expected one of {}/, {}/, {}, {} (pass download=True to fetch {})",
            spec.name, spec.py_dir, spec.bin_dir, spec.py_archive, spec.bin_archive, spec.py_archive
        ),
    ))
}

/// Loads one split. Returns the data set and the folder or archive it came from.
/// `mmap`: keep the images of an extracted pickle folder in the page cache instead of copying them
/// (see `mapped`); other forms are copied regardless.
pub fn load(root: &Path, variant: Variant, train: bool, mmap: bool) -> Result<(Dataset, Layout, PathBuf)> {
    let spec = variant.spec();
    let (layout, path) = locate(root, spec)?;
    let python = matches!(layout, Layout::PythonDir | Layout::PythonArchive);
    let (batches, meta) = match (python, train) {
        (true, true) => (spec.py_train, spec.py_meta),
        (true, false) => (spec.py_test, spec.py_meta),
        (false, true) => (spec.bin_train, spec.bin_meta),
        (false, false) => (spec.bin_test, spec.bin_meta),
    };
    let mut source = match layout {
        Layout::PythonDir | Layout::BinaryDir => Source::Dir(path.clone()),
        _ => {
            let mut wanted: Vec<&str> = batches.to_vec();
            wanted.push(meta);
            let members = read_archive(&path, &wanted)?;
            Source::Archive {
                path: path.clone(),
                members,
            }
        }
    };
    let classes = if python {
        pickle_classes(&mut source, spec)?
    } else {
        text_classes(&mut source, spec)?
    };
    let files = source.read_all(batches)?;
    let ds = if python {
        decode_pickles(&files, spec, classes, mmap)?
    } else {
        decode_records(&files, spec, classes)?
    };
    // Unmapping 150 MB of page-cache mappings costs milliseconds that the caller need not wait for.
    if files.iter().any(|(_, b)| matches!(b, Bytes::Mapped(..))) {
        let _ = std::thread::Builder::new()
            .name("fastcifar-unmap".into())
            .spawn(move || drop(files));
    }
    Ok((ds, layout, source.path().to_path_buf()))
}

fn pickle_classes(source: &mut Source, spec: &Spec) -> Result<Vec<String>> {
    let (p, bytes) = source.read_one(spec.py_meta)?;
    let pk = pickle::parse(&bytes).map_err(|m| Error::format(&p, format!("malformed pickle: {m}")))?;
    let names = pk
        .root()
        .get(spec.py_meta_key)
        .and_then(|n| n.items())
        .ok_or_else(|| Error::format(&p, format!("no '{}' list in the meta pickle", spec.py_meta_key)))?;
    let names: Vec<String> = names
        .iter()
        .map(|n| n.as_text().map(|s| s.into_owned()))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::format(&p, format!("'{}' holds a non-string", spec.py_meta_key)))?;
    check_class_count(&p, spec, names)
}

fn text_classes(source: &mut Source, spec: &Spec) -> Result<Vec<String>> {
    let (p, bytes) = source.read_one(spec.bin_meta)?;
    let text =
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::format(&p, "class names file is not UTF-8 text"))?;
    let names = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    check_class_count(&p, spec, names)
}

fn check_class_count(path: &Path, spec: &Spec, names: Vec<String>) -> Result<Vec<String>> {
    if names.len() != spec.num_classes {
        return Err(Error::format(
            path,
            format!("{} class names, expected {}", names.len(), spec.num_classes),
        ));
    }
    Ok(names)
}

/// Binary layout: fixed-size records `<label byte(s)><3072 image bytes>`, already CHW.
fn decode_records(files: &[(PathBuf, Bytes)], spec: &Spec, classes: Vec<String>) -> Result<Dataset> {
    let mut records: Vec<&[u8]> = Vec::new();
    let mut origin: Vec<(usize, usize)> = Vec::new(); // (file, first record) for error messages
    for (f, (path, bytes)) in files.iter().enumerate() {
        if bytes.is_empty() || bytes.len() % spec.record != 0 {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes is not a whole number of {}-byte records (truncated, or not {} binary data?)",
                    bytes.len(),
                    spec.record,
                    spec.name
                ),
            ));
        }
        origin.push((f, records.len()));
        // Slicing only: the bytes are first touched by the parallel pass below.
        records.extend(bytes.chunks_exact(spec.record));
    }
    // One parallel pass copies each image and reads its label, so the mapped files are paged in
    // by all cores at once.
    let mut images = ImageBuf::zeroed(records.len() * IMAGE_BYTES, "images")?;
    let mut raw = vec![0u8; records.len()];
    images
        .par_chunks_mut(IMAGE_BYTES * 64)
        .zip(raw.par_chunks_mut(64))
        .zip(records.par_chunks(64))
        .for_each(|((img, lab), recs)| {
            for ((d, l), r) in img.chunks_exact_mut(IMAGE_BYTES).zip(lab.iter_mut()).zip(recs) {
                *l = r[spec.label_byte];
                d.copy_from_slice(&r[spec.record - IMAGE_BYTES..]);
            }
        });
    if let Some(k) = raw.iter().position(|&l| l as usize >= spec.num_classes) {
        // `origin` starts at record 0, so some file holds record k.
        let (f, first) = origin
            .iter()
            .rev()
            .find(|(_, first)| *first <= k)
            .copied()
            .unwrap_or((0, 0));
        return Err(Error::format(
            &files[f].0,
            format!(
                "record {} has label {}, out of range for {} classes",
                k - first,
                raw[k],
                spec.num_classes
            ),
        ));
    }
    let labels = raw.into_iter().map(i64::from).collect();
    Dataset::new(images, labels, classes, [3, 32, 32])
}

/// Pickle layout: a dict with a uint8 (N, 3072) array under `data` and a label list.
fn decode_pickles(files: &[(PathBuf, Bytes)], spec: &Spec, classes: Vec<String>, mmap: bool) -> Result<Dataset> {
    let parsed = crate::pool::shared().install(|| {
        files
            .par_iter()
            .map(|(path, bytes)| {
                let bad = |m: String| Error::format(path, m);
                let pk = pickle::parse(bytes).map_err(|m| bad(format!("malformed pickle: {m}")))?;
                let v = pk.root();
                let data = v
                    .get("data")
                    .ok_or_else(|| bad("no 'data' entry in the batch".into()))?;
                let (shape, pixels) = data.ndarray_u8().map_err(|m| bad(format!("'data': {m}")))?;
                if shape.len() != 2 || shape[1] != IMAGE_BYTES {
                    return Err(bad(format!("'data' has shape {shape:?}, expected (N, {IMAGE_BYTES})")));
                }
                let raw = v
                    .get(spec.py_labels_key)
                    .and_then(|l| l.items())
                    .ok_or_else(|| bad(format!("no '{}' list in the batch", spec.py_labels_key)))?;
                if raw.len() != shape[0] {
                    return Err(bad(format!("{} labels for {} images", raw.len(), shape[0])));
                }
                let mut labels = Vec::with_capacity(raw.len());
                for (i, l) in raw.iter().enumerate() {
                    match l.as_int() {
                        Some(l) if (0..spec.num_classes as i64).contains(&l) => labels.push(l),
                        Some(l) => {
                            return Err(bad(format!(
                                "label {l} at index {i} is out of range for {} classes",
                                spec.num_classes
                            )))
                        }
                        None => return Err(bad(format!("label at index {i} is not an integer"))),
                    }
                }
                Ok((pixels, labels))
            })
            .collect::<Result<Vec<_>>>()
    })??;
    let labels = parsed.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    let images = match map_pixels(files, &parsed, mmap) {
        Some(m) => ImageBuf::Files(m),
        None => {
            let records: Vec<&[u8]> = parsed.iter().flat_map(|(px, _)| px.chunks_exact(IMAGE_BYTES)).collect();
            gather(&records)?
        }
    };
    Dataset::new(images, labels, classes, [3, 32, 32])
}

/// The pixel arrays as the files' own pages, when asked for and when they are slices of mapped
/// files. None means copy: archives, pickles whose pixels are not one run of file bytes, or a
/// mapping the system refused.
fn map_pixels(files: &[(PathBuf, Bytes)], parsed: &[(Cow<'_, [u8]>, Vec<i64>)], mmap: bool) -> Option<FileImages> {
    if !mmap {
        return None;
    }
    let segments = files
        .iter()
        .zip(parsed)
        .map(|((_, bytes), (px, _))| match (bytes, px) {
            (Bytes::Mapped(map, file), Cow::Borrowed(px)) => {
                let offset = (px.as_ptr() as usize).checked_sub(map.as_ptr() as usize)?;
                (offset + px.len() <= map.len()).then_some(Segment {
                    file,
                    offset: offset as u64,
                    bytes: px,
                })
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    FileImages::map(&segments).ok()
}

/// Decodes one CIFAR-10 batch held in memory (`python`: a pickle, else binary records), with the
/// class names given. The entry point of the fuzz tests.
pub fn decode_batch_bytes(bytes: Vec<u8>, python: bool, classes: Vec<String>) -> Result<Dataset> {
    let files = [(PathBuf::from("<memory>"), Bytes::Owned(bytes))];
    if python {
        decode_pickles(&files, &CIFAR10, classes, false)
    } else {
        decode_records(&files, &CIFAR10, classes)
    }
}

/// Copies same-sized records into one contiguous buffer, split across cores.
fn gather(records: &[&[u8]]) -> Result<ImageBuf> {
    let Some(size) = records.first().map(|r| r.len()) else {
        return Ok(ImageBuf::Heap(Vec::new()));
    };
    let mut out = ImageBuf::zeroed(records.len() * size, "images")?;
    out.par_chunks_mut(size * 64)
        .zip(records.par_chunks(64))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_exact_mut(size).zip(src) {
                d.copy_from_slice(s);
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_bin(dir: &Path, name: &str, labels: &[u8]) {
        let mut b = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            b.push(l);
            b.extend((0..IMAGE_BYTES).map(|p| (p + i) as u8));
        }
        std::fs::write(dir.join(name), b).unwrap();
    }

    fn cifar10_bin(root: &Path) -> PathBuf {
        let d = root.join("cifar-10-batches-bin");
        std::fs::create_dir_all(&d).unwrap();
        for (k, f) in CIFAR10.bin_train.iter().enumerate() {
            write_bin(&d, f, &[k as u8, 9]);
        }
        write_bin(&d, "test_batch.bin", &[3]);
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        std::fs::write(d.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
        d
    }

    #[test]
    fn binary_layout_loads() {
        let t = tempfile::tempdir().unwrap();
        cifar10_bin(t.path());
        let (ds, layout, _) = load(t.path(), Variant::Cifar10, true, false).unwrap();
        assert_eq!(layout, Layout::BinaryDir);
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.labels, vec![0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
        assert_eq!(ds.image(1)[0], 1);
        assert_eq!(ds.classes[9], "c9");
        let (test, _, _) = load(t.path(), Variant::Cifar10, false, false).unwrap();
        assert_eq!(test.labels, vec![3]);
    }

    #[test]
    fn truncated_record_and_bad_label_are_named() {
        let t = tempfile::tempdir().unwrap();
        let d = cifar10_bin(t.path());
        let f = d.join("data_batch_3.bin");
        let b = std::fs::read(&f).unwrap();
        std::fs::write(&f, &b[..b.len() - 1]).unwrap();
        let e = load(t.path(), Variant::Cifar10, true, false).unwrap_err().to_string();
        assert!(e.contains("data_batch_3.bin") && e.contains("3073-byte records"), "{e}");
        write_bin(&d, "data_batch_3.bin", &[1, 10]);
        let e = load(t.path(), Variant::Cifar10, true, false).unwrap_err().to_string();
        assert!(e.contains("record 1 has label 10"), "{e}");
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[cfg(unix)]
    #[test]
    fn fifos_are_refused_by_name_instead_of_blocking() {
        // A batch, the meta file, and an archive: each a FIFO, each an error naming it (opening
        // one for reading would block until a writer comes, forever).
        let t = tempfile::tempdir().unwrap();
        let d = cifar10_bin(t.path());
        for name in ["data_batch_2.bin", "batches.meta.txt"] {
            let f = d.join(name);
            let keep = std::fs::read(&f).unwrap();
            std::fs::remove_file(&f).unwrap();
            mkfifo(&f);
            let e = load(t.path(), Variant::Cifar10, true, false).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("not a regular file"), "{e}");
            std::fs::remove_file(&f).unwrap();
            std::fs::write(&f, keep).unwrap();
        }
        let t = tempfile::tempdir().unwrap();
        mkfifo(&t.path().join("cifar-10-python.tar.gz"));
        let e = load(t.path(), Variant::Cifar10, true, false).unwrap_err().to_string();
        assert!(
            e.contains("cifar-10-python.tar.gz") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn an_archive_member_larger_than_cifar_is_refused_before_it_is_read() {
        // The header declares 2 GB (a 9 MB archive of zeros can); only its first bytes follow.
        let mut h = tar::Header::new_gnu();
        h.set_path("cifar-10-batches-py/data_batch_1").unwrap();
        h.set_size(2 << 30);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend([0u8; 4096]);
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("cifar-10-python.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let e = load(t.path(), Variant::Cifar10, true, false).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("data_batch_1") && e.contains("2.1 GB"), "{e}");
    }

    #[test]
    fn missing_data_says_what_to_look_for() {
        let t = tempfile::tempdir().unwrap();
        let e = load(t.path(), Variant::Cifar10, true, false).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }));
        assert!(e.to_string().contains("cifar-10-batches-py"), "{e}");
        let e = load(&t.path().join("nope"), Variant::Cifar10, true, false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
