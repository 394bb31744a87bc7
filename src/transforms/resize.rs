//! Separable bilinear resampling of uint8 planes that gives Pillow's pixels exactly, because
//! torchvision resizes PIL images with Pillow: the triangle filter widened by the scale factor when
//! shrinking (antialiasing), coefficients rounded to 22-bit fixed point, and two passes each
//! rounded back to uint8. Pillow (13) runs the horizontal pass first, except when the height
//! shrinks by more than twice what the width shrinks (`vertical_first`); as each pass rounds, the
//! order changes pixels, so it is followed here.

/// Fixed-point bits of a coefficient (Pillow's 8-bit precision).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output coordinate: the first input coordinate, how many taps, and fixed-point weights.
#[derive(Debug, Clone)]
pub struct Weights {
    inp: usize,
    starts: Vec<usize>,
    counts: Vec<usize>,
    taps: usize,
    k: Vec<i32>,
}

impl Weights {
    pub fn new(inp: usize, out: usize) -> Self {
        let scale = inp as f64 / out as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle's support is 1, widened when shrinking
        let taps = (support.ceil() as usize) * 2 + 1;
        let (mut starts, mut counts) = (Vec::with_capacity(out), Vec::with_capacity(out));
        let mut k = vec![0i32; out * taps];
        let mut row = vec![0f64; taps];
        for i in 0..out {
            let center = (i as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; the bounds are then clamped to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, inp as i64) as usize;
            let n = hi.saturating_sub(lo).min(taps);
            let mut total = 0.0;
            for (x, r) in row.iter_mut().enumerate().take(n) {
                let t = (((x + lo) as f64 - center + 0.5) / filter_scale).abs();
                *r = if t < 1.0 { 1.0 - t } else { 0.0 };
                total += *r;
            }
            for (x, r) in row.iter().enumerate().take(n) {
                let v = if total != 0.0 { r / total } else { *r };
                let f = v * (1u32 << PRECISION_BITS) as f64;
                k[i * taps + x] = if v < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 };
            }
            starts.push(lo);
            counts.push(n);
        }
        Weights {
            inp,
            starts,
            counts,
            taps,
            k,
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Pillow skips a pass whose size does not change.
    fn identity(&self) -> bool {
        self.inp == self.len()
    }

    /// Output `i` from the input line `line(x)`, rounded and clamped as Pillow's clip8.
    #[inline(always)]
    fn sample(&self, i: usize, line: impl Fn(usize) -> u8) -> u8 {
        let s = self.starts[i];
        let k = &self.k[i * self.taps..i * self.taps + self.counts[i]];
        let mut acc: i32 = 1 << (PRECISION_BITS - 1);
        for (x, &kv) in k.iter().enumerate() {
            acc += line(s + x) as i32 * kv;
        }
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }
}

/// Whether Pillow runs the vertical pass first for a box of `bh` x `bw` resized to `oh` x `ow`: when
/// the height shrinks, by more rows than twice the columns the width loses (a width that grows
/// loses a negative number). Found by comparing both orders with Pillow 13's own output over every
/// size pair up to 60x90 and 116 exact ties (tests/test_loader.py checks it against Pillow).
pub fn vertical_first((bh, bw): (usize, usize), (oh, ow): (usize, usize)) -> bool {
    oh < bh && (bh - oh) as i64 > 2 * (bw as i64 - ow as i64)
}

/// Resizes the box at `(y0, x0)` of size (wy's input x wx's input) of `src` (c x h x w) to
/// (c x wy.len() x wx.len()); `tmp` is a reusable buffer for the horizontal pass.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site, a hot loop: a struct would only rename the arguments"
)]
pub fn resize(
    src: &[u8],
    c: usize,
    (h, w): (usize, usize),
    (y0, x0): (usize, usize),
    wy: &Weights,
    wx: &Weights,
    tmp: &mut Vec<u8>,
    out: &mut [u8],
) {
    let (oh, ow) = (wy.len(), wx.len());
    let (bh, bw) = (wy.inp, wx.inp);
    debug_assert!(y0 + bh <= h && x0 + bw <= w);
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let o = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        let at = |y: usize, x: usize| plane[(y0 + y) * w + x0 + x];
        match (wx.identity(), wy.identity()) {
            (true, true) => {
                for y in 0..oh {
                    for x in 0..ow {
                        o[y * ow + x] = at(y, x);
                    }
                }
            }
            (true, false) => {
                for y in 0..oh {
                    for x in 0..ow {
                        o[y * ow + x] = wy.sample(y, |yy| at(yy, x));
                    }
                }
            }
            (false, true) => {
                for y in 0..oh {
                    for x in 0..ow {
                        o[y * ow + x] = wx.sample(x, |xx| at(y, xx));
                    }
                }
            }
            (false, false) if vertical_first((bh, bw), (oh, ow)) => {
                // Only the columns the horizontal pass reads (same values either way).
                let first = wx.starts[0];
                let cols = wx.starts[ow - 1] + wx.counts[ow - 1] - first;
                if tmp.len() < oh * cols {
                    tmp.resize(oh * cols, 0);
                }
                for y in 0..oh {
                    for c in 0..cols {
                        tmp[y * cols + c] = wy.sample(y, |yy| at(yy, first + c));
                    }
                }
                for y in 0..oh {
                    for x in 0..ow {
                        o[y * ow + x] = wx.sample(x, |xx| tmp[y * cols + xx - first]);
                    }
                }
            }
            (false, false) => {
                // Only the rows the vertical pass reads, as Pillow does (same values either way).
                let first = wy.starts[0];
                let rows = wy.starts[oh - 1] + wy.counts[oh - 1] - first;
                if tmp.len() < rows * ow {
                    tmp.resize(rows * ow, 0);
                }
                for r in 0..rows {
                    for x in 0..ow {
                        tmp[r * ow + x] = wx.sample(x, |xx| at(first + r, xx));
                    }
                }
                for y in 0..oh {
                    for x in 0..ow {
                        o[y * ow + x] = wy.sample(y, |yy| tmp[(yy - first) * ow + x]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_stays_constant_and_upscale_interpolates() {
        let src = vec![77u8; 3 * 4 * 4];
        let mut tmp = Vec::new();
        let mut out = vec![0u8; 3 * 9 * 7];
        resize(
            &src,
            3,
            (4, 4),
            (0, 0),
            &Weights::new(4, 9),
            &Weights::new(4, 7),
            &mut tmp,
            &mut out,
        );
        assert!(out.iter().all(|&v| v == 77));
        // 1x2 -> 1x4: [0, 100] becomes [0, 25, 75, 100] (half-pixel centres, edge clamp).
        let mut out = vec![0u8; 4];
        resize(
            &[0, 100],
            1,
            (1, 2),
            (0, 0),
            &Weights::new(1, 1),
            &Weights::new(2, 4),
            &mut tmp,
            &mut out,
        );
        assert_eq!(out, [0, 25, 75, 100]);
        // A box: the right half of [0, 100, 200, 250] doubled.
        let mut out = vec![0u8; 4];
        resize(
            &[0, 100, 200, 250],
            1,
            (1, 4),
            (0, 2),
            &Weights::new(1, 1),
            &Weights::new(2, 4),
            &mut tmp,
            &mut out,
        );
        assert_eq!(out, [200, 213, 238, 250]);
    }

    #[test]
    fn the_pass_order_is_pillows() {
        // The rule's two sides, and the sizes issue 23 found off by one level (Pillow 13 runs them
        // vertical first); the pixel-for-pixel comparison with Pillow is in tests/test_loader.py.
        for out in [(17, 45), (20, 40), (24, 48), (31, 33), (19, 31)] {
            assert!(vertical_first((32, 32), out), "{out:?}");
        }
        for out in [(16, 16), (40, 20), (48, 48), (30, 31), (4, 9)] {
            assert!(!vertical_first((32, 32), out), "{out:?}");
        }
        // Both orders on a box: a vertical edge [0, 255] stays a clean edge column by column.
        let src: Vec<u8> = (0..32 * 32).map(|i| if i % 32 < 16 { 0 } else { 255 }).collect();
        let mut out = vec![0u8; 17 * 45];
        let mut tmp = Vec::new();
        resize(
            &src,
            1,
            (32, 32),
            (0, 0),
            &Weights::new(32, 17),
            &Weights::new(32, 45),
            &mut tmp,
            &mut out,
        );
        assert!(out.chunks(45).all(|row| row == &out[..45]), "rows differ");
    }
}
