//! Unit tests of the fused pipeline: parity with torchvision's arithmetic, the fast paths against
//! the general ones, thread-count independence and the checks' messages.
use super::apply::{resized_crop_box, Key, Scratch};
use super::compile::Stage;
use super::convert::{Conv, Element};
use super::gather::{gather_runs, gather_shifted, runs_of, shifted_rows, MapArgs};
use super::*;
use crate::data::Dataset;
use crate::rng::Rng;

fn ds(n: usize, c: usize, h: usize, w: usize) -> Dataset {
    let images: Vec<u8> = (0..n * c * h * w).map(|i| (i % 251) as u8).collect();
    Dataset::new(images, vec![0; n], vec!["x".into()], [c, h, w]).unwrap()
}

fn crop(size: usize, pad: usize, mode: PadMode) -> Op {
    Op::RandomCrop {
        size: (size, size),
        padding: [pad; 4],
        fill: vec![0],
        mode,
        pad_if_needed: false,
    }
}

#[test]
fn to_tensor_normalize_is_affine() {
    let d = ds(2, 3, 4, 4);
    let ops = vec![
        Op::ToTensor,
        Op::Normalize {
            mean: vec![0.5, 0.4, 0.3],
            std: vec![0.2, 0.25, 0.5],
        },
    ];
    let p = Pipeline::new(ops, d.shape).unwrap();
    let mut out = vec![0f32; 2 * 48];
    p.apply_batch(&d, &[0, 1], 0, 0, &mut out).unwrap();
    for (i, (&o, &v)) in out.iter().zip(d.images.iter()).enumerate() {
        let ch = (i % 48) / 16;
        let (m, s) = ([0.5, 0.4, 0.3][ch], [0.2, 0.25, 0.5][ch]);
        assert!((o as f64 - (v as f64 / 255.0 - m) / s).abs() < 1e-5);
    }
}

#[test]
fn crop_with_padding_reads_the_right_pixels() {
    // 1 channel, 3x3 image 0..9. Reflect pad 1 then crop 5x5 can only be the whole padded image.
    let d = Dataset::new((0..9).collect::<Vec<u8>>(), vec![0], vec!["x".into()], [1, 3, 3]).unwrap();
    let p = Pipeline::new(vec![crop(5, 1, PadMode::Reflect)], d.shape).unwrap();
    let mut out = vec![0u8; 25];
    p.apply_batch(&d, &[0], 1, 2, &mut out).unwrap();
    #[rustfmt::skip]
    let expect = [4, 3, 4, 5, 4,  1, 0, 1, 2, 1,  4, 3, 4, 5, 4,  7, 6, 7, 8, 7,  4, 3, 4, 5, 4];
    assert_eq!(out, expect);
    let p = Pipeline::new(vec![crop(5, 1, PadMode::Edge)], d.shape).unwrap();
    p.apply_batch(&d, &[0], 1, 2, &mut out).unwrap();
    assert_eq!(&out[..5], &[0, 0, 1, 2, 2]);
    let fill = Op::RandomCrop {
        size: (5, 5),
        padding: [1; 4],
        fill: vec![9],
        mode: PadMode::Constant,
        pad_if_needed: false,
    };
    let p = Pipeline::new(vec![fill], d.shape).unwrap();
    p.apply_batch(&d, &[0], 1, 2, &mut out).unwrap();
    assert_eq!(&out[..10], &[9, 9, 9, 9, 9, 9, 0, 1, 2, 9]);
}

#[test]
fn same_batch_whatever_the_thread_count() {
    let d = ds(64, 3, 32, 32);
    let ops = vec![
        crop(32, 4, PadMode::Constant),
        Op::RandomHorizontalFlip { p: 0.5 },
        Op::ToTensor,
        Op::Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        },
        Op::RandomErasing {
            p: 0.5,
            scale: (0.02, 0.33),
            ratio: (0.3, 3.3),
            value: vec![0.0],
        },
    ];
    let p = Pipeline::new(ops, d.shape).unwrap();
    let idx: Vec<usize> = (0..64).rev().collect();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut out = vec![0f32; 64 * 3072];
        pool.install(|| p.apply_batch(&d, &idx, 5, 1, &mut out)).unwrap();
        out
    };
    assert_eq!(run(1), run(2));
    let mut other = vec![0f32; 64 * 3072];
    p.apply_batch(&d, &idx, 5, 2, &mut other).unwrap();
    assert_ne!(run(1), other, "a new epoch must draw new augmentations");
}

