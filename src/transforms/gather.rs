//! The per-sample kernels: a sample's row map and column runs gathered as bytes (slice copies and
//! fills, with a fixed-width fast path for the shifted rows of RandomCrop + flip on 32-wide
//! images), then converted plane by plane into the output. Everything here runs once per image,
//! so it is written for the compiler to vectorise and never allocates.
use smallvec::SmallVec;

use super::convert::{Conv, Element};

/// A stretch of output columns: either a fill value or a contiguous source run (forwards or
/// backwards). Crops and flips give at most three per row, so rows copy as slices.
#[derive(Debug, Clone, Copy)]
pub(super) enum Run {
    Fill { len: usize, marker: i32 },
    Copy { len: usize, src: usize, reverse: bool },
}

pub(super) fn runs_of(xmap: &[i32], out: &mut Vec<Run>) {
    out.clear();
    let mut i = 0;
    while i < xmap.len() {
        let v = xmap[i];
        let mut j = i + 1;
        if v < 0 {
            while j < xmap.len() && xmap[j] == v {
                j += 1;
            }
            out.push(Run::Fill { len: j - i, marker: v });
        } else {
            let step = if j < xmap.len() && xmap[j] == v - 1 { -1 } else { 1 };
            while j < xmap.len() && xmap[j] == xmap[j - 1] + step && xmap[j] >= 0 {
                j += 1;
            }
            let len = j - i;
            let reverse = step == -1;
            out.push(Run::Copy {
                len,
                src: if reverse { v as usize + 1 - len } else { v as usize },
                reverse,
            });
        }
        i = j;
    }
}

/// What one final (or pre-Resize) write reads: the source image and this sample's maps.
pub(super) struct MapArgs<'a> {
    pub(super) src: &'a [u8],
    pub(super) c: usize,
    pub(super) hw: (usize, usize),
    pub(super) ymap: &'a [i32],
    pub(super) runs: &'a [Run],
    pub(super) fills: &'a [Vec<u8>],
}

