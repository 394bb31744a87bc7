//! Data sets in memory: one contiguous uint8 buffer of images in (N, C, H, W) order, the labels and
//! the class names. Every decoder ends here, and the loader reads only this.
//!
//! CHW is the order CIFAR stores and the order a batch tensor needs, so the CIFAR decoders copy whole
//! planes and the loader's fused pass reads rows. Python's `.data` (N, H, W, C) is a strided view of
//! this same buffer, as torchvision's is a transposed view of its own.
pub mod cifar;
pub mod folder;
pub mod guard;
pub mod idx;
pub mod mapped;
pub mod mat;
pub mod mnist;
pub mod pickle;
pub mod svhn;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// N * C * H * W bytes, image after image, each in CHW order.
    pub images: ImageBuf,
    pub labels: Vec<i64>,
    pub classes: Vec<String>,
    /// (C, H, W) of every image.
    pub shape: [usize; 3],
}

impl Dataset {
    /// Checks the invariants every constructor must leave true: sizes agree, labels index a class.
    pub fn new(images: impl Into<ImageBuf>, labels: Vec<i64>, classes: Vec<String>, shape: [usize; 3]) -> Result<Self> {
        let images = images.into();
        let [c, h, w] = shape;
        if c != 1 && c != 3 {
            return Err(Error::invalid("images", format!("expected 1 or 3 channels, got {c}")));
        }
        if h == 0 || w == 0 {
            return Err(Error::invalid("images", format!("image size {h}x{w} is empty")));
        }
        if images.len() != labels.len() * c * h * w {
            return Err(Error::invalid(
                "labels",
                format!(
                    "{} labels for {} images of shape {shape:?}",
                    labels.len(),
                    images.len() / (c * h * w)
                ),
            ));
        }
        if classes.is_empty() {
            return Err(Error::invalid("classes", "no classes"));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l < 0 || l as usize >= classes.len())
        {
            return Err(Error::invalid(
                "labels",
                format!("label {l} at index {i} is out of range for {} classes", classes.len()),
            ));
        }
        Ok(Dataset {
            images,
            labels,
            classes,
            shape,
        })
    }

    /// From images in (N, H, W, C) order, as numpy users and image decoders hold them.
    pub fn from_hwc(
        hwc: &[u8],
        n: usize,
        h: usize,
        w: usize,
        c: usize,
        labels: Vec<i64>,
        classes: Vec<String>,
    ) -> Result<Self> {
        if hwc.len() != n * h * w * c {
            return Err(Error::invalid(
                "images",
                format!("{} bytes is not {n}x{h}x{w}x{c}", hwc.len()),
            ));
        }
        if labels.len() != n {
            return Err(Error::invalid(
                "labels",
                format!("{} labels for {n} images", labels.len()),
            ));
        }
        let mut images = ImageBuf::zeroed(hwc.len(), "images")?;
        let per = h * w * c;
        if per > 0 {
            use rayon::prelude::*;
            crate::pool::shared().install(|| {
                images
                    .par_chunks_mut(per)
                    .zip(hwc.par_chunks(per))
                    .for_each(|(dst, src)| hwc_to_chw(src, dst, c))
            })?;
        }
        Dataset::new(images, labels, classes, [c, h, w])
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The CHW bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.images[i * s..(i + 1) * s]
    }

    /// Images per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A new data set of the given indices (for subsets and splits).
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let s = self.image_size();
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid(
                "indices",
                format!("index {bad} is out of range for {} images", self.len()),
            ));
        }
        let bytes = indices
            .len()
            .checked_mul(s)
            .ok_or_else(|| Error::invalid("indices", "too many"))?;
        let mut images = ImageBuf::zeroed(bytes, "images")?;
        for (dst, &i) in images.chunks_exact_mut(s.max(1)).zip(indices) {
            dst.copy_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset {
            images,
            labels,
            classes: self.classes.clone(),
            shape: self.shape,
        })
    }
}