#[test]
fn resize_then_crop_and_flip() {
    let d = ds(3, 3, 32, 32);
    let ops = vec![
        Op::Resize {
            size: ResizeTo::Exact(64, 48),
        },
        crop(40, 0, PadMode::Constant),
        Op::RandomHorizontalFlip { p: 1.0 },
    ];
    let p = Pipeline::new(ops, d.shape).unwrap();
    assert_eq!(p.out_shape(), [3, 40, 40]);
    let mut out = vec![0u8; 3 * 3 * 1600];
    p.apply_batch(&d, &[0, 1, 2], 0, 0, &mut out).unwrap();
    let p = Pipeline::new(
        vec![Op::Resize {
            size: ResizeTo::Shorter(8),
        }],
        [3, 16, 32],
    )
    .unwrap();
    assert_eq!(p.out_shape(), [3, 8, 16]);
}

#[test]
fn shifted_row_fast_path_equals_the_general_gather() {
    let d = ds(4, 3, 32, 32);
    let crop = |pad: usize, fill: u8| Op::RandomCrop {
        size: (32, 32),
        padding: [pad; 4],
        fill: vec![fill],
        mode: PadMode::Constant,
        pad_if_needed: false,
    };
    let layouts = [
        vec![crop(4, 0), Op::RandomHorizontalFlip { p: 0.5 }],
        vec![Op::RandomHorizontalFlip { p: 0.5 }, crop(8, 9)],
        vec![crop(2, 5), crop(3, 200), Op::RandomHorizontalFlip { p: 0.5 }],
        vec![crop(31, 1), Op::RandomVerticalFlip { p: 0.5 }],
        vec![Op::RandomHorizontalFlip { p: 1.0 }],
    ];
    let mut fast_used = Vec::new();
    for ops in layouts {
        fast_used.push(0);
        let p = Pipeline::new(ops, d.shape).unwrap();
        let Stage::Maps { geos, in_hw } = &p.stages[0] else {
            unreachable!()
        };
        for i in 0..200u64 {
            let mut s = Scratch::default();
            let key = Key {
                seed: 0,
                epoch: 0,
                index: i,
            };
            p.maps(geos, *in_hw, &mut Rng::keyed(&[i]), key, &mut s);
            runs_of(&s.xmap, &mut s.runs);
            let m = MapArgs {
                src: d.image((i % 4) as usize),
                c: 3,
                hw: (32, 32),
                ymap: &s.ymap,
                runs: &s.runs,
                fills: &p.fills,
            };
            let (mut a, mut b) = (vec![0u8; 3072], vec![0u8; 3072]);
            gather_runs(&m, 32, &mut a);
            if let Some(sh) = shifted_rows::<32>(32, &s.runs) {
                gather_shifted::<32>(&m, sh, &mut b);
                assert_eq!(a, b, "sample {i}");
                *fast_used.last_mut().unwrap() += 1;
            }
        }
    }
    // The seed's layout always takes the fast path; two stacked crops with different fills
    // sometimes pad one side with both, which only the general gather handles.
    assert_eq!(fast_used[0], 200, "{fast_used:?}");
    assert_eq!(fast_used[4], 200, "{fast_used:?}");
    assert!(fast_used.iter().all(|&n| n > 0), "{fast_used:?}");
}

