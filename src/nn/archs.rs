//! The architectures. Each `build` registers tensors in the order the PyTorch module does.
use tch::Tensor;

use super::{BatchNorm2d, Conv2d, Linear, Net, Params};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// The seed tutorial's CNN: 3 x (conv-BN-ReLU x2, max-pool), fc 4096-512, dropout 0.5, fc.
    ImageClassifier { num_classes: i64 },
    /// torchvision's resnet18; `cifar_stem` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv.
    ResNet18 { num_classes: i64, cifar_stem: bool },
    /// The DAWNBench ResNet-9 (Myrtle.ai / David Page).
    ResNet9 { num_classes: i64 },
    /// A small 3-block CNN for quick CPU runs and tests.
    SmallCnn { num_classes: i64, width: i64 },
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::ImageClassifier { .. } => "image_classifier",
            Arch::ResNet18 { .. } => "resnet18",
            Arch::ResNet9 { .. } => "resnet9",
            Arch::SmallCnn { .. } => "small_cnn",
        }
    }

    pub fn num_classes(&self) -> i64 {
        match *self {
            Arch::ImageClassifier { num_classes }
            | Arch::ResNet18 { num_classes, .. }
            | Arch::ResNet9 { num_classes }
            | Arch::SmallCnn { num_classes, .. } => num_classes,
        }
    }

    pub fn with_classes(self, n: i64) -> Arch {
        match self {
            Arch::ImageClassifier { .. } => Arch::ImageClassifier { num_classes: n },
            Arch::ResNet18 { cifar_stem, .. } => Arch::ResNet18 { num_classes: n, cifar_stem },
            Arch::ResNet9 { .. } => Arch::ResNet9 { num_classes: n },
            Arch::SmallCnn { width, .. } => Arch::SmallCnn { num_classes: n, width },
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_classes() < 1 {
            return Err(Error::invalid("num_classes", format!("{} must be at least 1", self.num_classes())));
        }
        if let Arch::SmallCnn { width, .. } = self {
            if *width < 1 {
                return Err(Error::invalid("width", format!("{width} must be at least 1")));
            }
        }
        Ok(())
    }

    pub(super) fn build(&self, p: &mut Params) -> Box<dyn Net> {
        match *self {
            Arch::ImageClassifier { num_classes } => Box::new(ImageClassifier::new(p, num_classes)),
            Arch::ResNet18 { num_classes, cifar_stem } => Box::new(ResNet18::new(p, num_classes, cifar_stem)),
            Arch::ResNet9 { num_classes } => Box::new(ResNet9::new(p, num_classes)),
            Arch::SmallCnn { num_classes, width } => Box::new(SmallCnn::new(p, num_classes, width)),
        }
    }
}

/// conv -> BN (named `conv` / `bn`), the pair every architecture here repeats.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(p: &mut Params, conv: &str, bn: &str, cin: i64, cout: i64, k: i64, stride: i64, bias: bool) -> Self {
        ConvBn { conv: Conv2d::new(p, conv, cin, cout, k, stride, k / 2, bias), bn: BatchNorm2d::new(p, bn, cout) }
    }
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward(&self.conv.forward(x), train)
    }
}

fn max_pool(x: &Tensor, k: i64, s: i64, pad: i64) -> Tensor {
    x.max_pool2d([k], [s], [pad], [1], false)
}

struct ImageClassifier {
    blocks: Vec<ConvBn>,
    fc1: Linear,
    fc2: Linear,
}

impl ImageClassifier {
    fn new(p: &mut Params, num_classes: i64) -> Self {
        let chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)];
        let blocks = chans
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| ConvBn::new(p, &format!("conv{}", i + 1), &format!("bn{}", i + 1), a, b, 3, 1, true))
            .collect();
        let fc1 = Linear::new(p, "fc1", 256 * 4 * 4, 512, true);
        let fc2 = Linear::new(p, "fc2", 512, num_classes, true);
        ImageClassifier { blocks, fc1, fc2 }
    }
}

impl Net for ImageClassifier {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, train).relu();
            if i % 2 == 1 {
                x = max_pool(&x, 2, 2, 0);
            }
        }
        let x = self.fc1.forward(&x.flatten(1, -1)).relu().dropout(0.5, train);
        self.fc2.forward(&x)
    }
    fn head_name(&self) -> &'static str {
        "fc2"
    }
    fn head_mut(&mut self) -> &mut Linear {
        &mut self.fc2
    }
    fn input_hw(&self) -> Option<(i64, i64)> {
        Some((32, 32))
    }
}

/// torchvision's BasicBlock.
struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    down: Option<ConvBn>,
}

impl BasicBlock {
    fn new(p: &mut Params, name: &str, cin: i64, cout: i64, stride: i64) -> Self {
        let a = ConvBn::new(p, &format!("{name}.conv1"), &format!("{name}.bn1"), cin, cout, 3, stride, false);
        let b = ConvBn::new(p, &format!("{name}.conv2"), &format!("{name}.bn2"), cout, cout, 3, 1, false);
        let down = (stride != 1 || cin != cout)
            .then(|| ConvBn::new(p, &format!("{name}.downsample.0"), &format!("{name}.downsample.1"), cin, cout, 1, stride, false));
        for cb in [Some(&a), Some(&b), down.as_ref()].into_iter().flatten() {
            cb.conv.kaiming_fan_out();
        }
        BasicBlock { a, b, down }
    }
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.b.forward(&self.a.forward(x, train).relu(), train);
        let id = match &self.down {
            Some(d) => d.forward(x, train),
            None => x.shallow_clone(),
        };
        (y + id).relu()
    }
}