/// The image bytes of a data set. Large buffers are fresh anonymous mappings, not `Vec`s: in a
/// process that has run torch, malloc tends to serve 150 MB from its heap and zero it by hand, and
/// heap pages miss transparent huge pages. A fresh mapping is zero already, and asking for huge
/// pages before the first write turns ~40,000 page faults per 150 MB into ~75 (3x faster decode).
pub enum ImageBuf {
    Heap(Vec<u8>),
    Anon(memmap2::MmapMut),
    /// The files' own pages (`mmap=True`): see `mapped`.
    Files(mapped::FileImages),
}

impl ImageBuf {
    /// `len` zero bytes for `what` (named in the error). Fallible: the sizes come from files, so a
    /// failed allocation, or one larger than this machine's memory and swap (which would succeed
    /// under overcommit and then get the process killed as the pages are written), is
    /// `Error::OutOfMemory` (Python's MemoryError), never an abort.
    pub fn zeroed(len: usize, what: &str) -> Result<ImageBuf> {
        let oom = |reason: String| Error::OutOfMemory {
            what: what.to_string(),
            bytes: len,
            reason,
        };
        if let Some(total) = memory_and_swap() {
            if len as u64 > total {
                return Err(oom(format!(
                    "more than this machine's memory and swap ({})",
                    crate::error::human_bytes(total as usize)
                )));
            }
        }
        if len >= 4 << 20 {
            if let Ok(m) = memmap2::MmapOptions::new().len(len).map_anon() {
                // Advice only: without THP the mapping still works, just with small pages.
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return Ok(ImageBuf::Anon(m));
            }
        }
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|e| oom(e.to_string()))?;
        v.resize(len, 0);
        Ok(ImageBuf::Heap(v))
    }

    /// Whether the bytes are (mostly) the files' pages rather than a copy.
    pub fn is_file_backed(&self) -> bool {
        matches!(self, ImageBuf::Files(f) if f.mapped_bytes > 0)
    }
}

impl From<Vec<u8>> for ImageBuf {
    fn from(v: Vec<u8>) -> Self {
        ImageBuf::Heap(v)
    }
}

impl std::ops::Deref for ImageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ImageBuf::Heap(v) => v,
            ImageBuf::Anon(m) => m,
            ImageBuf::Files(f) => f,
        }
    }
}

impl std::ops::DerefMut for ImageBuf {
    /// File pages are read-only: the first mutable borrow swaps them for a private copy.
    fn deref_mut(&mut self) -> &mut [u8] {
        if matches!(self, ImageBuf::Files(_)) {
            *self = self.clone(); // `Clone` always copies into fresh memory
        }
        match self {
            ImageBuf::Heap(v) => v,
            ImageBuf::Anon(m) => m,
            ImageBuf::Files(_) => unreachable!("replaced by a copy above"),
        }
    }
}

impl Clone for ImageBuf {
    /// A copy of a buffer that exists already (its size was checked when it was made); `Clone`
    /// cannot fail, so an allocation failure here aborts as any Rust allocation does.
    fn clone(&self) -> Self {
        let anon = (self.len() >= 4 << 20)
            .then(|| memmap2::MmapOptions::new().len(self.len()).map_anon().ok())
            .flatten();
        let mut b = anon.map_or_else(|| ImageBuf::Heap(vec![0u8; self.len()]), ImageBuf::Anon);
        b.copy_from_slice(self);
        b
    }
}

/// Total memory plus swap, where the system says (Linux); None elsewhere.
fn memory_and_swap() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `sysinfo` only writes the struct it is given, which is plain data.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable sysinfo struct.
        if unsafe { libc::sysinfo(&mut info) } == 0 {
            let unit = u64::from(info.mem_unit.max(1));
            return Some((info.totalram as u64 + info.totalswap as u64).saturating_mul(unit));
        }
    }
    None
}

impl PartialEq for ImageBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for ImageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageBuf({} bytes)", self.len())
    }
}

