//! Image bytes that stay in the page cache: runs of bytes inside files, laid end to end in one
//! address range by mapping the files' pages there (private, read-only), with no copy.
//!
//! Why: copying CIFAR's 150 MB means touching 150 MB of fresh memory, and the kernel zeroes every
//! fresh page first. On a VM that costs more than the copy itself and varies run to run. Mapping the
//! page cache costs only page-table entries, and every process that maps the same files shares
//! one copy of the pages (torchrun ranks, notebook restarts).
//!
//! A file page can only sit at an address with the same offset within its page, so a run is mapped
//! when its file offset and its place in the range agree modulo the page size (CIFAR's pickle
//! batches all put their pixels at the same offset, so all five agree). Whatever cannot be mapped
//! (the page where one run ends and the next begins, a run that does not agree) is copied into
//! anonymous pages of the same range.
//!
//! The caveat is numpy.memmap's and torch.load(mmap=True)'s: the files must not be truncated or
//! rewritten in place while the range is alive (a truncated page raises SIGBUS when read).
use std::fs::File;
use std::io;

/// A run of bytes inside `file`, starting at `offset`; `bytes` is the same run as already read or
/// mapped, for the parts that get copied.
pub struct Segment<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub bytes: &'a [u8],
}

/// The segments' bytes, end to end, read-only.
pub struct FileImages {
    /// Start of the reserved range (page-aligned) and its length.
    base: *mut u8,
    reserved: usize,
    /// Where the bytes start within the range, and how many there are.
    start: usize,
    len: usize,
    /// Bytes that are file pages rather than copies.
    pub mapped_bytes: usize,
}

// SAFETY: the range is never written after `map` returns, and unmapped only on drop.
unsafe impl Send for FileImages {}
// SAFETY: as for Send: after `map` the range is read-only, so shared references may cross threads.
unsafe impl Sync for FileImages {}

impl std::ops::Deref for FileImages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: [base + start, + len) lies in the reserved range, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.base.add(self.start), self.len) }
    }
}

#[cfg(unix)]
impl Drop for FileImages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range reserved in `map`; nothing borrows it any more.
        unsafe { libc::munmap(self.base.cast(), self.reserved) };
    }
}

#[cfg(not(unix))]
impl FileImages {
    pub fn map(_segments: &[Segment<'_>]) -> io::Result<FileImages> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "file mappings at fixed addresses need a unix system",
        ))
    }
}