#[test]
fn float_output_is_torchs_float32_arithmetic_and_the_fast_form_is_taken() {
    let ops = vec![
        Op::ToTensor,
        Op::Normalize {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2023, 0.1994, 0.2010],
        },
    ];
    let p = Pipeline::new(ops, [3, 4, 4]).unwrap();
    for (ch, (m, s)) in [(0.4914f32, 0.2023f32), (0.4822, 0.1994), (0.4465, 0.2010)]
        .into_iter()
        .enumerate()
    {
        let Conv::Fast { table, .. } = &p.convs[ch] else {
            panic!("the seed's statistics should take the fast form")
        };
        for v in 0..256 {
            assert_eq!(table[v].to_bits(), ((v as f32 / 255.0 - m) / s).to_bits());
            let mut o = [0f32];
            f32::convert::<true>(&mut o, &[v as u8], &p.convs[ch]);
            assert_eq!(o[0].to_bits(), table[v].to_bits());
        }
    }
    // Two Normalize steps have no closed form here: the table holds them.
    let ops = vec![
        Op::ToTensor,
        Op::Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        },
        Op::Normalize {
            mean: vec![0.1],
            std: vec![3.0],
        },
    ];
    assert!(matches!(
        Pipeline::new(ops, [1, 2, 2]).unwrap().convs[0],
        Conv::Table(_)
    ));
}

#[test]
fn pad_modes_center_crop_ties_and_resized_crop_shapes() {
    // 1 channel, one row 0..4 wide: symmetric repeats the edge, reflect does not, both keep going.
    let d = Dataset::new((0..4).collect::<Vec<u8>>(), vec![0], vec!["x".into()], [1, 1, 4]).unwrap();
    let run = |op: Op, n: usize| {
        let p = Pipeline::new(vec![op], d.shape).unwrap();
        let mut out = vec![0u8; n];
        p.apply_batch(&d, &[0], 0, 0, &mut out).unwrap();
        out
    };
    let pad = |mode| Op::Pad {
        padding: [5, 0, 5, 0],
        fill: vec![9],
        mode,
    };
    assert_eq!(
        run(pad(PadMode::Symmetric), 14),
        [3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]
    );
    assert_eq!(
        run(pad(PadMode::Reflect), 14),
        [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
    );
    assert_eq!(
        run(pad(PadMode::Constant), 14),
        [9, 9, 9, 9, 9, 0, 1, 2, 3, 9, 9, 9, 9, 9]
    );
    // (4 - 1) / 2 = 1.5 rounds to 2, as Python's round does; (4 - 3) / 2 = 0.5 to 0.
    assert_eq!(run(Op::CenterCrop { size: (1, 1) }, 1), [2]);
    assert_eq!(run(Op::CenterCrop { size: (1, 3) }, 3), [0, 1, 2]);
    let p = Pipeline::new(
        vec![Op::RandomResizedCrop {
            size: (5, 7),
            scale: (0.08, 1.0),
            ratio: (0.75, 1.33),
        }],
        [3, 32, 32],
    )
    .unwrap();
    assert_eq!(p.out_shape(), [3, 5, 7]);
    for i in 0..500u64 {
        let (y, x, h, w) = resized_crop_box(&mut Rng::keyed(&[i]), (32, 20), (0.08, 1.0), (0.75, 1.33));
        assert!(h > 0 && w > 0 && y + h <= 32 && x + w <= 20);
    }
}

#[test]
fn invalid_parameters_name_themselves() {
    let shape = [3, 32, 32];
    let err = |ops: Vec<Op>| Pipeline::new(ops, shape).unwrap_err().to_string();
    assert!(err(vec![crop(41, 4, PadMode::Constant)]).starts_with("size:"));
    assert!(err(vec![Op::RandomHorizontalFlip { p: 1.5 }]).starts_with("p:"));
    assert!(err(vec![
        Op::ToTensor,
        Op::Normalize {
            mean: vec![0.5; 3],
            std: vec![0.0; 3]
        }
    ])
    .starts_with("std:"));
    assert!(err(vec![
        Op::ToTensor,
        Op::Normalize {
            mean: vec![0.5; 2],
            std: vec![0.1; 2]
        }
    ])
    .starts_with("mean:"));
    assert!(err(vec![Op::Normalize {
        mean: vec![0.5],
        std: vec![0.1]
    }])
    .contains("ToTensor"));
    assert!(err(vec![Op::ToTensor, crop(32, 4, PadMode::Constant)]).contains("before ToTensor"));
}