/// One image from interleaved HWC to planar CHW.
pub fn hwc_to_chw(src: &[u8], dst: &mut [u8], c: usize) {
    let plane = src.len() / c;
    for (p, px) in src.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            dst[ch * plane + p] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwc_round_trip_and_validation() {
        // Two 1x2 RGB images.
        let hwc = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let d = Dataset::from_hwc(&hwc, 2, 1, 2, 3, vec![0, 1], vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(d.image(0), &[1, 4, 2, 5, 3, 6]);
        assert_eq!(d.class_counts(), vec![1, 1]);
        let e = Dataset::from_hwc(&hwc, 2, 1, 2, 3, vec![0, 2], vec!["a".into(), "b".into()]).unwrap_err();
        assert!(e.to_string().contains("label 2 at index 1"), "{e}");
        let e = Dataset::from_hwc(&hwc, 2, 1, 2, 3, vec![0], vec!["a".into()]).unwrap_err();
        assert!(e.to_string().starts_with("labels"), "{e}");
        assert_eq!(d.select(&[1]).unwrap().image(0), &[7, 10, 8, 11, 9, 12]);
        assert!(d.select(&[2]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn writing_file_pages_makes_a_private_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &body).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let seg = mapped::Segment {
            file: &file,
            offset: 0,
            bytes: &body,
        };
        let mut buf = ImageBuf::Files(mapped::FileImages::map(&[seg]).unwrap());
        assert!(buf.is_file_backed() && buf[..] == body[..]);
        buf[7] = 99; // would fault on the read-only pages; becomes a copy instead
        assert!(!buf.is_file_backed());
        assert_eq!((buf[7], buf[8]), (99, 8));
        assert_eq!(std::fs::read(&path).unwrap(), body, "the file is never written");
    }
}

/// Fuzzing of every decoder: random bytes, and random edits and truncations of valid files. Each
/// must return Ok or an Err, never panic, hang or allocate without bound. `PROPTEST_CASES=N` runs more.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn classes() -> Vec<String> {
        (0..10).map(|i| format!("c{i}")).collect()
    }

    /// Cases per property: the default here, or `PROPTEST_CASES` for a long run.
    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// A valid 3-record CIFAR-10 pickle, as Python 2 wrote them.
    fn valid_pickle() -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"U\x06labelsq\x01]q\x02(K\x01K\x02K\x03e");
        p.extend(b"U\x04dataq\x03cnumpy.core.multiarray\n_reconstruct\nq\x04cnumpy\nndarray\nq\x05K\x00\x85q\x06U\x01b\x87q\x07Rq\x08(K\x01K\x03M\x00\x0c\x86q\x09cnumpy\ndtype\nq\x0aU\x02u1K\x00K\x01\x87Rq\x0b(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T\x00\x24\x00\x00");
        p.extend(std::iter::repeat_n(7u8, 3 * 3072));
        p.extend(b"tbu.");
        p
    }

    fn valid_records() -> Vec<u8> {
        (0..3)
            .flat_map(|i| std::iter::once(i as u8).chain(std::iter::repeat_n(i as u8, 3072)))
            .collect()
    }

    fn valid_targz() -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let data = valid_records();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, "cifar-10-batches-bin/test_batch.bin", &data[..])
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    fn valid_png() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8, y as u8, 3]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn valid_jpeg() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 3]))
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    /// Random byte edits, then an optional truncation, of a valid file.
    fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let n = base.len();
        (prop::collection::vec((0..n, any::<u8>()), 1..8), 0..=n).prop_map(move |(edits, cut)| {
            let mut b = base.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b.truncate(cut.max(1));
            b
        })
    }

    fn check_pickle(bytes: &[u8]) {
        if let Ok(pk) = pickle::parse(bytes) {
            for key in ["data", "labels"] {
                if let Some(x) = pk.root().get(key) {
                    let _ = x.ndarray_u8();
                }
            }
        }
        let _ = cifar::decode_batch_bytes(bytes.to_vec(), true, classes());
    }

    fn valid_idx(gzip: bool) -> Vec<u8> {
        let file = idx::tests::idx(&[3, 4, 5], &[9u8; 60]);
        if gzip {
            idx::tests::gz(&file)
        } else {
            file
        }
    }

    fn check_idx(bytes: Vec<u8>) {
        let p = std::path::Path::new("fuzz");
        let _ = idx::read_images(idx::Source::bytes(bytes.clone()), p);
        let _ = idx::read_labels(idx::Source::bytes(bytes.clone()), p);
        let labels = idx::Source::bytes(idx::tests::idx(&[3], &[1, 2, 3]));
        let _ = mnist::decode(idx::Source::bytes(bytes), p, labels, p, classes());
    }

    fn check_archive(bytes: &[u8]) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let _ = cifar::read_archive(f.path(), &["test_batch.bin", "batches.meta.txt"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn pickle_random(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check_pickle(&bytes);
        }

        #[test]
        fn pickle_mutated(bytes in mutate(valid_pickle())) {
            check_pickle(&bytes);
        }

        #[test]
        fn records_random_and_mutated(bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..7000), mutate(valid_records())]) {
            let _ = cifar::decode_batch_bytes(bytes, false, classes());
        }

        #[test]
        fn idx_random_and_mutated(bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..128), mutate(valid_idx(false)), mutate(valid_idx(true))]) {
            check_idx(bytes);
        }

        #[test]
        fn mat_random_and_mutated(bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutate(svhn::tests::svhn(3, &[1, 10, 4], false)), mutate(svhn::tests::svhn(3, &[1, 10, 4], true))]) {
            let _ = svhn::decode(&bytes, std::path::Path::new("fuzz"), svhn::tests::classes());
        }

        #[test]
        fn images_mutated(bytes in prop_oneof![mutate(valid_png()), mutate(valid_jpeg()), prop::collection::vec(any::<u8>(), 0..256)]) {
            let limit = Some(folder::DEFAULT_MAX_PIXELS);
            let _ = folder::decode_bytes(std::path::Path::new("fuzz"), &bytes, None, limit);
            let _ = folder::decode_bytes(std::path::Path::new("fuzz"), &bytes, Some((4, 4)), limit);
        }
    }

    /// Counts the bytes each thread asks the allocator for, so that a property can bound what one
    /// call allocates (a 198-byte pickle of nested memo GETs once asked for gigabytes).
    struct Counting;

    thread_local! {
        static ASKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        /// While `asked_by` runs: the most this thread may ask for, so that a reader that blows up
        /// fails the property with "memory allocation of N bytes failed" instead of exhausting the
        /// machine.
        static CAP: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }

    /// Counts `n` bytes; false once the thread is past its cap (the allocation then fails).
    fn count(n: usize) -> bool {
        // `try_with`: the allocator also runs while thread-locals are torn down.
        ASKED
            .try_with(|c| {
                c.set(c.get().saturating_add(n));
                c.get() <= CAP.try_with(|m| m.get()).unwrap_or(usize::MAX)
            })
            .unwrap_or(true)
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only counts.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            if !count(layout.size()) {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller's contract for `alloc` is passed on unchanged.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            if !count(layout.size()) {
                return std::ptr::null_mut();
            }
            // SAFETY: as for `alloc`.
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from `System` through this wrapper, with this layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
            if !count(new_size) {
                return std::ptr::null_mut();
            }
            // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid for the layout's alignment.
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Bytes this thread asked for while `f` ran, which may ask for at most `cap`.
    fn asked_by(cap: usize, f: impl FnOnce()) -> usize {
        let before = ASKED.with(|c| c.get());
        CAP.with(|m| m.set(before.saturating_add(cap)));
        f();
        CAP.with(|m| m.set(usize::MAX));
        ASKED.with(|c| c.get()) - before
    }

    /// Pieces of pickles that make, share and grow values through the memo and the stack, and
    /// that decode text: what the size bounds are about. Each leaves a list on top of the stack
    /// (four lists are memoised first), so that sequences of them run long; a few raw opcodes mix
    /// errors in. DUP + APPEND, and a list of two GETs memoised again, double a value's logical
    /// size: a reader that copies on GET or DUP blows up within a few of them.
    fn memo_piece() -> impl Strategy<Value = Vec<u8>> {
        let key = || 0u8..4;
        let cat = |parts: &[&[u8]]| parts.concat();
        prop_oneof![
            4 => Just(b"2a".to_vec()),
            4 => key().prop_map(move |k| cat(&[b"(h", &[k], b"h", &[k], b"lq", &[k], b"a"])),
            2 => key().prop_map(move |k| cat(&[b"0h", &[k]])),
            2 => key().prop_map(move |k| cat(&[b"q", &[k]])),
            1 => key().prop_map(move |k| cat(&[b"0j", &(k as u32).to_le_bytes()])),
            1 => key().prop_map(move |k| cat(&[b"r", &(k as u32).to_le_bytes()])),
            1 => key().prop_map(move |k| cat(&[b"}U\x03keyh", &[k], b"sa"])),
            1 => key().prop_map(move |k| cat(&[b"h", &[k], b"\x85a"])),
            1 => Just(vec![0x94]),
            1 => Just(b"]".to_vec()),
            1 => Just(b"K\x07a".to_vec()),
            1 => Just(b"c_codecs\nencode\nX\x04\x00\x00\x00text\x8c\x06latin1\x86Ra".to_vec()),
            1 => Just(b"Vraw\\u00e9text\na".to_vec()),
            1 => Just(b"S'esc\\x41ped'\na".to_vec()),
            1 => Just(b"\x8c\x05numpy\x8c\x05dtype\x93)\x81N\x85ba".to_vec()),
            1 => prop::sample::select(b"]})(ltae2su0NRb\x86\x85\x93".to_vec()).prop_map(|c| vec![c]),
        ]
    }

    fn memo_pickle() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(memo_piece(), 1..120).prop_map(|pieces| {
            let mut p = b"\x80\x02]q\x00]q\x01]q\x02]q\x03".to_vec();
            p.extend(pieces.concat());
            p.push(b'.');
            p
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

        /// What a parse allocates is linear in the pickle's size, whatever it shares through the
        /// memo, DUPs or decodes; the values it returns can be read without walking shared parts again.
        #[test]
        fn pickle_memo_and_sizes_stay_bounded(bytes in memo_pickle()) {
            let asked = asked_by(256 << 20, || {
                if let Ok(pk) = pickle::parse(&bytes) {
                    let root = pk.root();
                    let _ = (root.get("key"), root.ndarray_u8(), root.items().map(|i| i.len()));
                }
            });
            prop_assert!(asked <= 256 * bytes.len() + (64 << 10), "{asked} bytes asked for by a {}-byte pickle", bytes.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(300), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn archives_mutated(bytes in prop_oneof![mutate(valid_targz()), prop::collection::vec(any::<u8>(), 0..512)]) {
            check_archive(&bytes);
        }
    }

    #[test]
    fn seeds_are_valid() {
        check_pickle(&valid_pickle());
        let ds = cifar::decode_batch_bytes(valid_pickle(), true, classes()).unwrap();
        assert_eq!(ds.labels, vec![1, 2, 3]);
        assert_eq!(
            cifar::decode_batch_bytes(valid_records(), false, classes())
                .unwrap()
                .len(),
            3
        );
        assert!(folder::decode_bytes(std::path::Path::new("p"), &valid_png(), None, None).is_ok());
        for gzip in [false, true] {
            let im = idx::read_images(idx::Source::bytes(valid_idx(gzip)), std::path::Path::new("i")).unwrap();
            assert_eq!((im.n, im.h, im.w), (3, 4, 5));
            let mat = svhn::tests::svhn(3, &[1, 10, 4], gzip);
            let ds = svhn::decode(&mat, std::path::Path::new("m"), svhn::tests::classes()).unwrap();
            assert_eq!(ds.labels, vec![1, 0, 4]);
        }
        assert!(folder::decode_bytes(std::path::Path::new("j"), &valid_jpeg(), None, None).is_ok());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&valid_targz()).unwrap();
        assert_eq!(cifar::read_archive(f.path(), &["test_batch.bin"]).unwrap().len(), 1);
    }
}