/// Writes a C x |ymap| x (sum of run lengths) image from `src` (C x h x w) through the row map,
/// the column runs and the channel's float conversion. Rows are slice copies, which the compiler
/// vectorises; on CPUs with AVX2 and FMA the same code is compiled 8 lanes wide (the fused
/// multiply-adds are the exact-division steps of `div_exact`, checked bit for bit in `Conv::new`).
pub(super) fn write_mapped<T: Element>(m: &MapArgs<'_>, bytes: &mut Vec<u8>, dst: &mut [T], convs: &[Conv]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { write_mapped_avx2(m, bytes, dst, convs) };
    }
    write_mapped_impl::<T, false>(m, bytes, dst, convs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn write_mapped_avx2<T: Element>(m: &MapArgs<'_>, bytes: &mut Vec<u8>, dst: &mut [T], convs: &[Conv]) {
    write_mapped_impl::<T, true>(m, bytes, dst, convs)
}

#[inline(always)]
fn write_mapped_impl<T: Element, const FMA: bool>(m: &MapArgs<'_>, bytes: &mut Vec<u8>, dst: &mut [T], convs: &[Conv]) {
    let MapArgs {
        c,
        hw: (_, w),
        ymap,
        runs,
        ..
    } = *m;
    let ow: usize = runs
        .iter()
        .map(|r| match r {
            Run::Fill { len, .. } | Run::Copy { len, .. } => *len,
        })
        .sum();
    let oh = ymap.len();
    let n = oh * ow;
    // 1. Gather the sample's bytes: runs are short copies / fills, so this is cheap and branch-light.
    bytes.resize(c * n, 0);
    if let Some(shift) = shifted_rows::<32>(w, runs) {
        gather_shifted::<32>(m, shift, bytes);
    } else {
        gather_runs(m, ow, bytes);
    }
    // 2. Convert whole planes in one uniform loop (no short runs, no tails for 32x32 images).
    for ch in 0..c {
        T::convert::<FMA>(&mut dst[ch * n..(ch + 1) * n], &bytes[ch * n..(ch + 1) * n], &convs[ch]);
    }
}

/// A row layout where every valid row is the source row shifted by `offset` columns (mirrored
/// when `reverse`), padded with one fill value: what RandomCrop(W, padding) and a flip give.
#[derive(Clone, Copy)]
pub(super) struct Shift {
    offset: isize,
    reverse: bool,
    fill: Option<i32>,
}

/// Length of the padded row buffer of the fast path.
const EXT: usize = 192;

/// Recognises that layout for rows of exactly `W` columns read from `W`-wide images.
pub(super) fn shifted_rows<const W: usize>(w: usize, runs: &[Run]) -> Option<Shift> {
    if w != W {
        return None;
    }
    let mut fill = None;
    let (mut x, mut copy) = (0usize, None);
    for r in runs {
        match *r {
            Run::Fill { len, marker } => {
                if fill.is_some_and(|f| f != marker) {
                    return None;
                }
                fill = Some(marker);
                x += len;
            }
            Run::Copy { len, src, reverse } => {
                if copy.is_some() {
                    return None;
                }
                copy = Some((x, len, src, reverse));
                x += len;
            }
        }
    }
    let (x0, len, src, reverse) = copy?;
    if x != W {
        return None;
    }
    // Output column x0 + j reads source src + j (or src + len - 1 - j when mirrored).
    let offset = if reverse {
        (src + len - 1) as isize + x0 as isize
    } else {
        src as isize - x0 as isize
    };
    // The copy must cover everything the shift can reach inside the source.
    let inside = |xo: isize| {
        let s = if reverse { offset - xo } else { xo + offset };
        (0..W as isize).contains(&s)
    };
    let covered = (0..W as isize).filter(|&xo| inside(xo)).count();
    // The window read from the padded row buffer (see gather_shifted) must lie inside it.
    let start = if reverse { offset + 1 } else { W as isize + offset };
    if covered != len || start < 0 || start as usize + W > EXT {
        return None;
    }
    Some(Shift { offset, reverse, fill })
}

/// The fast gather for `Shift` layouts: fixed-size row moves through a padded row buffer.
#[inline(always)]
pub(super) fn gather_shifted<const W: usize>(m: &MapArgs<'_>, sh: Shift, bytes: &mut [u8]) {
    let MapArgs {
        src,
        c,
        hw: (h, w),
        ymap,
        fills,
        ..
    } = *m;
    let oh = ymap.len();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let fill_of = |k: i32| fills[(-k - 1) as usize][ch];
        let fv = sh.fill.map_or(0, fill_of);
        // [W fill][source row][fill...]: a shifted window is one fixed-size copy.
        let mut ext = [fv; EXT];
        for (y, &sy) in ymap.iter().enumerate() {
            let row: &mut [u8; W] = (&mut bytes[(ch * oh + y) * W..][..W]).try_into().expect("a slice of W");
            if sy < 0 {
                match sh.fill {
                    Some(f) if f != sy => {
                        // Pads from two different ops: where the columns are padded too, the later
                        // pad (the smaller marker) is the visible one.
                        for (xo, o) in row.iter_mut().enumerate() {
                            let s = if sh.reverse {
                                sh.offset - xo as isize
                            } else {
                                xo as isize + sh.offset
                            };
                            *o = fill_of(if (0..W as isize).contains(&s) { sy } else { sy.min(f) });
                        }
                    }
                    _ => *row = [fill_of(sy); W],
                }
                continue;
            }
            let srow: &[u8; W] = plane[sy as usize * W..][..W].try_into().expect("a slice of W");
            ext[W..2 * W].copy_from_slice(srow);
            if sh.reverse {
                // out[x] = src[offset - x] = ext[W + offset - x]: reverse the window ending there.
                let start = (W as isize + sh.offset - (W as isize - 1)) as usize;
                let mut win: [u8; W] = ext[start..start + W].try_into().expect("a slice of W");
                win.reverse();
                *row = win;
            } else {
                let start = (W as isize + sh.offset) as usize;
                *row = ext[start..start + W].try_into().expect("a slice of W");
            }
        }
    }
}

