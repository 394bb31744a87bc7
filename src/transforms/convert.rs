//! Bytes to output elements: torchvision's own float32 steps (ToTensor's `x / 255`, v2's
//! `x * (1 / 255)`, Normalize's `(x - mean) / std`), as a 256-entry table per channel and, where it
//! gives the same bits, a vectorisable closed form. Kept apart from the gather so that the
//! arithmetic that must match torch bit for bit lives in one place.

/// One float step after ToTensor, in torchvision's own float32 arithmetic.
#[derive(Debug, Clone)]
pub(super) enum FloatStep {
    /// `x / 255` (ToTensor).
    Div255,
    /// `x * float32(1 / 255)` (v2's ToDtype with scale=True).
    Mul255,
    /// `(x - mean) / std` per channel (Normalize).
    Normalize { mean: Vec<f32>, std: Vec<f32> },
}

/// 1 / 255 rounded to float32.
const R255: f32 = 1.0 / 255.0;

/// `a / d` from the reciprocal `r` = RN(1 / d): a multiply, then one fused multiply-add step on
/// the remainder (Markstein), which gives the correctly rounded quotient for these operands.
/// `Conv::new` checks that claim on all 256 inputs before the fused pass relies on it.
#[inline(always)]
fn div_exact(a: f32, d: f32, r: f32) -> f32 {
    let q = a * r;
    (-q).mul_add(d, a).mul_add(r, q)
}

/// How one channel's bytes become output floats. Always torchvision's own float32 results, in its
/// order (`x / 255`, then `(x - mean) / std`), so the output is bit-identical to it; the table
/// holds those 256 results. `Fast` computes the same values with vectorised multiply-adds where
/// the CPU has FMA: a table lookup per byte made the fused pass about 20% slower, two true
/// divisions about 40%.
#[derive(Debug, Clone)]
pub enum Conv {
    /// `ToTensor` (`norm: None`) or `ToTensor` + `Normalize` (mean, std, RN(1 / std)).
    /// `mul`: the first step is v2's `x * (1 / 255)` rather than `x / 255`.
    Fast {
        mul: bool,
        norm: Option<(f32, f32, f32)>,
        table: Box<[f32; 256]>,
    },
    Table(Box<[f32; 256]>),
}

impl Conv {
    pub(super) fn new(steps: &[FloatStep], ch: usize) -> Conv {
        let mut table = Box::new([0f32; 256]);
        for (v, o) in table.iter_mut().enumerate() {
            *o = run_steps(steps, ch, v as f32);
        }
        let (first, norm) = match steps {
            [first @ (FloatStep::Div255 | FloatStep::Mul255)] => (first, None),
            [first @ (FloatStep::Div255 | FloatStep::Mul255), FloatStep::Normalize { mean, std }] => {
                (first, Some((mean[ch], std[ch], 1.0 / std[ch])))
            }
            _ => return Conv::Table(table),
        };
        let mul = matches!(first, FloatStep::Mul255);
        let fast = |v: f32| {
            let x = if mul { v * R255 } else { div_exact(v, 255.0, R255) };
            norm.map_or(x, |(m, s, rs)| div_exact(x - m, s, rs))
        };
        // Bit for bit (NaN-free: the inputs are finite and std is checked non-zero).
        if (0..256).all(|v| fast(v as f32).to_bits() == table[v].to_bits()) {
            Conv::Fast { mul, norm, table }
        } else {
            Conv::Table(table)
        }
    }
}

impl Conv {
    /// The output value of each byte.
    pub(super) fn table(&self) -> &[f32; 256] {
        match self {
            Conv::Fast { table, .. } | Conv::Table(table) => table,
        }
    }
}

/// The float value of `x` after `steps`, on channel `ch`, rounded as torch's float32 kernels round.
pub(super) fn run_steps(steps: &[FloatStep], ch: usize, mut x: f32) -> f32 {
    for st in steps {
        x = match st {
            FloatStep::Div255 => x / 255.0,
            FloatStep::Mul255 => x * R255,
            FloatStep::Normalize { mean, std } => (x - mean[ch]) / std[ch],
        };
    }
    x
}

/// Output element type of the fused pass.
pub trait Element: Copy + Send + Sync + Default + 'static {
    /// Whether ToTensor / Normalize apply (float output) or are left for the device (bytes).
    const AFFINE: bool;
    /// Converts one plane of pixel bytes as the channel's float steps say; `FMA`: the CPU has
    /// fused multiply-add instructions (the fast exact form needs them).
    fn convert<const FMA: bool>(dst: &mut [Self], src: &[u8], conv: &Conv);
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const AFFINE: bool = true;
    #[inline(always)]
    fn convert<const FMA: bool>(dst: &mut [f32], src: &[u8], conv: &Conv) {
        let it = dst.iter_mut().zip(src);
        match conv {
            Conv::Fast {
                mul: false, norm: None, ..
            } if FMA => it.for_each(|(o, &v)| *o = div_exact(v as f32, 255.0, R255)),
            Conv::Fast {
                mul: false,
                norm: Some((m, s, rs)),
                ..
            } if FMA => {
                let (m, s, rs) = (*m, *s, *rs);
                it.for_each(|(o, &v)| *o = div_exact(div_exact(v as f32, 255.0, R255) - m, s, rs))
            }
            Conv::Fast {
                mul: true, norm: None, ..
            } => it.for_each(|(o, &v)| *o = v as f32 * R255),
            Conv::Fast {
                mul: true,
                norm: Some((m, s, rs)),
                ..
            } if FMA => {
                let (m, s, rs) = (*m, *s, *rs);
                it.for_each(|(o, &v)| *o = div_exact(v as f32 * R255 - m, s, rs))
            }
            Conv::Fast { table, .. } | Conv::Table(table) => it.for_each(|(o, &v)| *o = table[v as usize]),
        }
    }
    fn from_f32(v: f32) -> f32 {
        v
    }
}

/// Raw bytes: geometry (and erasing) only; `ToTensor` / `Normalize` are left for the GPU.
impl Element for u8 {
    const AFFINE: bool = false;
    #[inline(always)]
    fn convert<const FMA: bool>(dst: &mut [u8], src: &[u8], _: &Conv) {
        dst.copy_from_slice(src);
    }
    fn from_f32(v: f32) -> u8 {
        v.round().clamp(0.0, 255.0) as u8
    }
}