#[cfg(unix)]
impl FileImages {
    pub fn map(segments: &[Segment<'_>]) -> io::Result<FileImages> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len: usize = segments.iter().map(|s| s.bytes.len()).sum();
        let start = segments.first().map_or(0, |s| s.offset as usize % page);
        let reserved = (start + len).div_ceil(page).max(1) * page;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // From here on, dropping `out` unmaps the whole range, whatever fails.
        let mut out = FileImages {
            base: base.cast(),
            reserved,
            start,
            len,
            mapped_bytes: 0,
        };
        let (first, last) = (0, segments.len().saturating_sub(1));
        let mut at = start; // where segment k starts, relative to base
        let mut file_ranges = Vec::new();
        for (k, s) in segments.iter().enumerate() {
            let end = at + s.bytes.len();
            // Whole pages only, except at the range's two ends, where the bytes outside the
            // segments are never read and may be whatever the file holds there.
            let lo = if k == first {
                at / page * page
            } else {
                at.div_ceil(page) * page
            };
            let hi = if k == last {
                end.div_ceil(page) * page
            } else {
                end / page * page
            };
            let agrees = (s.offset as usize) % page == at % page;
            // The part of the segment that becomes file pages; the rest, before and after, is copied.
            let (mut m_lo, mut m_hi) = (end, end);
            if agrees && hi > lo {
                let file_off = s.offset as i64 - (at as i64 - lo as i64);
                // SAFETY: [base + lo, base + hi) lies inside the reserved range (hi <= reserved),
                // which MAP_FIXED replaces; the file offset is page-aligned and not negative.
                let p = unsafe {
                    libc::mmap(
                        out.base.add(lo).cast(),
                        hi - lo,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_FIXED,
                        s.file.as_raw_fd(),
                        file_off as libc::off_t,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(io::Error::last_os_error());
                }
                file_ranges.push((lo, hi));
                (m_lo, m_hi) = (lo.max(at), hi.min(end));
            }
            out.mapped_bytes += m_hi - m_lo;
            for r in [at..m_lo, m_hi..end] {
                if !r.is_empty() {
                    // SAFETY: the destination is anonymous, writable and inside the range; the
                    // source is the caller's slice of the same bytes.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.base.add(r.start), r.len()) };
                    dst.copy_from_slice(&s.bytes[r.start - at..r.end - at]);
                }
            }
            at = end;
        }
        populate(out.base, page, &file_ranges)?;
        Ok(out)
    }
}

/// Fills in the page-table entries now, in parallel, so that the first epoch does not take the
/// faults one 64 KB window at a time (and a cold page cache is read here, not mid-training).
#[cfg(unix)]
fn populate(base: *mut u8, page: usize, ranges: &[(usize, usize)]) -> io::Result<()> {
    use rayon::prelude::*;
    let base = base as usize;
    let run = || {
        ranges.par_iter().try_for_each(|&(lo, hi)| {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                // SAFETY: advice on a range this process mapped; POPULATE_READ does not change contents.
                if unsafe { libc::madvise((base + lo) as *mut libc::c_void, hi - lo, libc::MADV_POPULATE_READ) } == 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e); // an I/O error reading the file: let the caller copy instead
                }
            }
            // Kernels before 5.14: read one byte per page.
            for p in (lo..hi).step_by(page) {
                // SAFETY: inside a readable mapping of a file that covers it.
                unsafe { std::ptr::read_volatile((base + p) as *const u8) };
            }
            Ok(())
        })
    };
    crate::pool::shared()
        .install(run)
        .map_err(|e| io::Error::other(e.to_string()))?
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `pad` header bytes, then `body`, then a tail.
    fn file_with(dir: &std::path::Path, name: &str, pad: usize, body: &[u8]) -> File {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xEE; pad]).unwrap();
        f.write_all(body).unwrap();
        f.write_all(b"tail").unwrap();
        File::open(&path).unwrap()
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn segments_read_back_in_order_whether_mapped_or_copied() {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let dir = tempfile::tempdir().unwrap();
        // (header, body): agreeing offsets with whole-page bodies map; the rest is copied.
        let cases: &[&[(usize, usize)]] = &[
            &[(100, 10 * page), (100, 10 * page), (100, 3 * page + 5)],
            &[(0, 5 * page), (0, 5 * page)],
            &[(100, 7 * page), (300, 7 * page)], // the second does not agree: copied
            &[(10, 50)],                         // less than a page
            &[(10, 50), (20, 3 * page)],
        ];
        for (c, segs) in cases.iter().enumerate() {
            let bodies: Vec<Vec<u8>> = segs
                .iter()
                .enumerate()
                .map(|(i, &(_, n))| pattern(n, i as u8))
                .collect();
            let files: Vec<File> = segs
                .iter()
                .zip(&bodies)
                .enumerate()
                .map(|(i, (&(pad, _), b))| file_with(dir.path(), &format!("{c}-{i}"), pad, b))
                .collect();
            let segments: Vec<Segment<'_>> = segs
                .iter()
                .zip(&bodies)
                .zip(&files)
                .map(|((&(pad, _), b), f)| Segment {
                    file: f,
                    offset: pad as u64,
                    bytes: b,
                })
                .collect();
            let m = FileImages::map(&segments).unwrap();
            assert_eq!(&m[..], &bodies.concat()[..], "case {c}");
            if c == 0 {
                // All but the two junction pages are the files' own.
                assert!(
                    m.mapped_bytes >= m.len() - 2 * page,
                    "case {c}: {} of {}",
                    m.mapped_bytes,
                    m.len()
                );
            }
            if c == 2 {
                assert!(m.mapped_bytes <= 7 * page, "the misaligned segment must be copied");
            }
        }
    }

    #[test]
    fn no_segments_is_empty() {
        assert!(FileImages::map(&[]).unwrap().is_empty());
    }
}