/// The general gather: any run layout, any width.
#[inline(always)]
pub(super) fn gather_runs(m: &MapArgs<'_>, ow: usize, bytes: &mut [u8]) {
    let MapArgs {
        src,
        c,
        hw: (h, w),
        ymap,
        runs,
        fills,
    } = *m;
    let oh = ymap.len();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let fill_of = |k: i32| fills[(-k - 1) as usize][ch];
        // The fill byte of each Fill run, looked up once per channel rather than once per row.
        let run_fill: SmallFills = runs
            .iter()
            .map(|r| {
                if let Run::Fill { marker, .. } = r {
                    fill_of(*marker)
                } else {
                    0
                }
            })
            .collect();
        for (y, &sy) in ymap.iter().enumerate() {
            let row = &mut bytes[(ch * oh + y) * ow..][..ow];
            if sy < 0 {
                // A padded row; where a later column pad overlaps, the later pad is the visible one.
                let mut x = 0;
                for run in runs {
                    let (len, k) = match *run {
                        Run::Fill { len, marker } => (len, sy.min(marker)),
                        Run::Copy { len, .. } => (len, sy),
                    };
                    fill_small(&mut row[x..x + len], fill_of(k));
                    x += len;
                }
                continue;
            }
            let srow = &plane[sy as usize * w..][..w];
            let mut x = 0;
            for (run, &fv) in runs.iter().zip(run_fill.iter()) {
                match *run {
                    Run::Fill { len, .. } => {
                        fill_small(&mut row[x..x + len], fv);
                        x += len;
                    }
                    Run::Copy { len, src: s0, reverse } => {
                        copy_small(&mut row[x..x + len], &srow[s0..s0 + len], reverse);
                        x += len;
                    }
                }
            }
        }
    }
}

/// Asks the CPU to start loading `bytes` into cache (a hint: no effect on results).
#[inline(always)]
pub(super) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch hint on memory we own; it never faults.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr() as *const i8, std::arch::x86_64::_MM_HINT_T0) };
    }
}

/// Fill bytes per run; a row rarely has more than three runs, so this stays on the stack (up to 8
/// inline; more, from reflect padding of narrow images, go to the heap).
type SmallFills = SmallVec<[u8; 8]>;

/// `dst.copy_from_slice(src)` (reversed if asked) for the short row pieces of small images, in
/// 16-byte chunks with an overlapping tail. Calling libc's memcpy ~300 times per 32x32 image cost
/// more than the copying itself.
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8], reverse: bool) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    if n < 16 {
        for i in 0..n {
            dst[i] = src[if reverse { n - 1 - i } else { i }];
        }
        return;
    }
    let chunk = |i: usize| -> [u8; 16] {
        if reverse {
            let mut a: [u8; 16] = src[n - i - 16..n - i].try_into().expect("a slice of 16");
            a.reverse();
            a
        } else {
            src[i..i + 16].try_into().expect("a slice of 16")
        }
    };
    let mut i = 0;
    while i + 16 <= n {
        dst[i..i + 16].copy_from_slice(&chunk(i));
        i += 16;
    }
    if i < n {
        dst[n - 16..].copy_from_slice(&chunk(n - 16));
    }
}

#[inline(always)]
fn fill_small(dst: &mut [u8], v: u8) {
    let n = dst.len();
    if n < 16 {
        for d in dst {
            *d = v;
        }
        return;
    }
    let mut i = 0;
    while i + 16 <= n {
        dst[i..i + 16].copy_from_slice(&[v; 16]);
        i += 16;
    }
    if i < n {
        dst[n - 16..].copy_from_slice(&[v; 16]);
    }
}
