//! MNIST and Fashion-MNIST (and any data set of the same four IDX files) as torchvision lays them
//! out: `root/<Folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each plain or gzipped.
//! The files may also sit directly in `root` (as Debian's `dataset-fashion-mnist` installs them).
//! Plain files are preferred to `.gz` ones when both exist (they are what torchvision reads, and
//! faster).
use std::path::{Path, PathBuf};

use super::idx::{self, Source};
use super::Dataset;
use crate::error::{Error, Result};

/// The image and label file names of one split, without `.gz`.
pub fn file_names(train: bool) -> [String; 2] {
    let split = if train { "train" } else { "t10k" };
    [
        format!("{split}-images-idx3-ubyte"),
        format!("{split}-labels-idx1-ubyte"),
    ]
}

/// `dir/name`, or `dir/name.gz`, whichever exists first.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.exists())
}

/// The image and label files of a split: from the first of `root/<folder>/raw` and `root` that
/// holds either of them (then it must hold both).
pub fn locate(root: &Path, folder: &str, train: bool) -> Result<(PathBuf, PathBuf)> {
    let [images, labels] = file_names(train);
    if !root.is_dir() {
        return Err(Error::not_found(
            root,
            format!("data folder does not exist (looking for {folder}/raw/{images})"),
        ));
    }
    for dir in [root.join(folder).join("raw"), root.to_path_buf()] {
        match (find(&dir, &images), find(&dir, &labels)) {
            (Some(i), Some(l)) => return Ok((i, l)),
            (None, None) => continue,
            (Some(_), None) => return Err(Error::not_found(dir.join(&labels), "no such file (nor .gz)")),
            (None, Some(_)) => return Err(Error::not_found(dir.join(&images), "no such file (nor .gz)")),
        }
    }
    Err(Error::not_found(
        root,
        format!(
            "no {folder} data found: expected {folder}/raw/{images} and {folder}/raw/{labels} (or their .gz) \
             under it, or those files in it (pass download=True to fetch them)"
        ),
    ))
}

/// Loads one split. Returns the data set and the folder its files came from.
pub fn load(root: &Path, folder: &str, train: bool, classes: Vec<String>) -> Result<(Dataset, PathBuf)> {
    let (images, labels) = locate(root, folder, train)?;
    let ds = decode(
        Source::open(&images)?,
        &images,
        Source::open(&labels)?,
        &labels,
        classes,
    )?;
    let dir = images.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((ds, dir))
}

/// Decodes an image file and its label file into a 1-channel data set.
pub fn decode(
    images: Source,
    images_path: &Path,
    labels: Source,
    labels_path: &Path,
    classes: Vec<String>,
) -> Result<Dataset> {
    let im = idx::read_images(images, images_path)?;
    let raw = idx::read_labels(labels, labels_path)?;
    if raw.len() != im.n {
        return Err(Error::format(
            labels_path,
            format!(
                "{} labels, but {} holds {} images",
                raw.len(),
                images_path.display(),
                im.n
            ),
        ));
    }
    if let Some((i, &l)) = raw.iter().enumerate().find(|(_, &l)| l as usize >= classes.len()) {
        return Err(Error::format(
            labels_path,
            format!("label {l} at index {i} is out of range for {} classes", classes.len()),
        ));
    }
    let mut labels = super::guard::vec_with_capacity(raw.len(), labels_path, "labels")?;
    labels.extend(raw.iter().map(|&l| i64::from(l)));
    Dataset::new(im.pixels, labels, classes, [1, im.h, im.w])
}

#[cfg(test)]
mod tests {
    use super::super::idx::tests::{gz, idx};
    use super::*;

    fn classes() -> Vec<String> {
        (0..10).map(|i| i.to_string()).collect()
    }

    #[test]
    fn torchvision_layout_flat_folder_and_gz_load() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("MNIST/raw");
        std::fs::create_dir_all(&raw).unwrap();
        let px: Vec<u8> = (0..3 * 4).map(|i| i as u8).collect();
        std::fs::write(raw.join("train-images-idx3-ubyte"), idx(&[3, 2, 2], &px)).unwrap();
        std::fs::write(raw.join("train-labels-idx1-ubyte.gz"), gz(&idx(&[3], &[9, 0, 4]))).unwrap();
        let (ds, dir) = load(t.path(), "MNIST", true, classes()).unwrap();
        assert_eq!((ds.len(), ds.shape, dir), (3, [1, 2, 2], raw.clone()));
        assert_eq!((ds.image(1), &ds.labels[..]), (&[4u8, 5, 6, 7][..], &[9, 0, 4][..]));
        // The test split is missing altogether; then only its labels.
        let e = load(t.path(), "MNIST", false, classes()).unwrap_err().to_string();
        assert!(e.contains("no MNIST data found") && e.contains("download=True"), "{e}");
        std::fs::write(raw.join("t10k-images-idx3-ubyte.gz"), gz(&idx(&[1, 2, 2], &px[..4]))).unwrap();
        let e = load(t.path(), "MNIST", false, classes()).unwrap_err().to_string();
        assert!(e.contains("t10k-labels-idx1-ubyte: no such file"), "{e}");
        // Files directly in the folder given.
        let (ds, _) = load(&raw, "FashionMNIST", true, classes()).unwrap();
        assert_eq!(ds.labels, vec![9, 0, 4]);
    }

    #[test]
    fn mismatched_counts_and_labels_out_of_range_are_named() {
        let im = || Source::bytes(idx(&[2, 1, 1], &[1, 2]));
        let (ip, lp) = (Path::new("img"), Path::new("lab"));
        let e = decode(im(), ip, Source::bytes(idx(&[3], &[0, 1, 2])), lp, classes()).unwrap_err();
        assert_eq!(e.to_string(), "lab: 3 labels, but img holds 2 images");
        let e = decode(im(), ip, Source::bytes(idx(&[2], &[0, 10])), lp, classes()).unwrap_err();
        assert!(e.to_string().contains("label 10 at index 1 is out of range"), "{e}");
        let e = decode(
            Source::bytes(idx(&[2, 0, 1], &[])),
            ip,
            Source::bytes(idx(&[2], &[0, 1])),
            lp,
            classes(),
        );
        assert!(e.unwrap_err().to_string().contains("empty"));
    }
}
