//! Separable bilinear resampling of uint8 planes, with PIL's antialiasing when shrinking (the
//! triangle filter widened by the scale factor), so results track torchvision's PIL `Resize`.

/// Per output coordinate: the first input coordinate and normalised weights of a fixed-width window.
#[derive(Debug, Clone)]
pub struct Weights {
    starts: Vec<usize>,
    taps: usize,
    w: Vec<f32>,
}

impl Weights {
    pub fn new(inp: usize, out: usize) -> Self {
        let scale = inp as f64 / out as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle's support is 1, widened when shrinking
        let taps = (support.ceil() as usize) * 2 + 1;
        let mut starts = Vec::with_capacity(out);
        let mut w = vec![0f32; out * taps];
        for i in 0..out {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(inp);
            let row = &mut w[i * taps..(i + 1) * taps];
            let mut total = 0.0;
            for (k, x) in (lo..hi).enumerate().take(taps) {
                let t = 1.0 - ((x as f64 - center + 0.5) / filter_scale).abs();
                let v = t.max(0.0);
                row[k] = v as f32;
                total += v;
            }
            if total > 0.0 {
                row.iter_mut().for_each(|v| *v = (*v as f64 / total) as f32);
            }
            starts.push(lo);
        }
        Weights { starts, taps, w }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    fn sample(&self, i: usize, line: impl Fn(usize) -> f32, limit: usize) -> f32 {
        let s = self.starts[i];
        let row = &self.w[i * self.taps..(i + 1) * self.taps];
        row.iter().enumerate().take_while(|(k, _)| s + k < limit).map(|(k, &wt)| wt * line(s + k)).sum()
    }
}

/// Resizes `src` (c x h x w) to (c x wy.len() x wx.len()); `tmp` is a reusable float buffer.
pub fn resize(src: &[u8], c: usize, (h, w): (usize, usize), wy: &Weights, wx: &Weights, tmp: &mut Vec<f32>, out: &mut [u8]) {
    let (oh, ow) = (wy.len(), wx.len());
    if tmp.len() < c * h * ow {
        tmp.resize(c * h * ow, 0.0);
    }
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let t = &mut tmp[ch * h * ow..(ch + 1) * h * ow];
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for x in 0..ow {
                t[y * ow + x] = wx.sample(x, |i| row[i] as f32, w);
            }
        }
        let o = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for y in 0..oh {
            for x in 0..ow {
                let v = wy.sample(y, |i| t[i * ow + x], h);
                o[y * ow + x] = v.round().clamp(0.0, 255.0) as u8;
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
        resize(&src, 3, (4, 4), &Weights::new(4, 9), &Weights::new(4, 7), &mut tmp, &mut out);
        assert!(out.iter().all(|&v| v == 77));
        // 1x2 -> 1x4: [0, 100] becomes [0, 25, 75, 100] (half-pixel centres, edge clamp).
        let mut out = vec![0u8; 4];
        resize(&[0, 100], 1, (1, 2), &Weights::new(1, 1), &Weights::new(2, 4), &mut tmp, &mut out);
        assert_eq!(out, [0, 25, 75, 100]);
    }
}