struct ResNet18 {
    stem: ConvBn,
    cifar_stem: bool,
    layers: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet18 {
    fn new(p: &mut Params, num_classes: i64, cifar_stem: bool) -> Self {
        let stem = if cifar_stem {
            ConvBn { conv: Conv2d::new(p, "conv1", 3, 64, 3, 1, 1, false), bn: BatchNorm2d::new(p, "bn1", 64) }
        } else {
            ConvBn { conv: Conv2d::new(p, "conv1", 3, 64, 7, 2, 3, false), bn: BatchNorm2d::new(p, "bn1", 64) }
        };
        stem.conv.kaiming_fan_out();
        let mut layers = Vec::new();
        let mut cin = 64;
        for (li, cout) in [64, 128, 256, 512].into_iter().enumerate() {
            let stride = if li == 0 { 1 } else { 2 };
            layers.push(BasicBlock::new(p, &format!("layer{}.0", li + 1), cin, cout, stride));
            layers.push(BasicBlock::new(p, &format!("layer{}.1", li + 1), cout, cout, 1));
            cin = cout;
        }
        let fc = Linear::new(p, "fc", 512, num_classes, true);
        ResNet18 { stem, cifar_stem, layers, fc }
    }
}

impl Net for ResNet18 {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem.forward(x, train).relu();
        if !self.cifar_stem {
            x = max_pool(&x, 3, 2, 1);
        }
        for b in &self.layers {
            x = b.forward(&x, train);
        }
        self.fc.forward(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }
    fn head_mut(&mut self) -> &mut Linear {
        &mut self.fc
    }
}

/// DAWNBench ResNet-9. Names follow `fastcifar.reference.ResNet9`'s nn.Sequential layout:
/// prep.{0,1}, layer1.{0,1}, res1.{0,1,3,4}, layer2.{0,1}, layer3.{0,1}, res3.{0,1,3,4}, fc.
struct ResNet9 {
    prep: ConvBn,
    layer1: ConvBn,
    res1: [ConvBn; 2],
    layer2: ConvBn,
    layer3: ConvBn,
    res3: [ConvBn; 2],
    fc: Linear,
}

impl ResNet9 {
    fn new(p: &mut Params, num_classes: i64) -> Self {
        let cb = |p: &mut Params, name: &str, i: usize, a: i64, b: i64| {
            ConvBn::new(p, &format!("{name}.{i}"), &format!("{name}.{}", i + 1), a, b, 3, 1, false)
        };
        let prep = cb(p, "prep", 0, 3, 64);
        let layer1 = cb(p, "layer1", 0, 64, 128);
        let res1 = [cb(p, "res1", 0, 128, 128), cb(p, "res1", 3, 128, 128)];
        let layer2 = cb(p, "layer2", 0, 128, 256);
        let layer3 = cb(p, "layer3", 0, 256, 512);
        let res3 = [cb(p, "res3", 0, 512, 512), cb(p, "res3", 3, 512, 512)];
        let fc = Linear::new(p, "fc", 512, num_classes, false);
        ResNet9 { prep, layer1, res1, layer2, layer3, res3, fc }
    }
}

impl Net for ResNet9 {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let block = |c: &ConvBn, x: &Tensor| c.forward(x, train).relu();
        let res = |r: &[ConvBn; 2], x: &Tensor| x + block(&r[1], &block(&r[0], x));
        let x = block(&self.prep, x);
        let x = max_pool(&block(&self.layer1, &x), 2, 2, 0);
        let x = res(&self.res1, &x);
        let x = max_pool(&block(&self.layer2, &x), 2, 2, 0);
        let x = max_pool(&block(&self.layer3, &x), 2, 2, 0);
        let x = res(&self.res3, &x);
        let (x, _) = x.adaptive_max_pool2d([1, 1]);
        self.fc.forward(&x.flatten(1, -1)) * 0.125
    }
    fn head_mut(&mut self) -> &mut Linear {
        &mut self.fc
    }
}

/// conv1-bn1-relu-pool, conv2-bn2-relu-pool, conv3-bn3-relu, global average pool, fc.
struct SmallCnn {
    blocks: [ConvBn; 3],
    fc: Linear,
}

impl SmallCnn {
    fn new(p: &mut Params, num_classes: i64, w: i64) -> Self {
        let blocks = [
            ConvBn::new(p, "conv1", "bn1", 3, w, 3, 1, false),
            ConvBn::new(p, "conv2", "bn2", w, 2 * w, 3, 1, false),
            ConvBn::new(p, "conv3", "bn3", 2 * w, 4 * w, 3, 1, false),
        ];
        let fc = Linear::new(p, "fc", 4 * w, num_classes, true);
        SmallCnn { blocks, fc }
    }
}

impl Net for SmallCnn {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, train).relu();
            if i < 2 {
                x = max_pool(&x, 2, 2, 0);
            }
        }
        self.fc.forward(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }
    fn head_mut(&mut self) -> &mut Linear {
        &mut self.fc
    }
}
