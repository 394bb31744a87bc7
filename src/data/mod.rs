//! Data sets in memory: one contiguous uint8 buffer of images in (N, C, H, W) order, the labels and
//! the class names. Every decoder ends here, and the loader reads only this.
//!
//! CHW is the order CIFAR stores and the order a batch tensor needs, so the CIFAR decoders copy whole
//! planes and the loader's fused pass reads rows. Python's `.data` (N, H, W, C) is a strided view of
//! this same buffer, as torchvision's is a transposed view of its own.
pub mod cifar;
pub mod folder;
pub mod pickle;

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
                format!("{} labels for {} images of shape {shape:?}", labels.len(), images.len() / (c * h * w)),
            ));
        }
        if classes.is_empty() {
            return Err(Error::invalid("classes", "no classes"));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= classes.len()) {
            return Err(Error::invalid(
                "labels",
                format!("label {l} at index {i} is out of range for {} classes", classes.len()),
            ));
        }
        Ok(Dataset { images, labels, classes, shape })
    }

    /// From images in (N, H, W, C) order, as numpy users and image decoders hold them.
    pub fn from_hwc(hwc: &[u8], n: usize, h: usize, w: usize, c: usize, labels: Vec<i64>, classes: Vec<String>) -> Result<Self> {
        if hwc.len() != n * h * w * c {
            return Err(Error::invalid("images", format!("{} bytes is not {n}x{h}x{w}x{c}", hwc.len())));
        }
        if labels.len() != n {
            return Err(Error::invalid("labels", format!("{} labels for {n} images", labels.len())));
        }
        let mut images = ImageBuf::zeroed(hwc.len());
        let per = h * w * c;
        if per > 0 {
            use rayon::prelude::*;
            images.par_chunks_mut(per).zip(hwc.par_chunks(per)).for_each(|(dst, src)| hwc_to_chw(src, dst, c));
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
            return Err(Error::invalid("indices", format!("index {bad} is out of range for {} images", self.len())));
        }
        let mut images = ImageBuf::zeroed(indices.len() * s);
        for (dst, &i) in images.chunks_exact_mut(s.max(1)).zip(indices) {
            dst.copy_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset { images, labels, classes: self.classes.clone(), shape: self.shape })
    }
}

/// The image bytes of a data set. Large buffers are fresh anonymous mappings, not `Vec`s: in a
/// process that has run torch, malloc tends to serve 150 MB from its heap and zero it by hand, and
/// heap pages miss transparent huge pages. A fresh mapping is zero already, and asking for huge
/// pages before the first write turns ~40,000 page faults per 150 MB into ~75 (3x faster decode).
pub enum ImageBuf {
    Heap(Vec<u8>),
    Mapped(memmap2::MmapMut),
}

impl ImageBuf {
    pub fn zeroed(len: usize) -> ImageBuf {
        if len >= 4 << 20 {
            if let Ok(m) = memmap2::MmapOptions::new().len(len).map_anon() {
                // Advice only: without THP the mapping still works, just with small pages.
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return ImageBuf::Mapped(m);
            }
        }
        ImageBuf::Heap(vec![0u8; len])
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
            ImageBuf::Mapped(m) => m,
        }
    }
}

impl std::ops::DerefMut for ImageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            ImageBuf::Heap(v) => v,
            ImageBuf::Mapped(m) => m,
        }
    }
}

impl Clone for ImageBuf {
    fn clone(&self) -> Self {
        let mut b = ImageBuf::zeroed(self.len());
        b.copy_from_slice(self);
        b
    }
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
}
