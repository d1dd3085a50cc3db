//! The JNSC network (paper section IV.A-C): a V-Net-style encoder-decoder that segments nodules
//! voxel by voxel, and a classification path that turns each candidate of the nodule location
//! map into {non-nodule, benign, malignant} from multiscale encoder features and its size.
//!
//! Encoder levels E1..E5 work at 64, 32, 16, 8 and 4 voxels for a 64^3 input; every
//! convolution is followed by instance normalisation and ReLU; blocks may add their input
//! (residual, as V-Net does); spatial dropout after each encoder block while training. The
//! decoder up-convolves, concatenates the skip connection and convolves back to each level's
//! width; a 1x1x1 convolution gives one logit per voxel (sigmoid: nodule probability).
//! Optionally (`Config::refine_width`, not in the paper) a residual unit of two convolutions at
//! full resolution sits before that 1x1x1 convolution: more capacity where small nodules are
//! told from vessels. Its second normalisation starts at a gain of `REFINE_GAIN`, so that a
//! trained network it is added to starts out nearly unchanged.
//! Classification: for each candidate box, crop every encoder level at the down-scaled box,
//! 1x1x1 convolution, adaptive max-pool to 2^3 (E1, E2) or 1^3 (E3-E5), flatten, concatenate,
//! append the size feature cbrt(P)/10, then a linear layer (softmax in the loss).
//! Weight names follow the module structure one to one (`enc1.conv1.weight`, ...).

use crate::jnsc::ops3d::{
    adaptive_max_pool, conv3d, crop, down_conv, instance_norm_relu, spatial_dropout, up_conv,
};
use crate::volume::morphology::{components, label_boxes};
use candle_core::{DType, Module, Result, Tensor, bail};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// Number of encoder levels.
pub const LEVELS: usize = 5;
/// Classes of the classification path.
pub const CLASSES: [&str; 3] = ["non-nodule", "benign", "malignant"];
const NORM_EPS: f64 = 1e-5;
/// Initial gain of the refine unit's second normalisation (not zero: behind a ReLU, a zero gain
/// would get no gradient).
pub const REFINE_GAIN: f64 = 0.01;

/// The open choices of the architecture (the paper fixes levels, input size and threshold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Channels of encoder levels E1..E5.
    pub widths: [usize; LEVELS],
    /// Convolution kernel size (odd).
    pub kernel: usize,
    /// Convolutions per encoder block (decoder blocks mirror levels 1-4).
    pub convs_per_block: [usize; LEVELS],
    /// Add each block's input to its output.
    pub residual: bool,
    /// Output channels of the 1x1x1 convolution on each level's crop (features V1..V5).
    pub feature_widths: [usize; LEVELS],
    /// Spatial dropout probability while training.
    pub dropout: f64,
    /// Nodule location map threshold on the voxel probability.
    pub threshold: f64,
    /// Channels of the residual refine unit before the segmentation head; 0: none (the paper).
    #[serde(default, skip_serializing_if = "no_refine")]
    pub refine_width: usize,
}

/// Whether a `refine_width` means no refine unit (such a width is not written, so that files and
/// run configurations without one stay as they were).
pub fn no_refine(width: &usize) -> bool {
    *width == 0
}

impl Config {
    /// V-Net widths 16-32-64-128-256 with V-Net's 1-2-3-3-3 convolutions per block, 3^3 kernels.
    pub fn paper() -> Self {
        Self {
            widths: [16, 32, 64, 128, 256],
            kernel: 3,
            convs_per_block: [1, 2, 3, 3, 3],
            residual: true,
            feature_widths: [16, 16, 32, 32, 64],
            dropout: 0.1,
            threshold: 0.4,
            refine_width: 0,
        }
    }

    /// Half the widths and fewer convolutions: about 10x cheaper, for training on CPUs.
    pub fn cpu() -> Self {
        Self {
            widths: [8, 16, 32, 64, 128],
            convs_per_block: [1, 1, 2, 2, 2],
            feature_widths: [8, 8, 16, 16, 32],
            ..Self::paper()
        }
    }

    /// The architecture of a preset.
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Cpu => Self::cpu(),
            Preset::Paper => Self::paper(),
        }
    }

    /// Length of a candidate's feature vector (V1..V5 and the size feature).
    pub fn feature_length(&self) -> usize {
        self.feature_widths
            .iter()
            .enumerate()
            .map(|(level, w)| w * pooled_size(level).pow(3))
            .sum::<usize>()
            + 1
    }
}

/// The named architectures (`preset` of a training configuration, `--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Half the widths, fewer convolutions: for training on CPUs.
    Cpu,
    /// The paper's widths (16-256) and convolutions per block (1-2-3-3-3).
    Paper,
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Cpu => "cpu",
            Preset::Paper => "paper",
        })
    }
}

/// Adaptive max-pool output size of a level: 2 for V1-V2, 1 for V3-V5.
fn pooled_size(level: usize) -> usize {
    if level < 2 { 2 } else { 1 }
}

/// Convolution, instance normalisation and ReLU.
#[derive(Debug, Clone)]
struct ConvNormRelu {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
}

impl ConvNormRelu {
    fn new(inputs: usize, outputs: usize, kernel: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_gain(inputs, outputs, kernel, 1.0, vb)
    }

    /// With the normalisation's gain initialised to `gain`.
    fn with_gain(
        inputs: usize,
        outputs: usize,
        kernel: usize,
        gain: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(
                (outputs, inputs, kernel, kernel, kernel),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            gamma: vb.get_with_hints(outputs, "norm.weight", Init::Const(gain))?,
            beta: vb.get_with_hints(outputs, "norm.bias", Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        instance_norm_relu(&conv3d(x, &self.weight)?, &self.gamma, &self.beta, NORM_EPS)
    }

    /// With the convolution's weights in `dtype` (the norm's parameters stay f32).
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            ..self.clone()
        })
    }
}

/// Convolutions of one level, optionally residual.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvNormRelu>,
    residual: bool,
}

impl Block {
    fn new(
        inputs: usize,
        width: usize,
        convs: usize,
        config: &Config,
        vb: VarBuilder,
    ) -> Result<Self> {
        let convs = (0..convs.max(1))
            .map(|i| {
                let cin = if i == 0 { inputs } else { width };
                ConvNormRelu::new(cin, width, config.kernel, vb.pp(format!("conv{}", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            residual: config.residual,
        })
    }

    /// Runs the convolutions on `x`; a residual block adds `shortcut`.
    fn forward(&self, x: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for conv in &self.convs {
            y = conv.forward(&y)?;
        }
        if self.residual { y + shortcut } else { Ok(y) }
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            convs: self
                .convs
                .iter()
                .map(|c| c.to_dtype(dtype))
                .collect::<Result<_>>()?,
            residual: self.residual,
        })
    }
}

/// Two convolutions at full resolution, added to their input: `width` channels -> `inner` ->
/// `width`, the second normalisation's gain starting at `REFINE_GAIN`.
#[derive(Debug, Clone)]
struct Refine {
    convs: [ConvNormRelu; 2],
}

impl Refine {
    fn new(width: usize, inner: usize, kernel: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            convs: [
                ConvNormRelu::new(width, inner, kernel, vb.pp("conv1"))?,
                ConvNormRelu::with_gain(inner, width, kernel, REFINE_GAIN, vb.pp("conv2"))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.convs[1].forward(&self.convs[0].forward(x)?)? + x
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            convs: [
                self.convs[0].to_dtype(dtype)?,
                self.convs[1].to_dtype(dtype)?,
            ],
        })
    }
}

/// A 2x2x2 stride-2 (up or down) convolution with normalisation and ReLU.
#[derive(Debug, Clone)]
struct Resize {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    up: bool,
}

impl Resize {
    fn new(inputs: usize, outputs: usize, up: bool, vb: VarBuilder) -> Result<Self> {
        let shape = if up {
            (inputs, outputs, 2, 2, 2)
        } else {
            (outputs, inputs, 2, 2, 2)
        };
        Ok(Self {
            weight: vb.get_with_hints(shape, "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?,
            gamma: vb.get_with_hints(outputs, "norm.weight", Init::Const(1.0))?,
            beta: vb.get_with_hints(outputs, "norm.bias", Init::Const(0.0))?,
            up,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if self.up {
            up_conv(x, &self.weight)?
        } else {
            down_conv(x, &self.weight)?
        };
        instance_norm_relu(&y, &self.gamma, &self.beta, NORM_EPS)
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            ..self.clone()
        })
    }
}

/// A candidate of the nodule location map: a connected component of voxels above the
/// threshold, with its bounding box (inclusive, in [D, H, W] order) and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub batch: usize,
    pub min: [usize; 3],
    pub max: [usize; 3],
    pub voxels: usize,
}

/// The segmentation path's results.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// One logit per voxel: [N, 1, D, H, W].
    pub logits: Tensor,
    /// Encoder features E1..E5 (for the classification path).
    pub encoder: Vec<Tensor>,
}

/// The joint network.
#[derive(Debug, Clone)]
pub struct Jnsc {
    config: Config,
    encoder: Vec<Block>,
    downs: Vec<Resize>,
    ups: Vec<Resize>,
    decoder: Vec<Block>,
    refine: Option<Refine>,
    head_weight: Tensor,
    head_bias: Tensor,
    features: Vec<Tensor>,
    classifier: Linear,
}

impl Jnsc {
    /// Builds the network, its weights from `vb` (initialised, or loaded from a file).
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        if config.kernel.is_multiple_of(2) {
            bail!("kernel size must be odd, got {}", config.kernel);
        }
        let w = config.widths;
        let mut encoder = Vec::with_capacity(LEVELS);
        let mut downs = Vec::with_capacity(LEVELS - 1);
        for level in 0..LEVELS {
            let inputs = if level == 0 { 1 } else { w[level] };
            let name = format!("enc{}", level + 1);
            encoder.push(Block::new(
                inputs,
                w[level],
                config.convs_per_block[level],
                config,
                vb.pp(name),
            )?);
            if level + 1 < LEVELS {
                downs.push(Resize::new(
                    w[level],
                    w[level + 1],
                    false,
                    vb.pp(format!("down{}", level + 1)),
                )?);
            }
        }
        let mut ups = Vec::with_capacity(LEVELS - 1);
        let mut decoder = Vec::with_capacity(LEVELS - 1);
        for level in (0..LEVELS - 1).rev() {
            ups.push(Resize::new(
                w[level + 1],
                w[level],
                true,
                vb.pp(format!("up{}", level + 1)),
            )?);
            decoder.push(Block::new(
                2 * w[level],
                w[level],
                config.convs_per_block[level],
                config,
                vb.pp(format!("dec{}", level + 1)),
            )?);
        }
        let features = (0..LEVELS)
            .map(|level| {
                vb.pp(format!("feat{}", level + 1)).get_with_hints(
                    (config.feature_widths[level], w[level], 1, 1, 1),
                    "weight",
                    candle_nn::init::DEFAULT_KAIMING_NORMAL,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // Uniform in +-1/sqrt(fan-in), weight and bias alike (what `seeded_init` draws; Candle's
        // `linear` would draw the weight Kaiming-normal).
        let fan_in = config.feature_length();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let uniform = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let classifier = Linear::new(
            vb.pp("classifier")
                .get_with_hints((CLASSES.len(), fan_in), "weight", uniform)?,
            Some(
                vb.pp("classifier")
                    .get_with_hints(CLASSES.len(), "bias", uniform)?,
            ),
        );
        Ok(Self {
            config: config.clone(),
            encoder,
            downs,
            ups,
            decoder,
            refine: (config.refine_width > 0)
                .then(|| Refine::new(w[0], config.refine_width, config.kernel, vb.pp("refine")))
                .transpose()?,
            head_weight: vb.pp("head").get_with_hints(
                (1, w[0], 1, 1, 1),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            head_bias: vb.pp("head").get_with_hints(1, "bias", Init::Const(0.0))?,
            features,
            classifier,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The number format of the convolutional backbone, which inputs are converted to: f32
    /// unless made otherwise by `with_backbone_dtype`. The segmentation logits come in it.
    pub fn dtype(&self) -> DType {
        self.head_weight.dtype()
    }

    /// This network with the convolutions of its encoder, decoder and segmentation head in
    /// `dtype` (half precision for a GPU's segmentation). What stays f32: the normalisations
    /// (`instance_norm_relu` computes half-precision inputs in f32) and the classification
    /// head, whose crops of the encoder features are converted to f32.
    pub fn with_backbone_dtype(&self, dtype: DType) -> Result<Self> {
        let each = |blocks: &[Block]| -> Result<Vec<Block>> {
            blocks.iter().map(|b| b.to_dtype(dtype)).collect()
        };
        let resizes = |rs: &[Resize]| -> Result<Vec<Resize>> {
            rs.iter().map(|r| r.to_dtype(dtype)).collect()
        };
        Ok(Self {
            config: self.config.clone(),
            encoder: each(&self.encoder)?,
            downs: resizes(&self.downs)?,
            ups: resizes(&self.ups)?,
            decoder: each(&self.decoder)?,
            refine: self
                .refine
                .as_ref()
                .map(|r| r.to_dtype(dtype))
                .transpose()?,
            head_weight: self.head_weight.to_dtype(dtype)?,
            head_bias: self.head_bias.to_dtype(dtype)?,
            features: self.features.clone(),
            classifier: self.classifier.clone(),
        })
    }

    /// Segments a batch [N, 1, D, H, W] (sizes divisible by 16). With `dropout` (training), the
    /// spatial dropout masks are drawn from it.
    pub fn segment(
        &self,
        x: &Tensor,
        dropout: Option<&mut crate::random::Rng>,
    ) -> Result<Segmentation> {
        let encoder = self.encode(x, dropout)?;
        let mut y = encoder[LEVELS - 1].clone();
        for (i, level) in (0..LEVELS - 1).rev().enumerate() {
            let up = self.ups[i].forward(&y)?;
            let joined = Tensor::cat(&[&up, &encoder[level]], 1)?;
            y = self.decoder[i].forward(&joined, &up)?;
        }
        if let Some(refine) = &self.refine {
            y = refine.forward(&y)?;
        }
        let logits = conv3d(&y, &self.head_weight)?
            .broadcast_add(&self.head_bias.reshape((1, 1, 1, 1, 1))?)?;
        Ok(Segmentation { logits, encoder })
    }

    /// The encoder features E1..E5 of a batch [N, 1, D, H, W] (sizes divisible by 16): the
    /// first half of `segment`, all the classification path needs.
    pub fn encode(
        &self,
        x: &Tensor,
        mut dropout: Option<&mut crate::random::Rng>,
    ) -> Result<Vec<Tensor>> {
        let (_, channels, d, h, w) = x.dims5()?;
        if channels != 1 || !d.is_multiple_of(16) || !h.is_multiple_of(16) || !w.is_multiple_of(16)
        {
            bail!(
                "input must be [N, 1, D, H, W] with sizes divisible by 16, got {:?}",
                x.dims()
            );
        }
        let mut encoder = Vec::with_capacity(LEVELS);
        let mut y = x.to_dtype(self.dtype())?;
        for level in 0..LEVELS {
            let shortcut = if level == 0 {
                y.broadcast_as(((y.dim(0)?), self.config.widths[0], d, h, w))?
                    .contiguous()?
            } else {
                y.clone()
            };
            let mut out = self.encoder[level].forward(&y, &shortcut)?;
            if let Some(rng) = dropout.as_deref_mut() {
                out = spatial_dropout(&out, self.config.dropout, rng)?;
            }
            if level + 1 < LEVELS {
                y = self.downs[level].forward(&out)?;
            }
            encoder.push(out);
        }
        Ok(encoder)
    }

    /// Class logits [K, 3] for `candidates` (boxes on the input grid) from the encoder features.
    pub fn classify(&self, encoder: &[Tensor], candidates: &[Candidate]) -> Result<Tensor> {
        let device = encoder[0].device();
        if candidates.is_empty() {
            return Tensor::zeros((0, CLASSES.len()), DType::F32, device);
        }
        let mut rows = Vec::with_capacity(candidates.len());
        for c in candidates {
            let mut parts = Vec::with_capacity(LEVELS + 1);
            for (level, features) in encoder.iter().enumerate() {
                let scale = 1 << level;
                let item = features.narrow(0, c.batch, 1)?;
                let dims = item.dims();
                let start = [0, 1, 2].map(|a| (c.min[a] / scale).min(dims[a + 2] - 1));
                let end = [0, 1, 2].map(|a| (c.max[a] / scale).min(dims[a + 2] - 1).max(start[a]));
                let cropped = crop(&item, start, end)?.to_dtype(DType::F32)?;
                let mixed = conv3d(&cropped, &self.features[level])?;
                parts.push(adaptive_max_pool(&mixed, pooled_size(level))?.flatten_all()?);
            }
            let size = (c.voxels as f64).cbrt() / 10.0;
            parts.push(Tensor::new(&[size as f32], device)?);
            rows.push(Tensor::cat(&parts, 0)?);
        }
        self.classifier.forward(&Tensor::stack(&rows, 0)?)
    }
}

/// Re-draws every variable of a freshly built network from `seed`, with the distributions
/// `Jnsc::new` asks for (Candle's own initialisation cannot be seeded on the CPU; the test
/// `seeded_init_draws_what_the_constructor_asks_for` keeps the two in step): convolution
/// weights Kaiming-normal (fan-in, ReLU gain), norm scales 1, biases of norms and head 0, the
/// classifier uniform in +-1/sqrt(fan-in). The same seed gives the same network everywhere.
pub fn seeded_init(vars: &candle_nn::VarMap, seed: u64) -> Result<()> {
    let data = vars
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = crate::random::Rng::new(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let values: Vec<f32> = if name == "refine.conv2.norm.weight" {
            vec![REFINE_GAIN as f32; n]
        } else if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with("norm.bias") || name == "head.bias" {
            vec![0.0; n]
        } else if name.starts_with("classifier.") {
            let fan_in = if name.ends_with("bias") {
                data.get("classifier.weight").map_or(1, |w| w.dims()[1])
            } else {
                fan_in
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| rng.range(-bound, bound) as f32).collect()
        } else {
            let std = (2.0 / fan_in as f64).sqrt();
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The nodule location map: 6-connected components of voxels with probability above
/// `threshold`, per batch item, as candidates. `probability`: [N, 1, D, H, W].
pub fn candidates(probability: &Tensor, threshold: f64) -> Result<Vec<Candidate>> {
    let (n, _, d, h, w) = probability.dims5()?;
    let values = probability
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let volume = d * h * w;
    let mut found = Vec::new();
    for batch in 0..n {
        let mask: Vec<u8> = values[batch * volume..(batch + 1) * volume]
            .iter()
            .map(|&p| u8::from(f64::from(p) > threshold))
            .collect();
        let (labels, _) = components(&mask, [w, h, d]);
        // Boxes come as (x, y, z); candidates are on [D, H, W].
        for b in label_boxes(&labels, [w, h, d]).values() {
            found.push(Candidate {
                batch,
                min: [b.min[2], b.min[1], b.min[0]],
                max: [b.max[2], b.max[1], b.max[0]],
                voxels: b.voxels,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// Per variable: min, max, mean, standard deviation and count.
    fn moments(vars: &VarMap) -> std::collections::BTreeMap<String, [f64; 5]> {
        let data = vars.data().lock().unwrap();
        data.iter()
            .map(|(name, var)| {
                let v: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
                let n = v.len() as f64;
                let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
                let var_ = v
                    .iter()
                    .map(|&x| (f64::from(x) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let lo = v.iter().fold(f64::MAX, |a, &x| a.min(f64::from(x)));
                let hi = v.iter().fold(f64::MIN, |a, &x| a.max(f64::from(x)));
                (name.clone(), [lo, hi, mean, var_.sqrt(), n])
            })
            .collect()
    }

    #[test]
    fn a_refine_unit_starts_near_the_network_it_is_added_to() {
        let plain = Config::preset(Preset::Cpu);
        let refined = Config {
            refine_width: 8,
            ..plain.clone()
        };
        let build = |config: &Config| {
            let vars = VarMap::new();
            let net = Jnsc::new(
                config,
                VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            )
            .unwrap();
            seeded_init(&vars, 3).unwrap();
            (vars, net)
        };
        let (plain_vars, plain_net) = build(&plain);
        let (refined_vars, refined_net) = build(&refined);
        {
            let from = plain_vars.data().lock().unwrap();
            let to = refined_vars.data().lock().unwrap();
            assert_eq!(
                to.keys().filter(|k| !from.contains_key(*k)).count(),
                6,
                "the refine unit adds two convolutions and their norms"
            );
            for (name, var) in from.iter() {
                to[name].set(var.as_tensor()).unwrap();
            }
        }
        let mut rng = crate::random::Rng::new(5);
        let input: Vec<f32> = (0..32 * 32 * 32).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(input, (1, 1, 32, 32, 32), &Device::Cpu).unwrap();
        let logits = |net: &Jnsc| -> Vec<f32> {
            let s = net.segment(&x, None).unwrap();
            s.logits.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (a, b) = (logits(&plain_net), logits(&refined_net));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let moved = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(moved > 0.0, "the unit must be live (a gradient reaches it)");
        assert!(
            moved < 0.05 * scale,
            "moved {moved} against logits of up to {scale}"
        );
    }

    #[test]
    fn seeded_init_draws_what_the_constructor_asks_for() {
        // With a refine unit: its gain, too, is drawn as the constructor asks.
        let config = Config {
            refine_width: 8,
            ..Config::preset(Preset::Cpu)
        };
        let build = || {
            let vars = VarMap::new();
            Jnsc::new(
                &config,
                VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            )
            .unwrap();
            vars
        };
        let hinted = moments(&build());
        let seeded_vars = build();
        seeded_init(&seeded_vars, 7).unwrap();
        let seeded = moments(&seeded_vars);
        assert_eq!(
            hinted.keys().collect::<Vec<_>>(),
            seeded.keys().collect::<Vec<_>>()
        );
        let mut compared = 0;
        for (name, [lo, hi, mean, std, n]) in &hinted {
            let [s_lo, s_hi, s_mean, s_std, _] = seeded[name];
            if std == &0.0 {
                assert_eq!([lo, hi], [&s_lo, &s_hi], "{name}: the same constant");
                continue;
            }
            // Candle's draws are not seeded: compare laws only where the sample is large.
            if *n < 300.0 {
                continue;
            }
            compared += 1;
            // The same family and scale: spread within 25%; a uniform law's range is at most
            // 2 sqrt(3) = 3.5 std, a normal sample of 300 or more spans well over 4.2.
            assert!(
                (s_std / std - 1.0).abs() < 0.25,
                "{name}: std {std} vs {s_std}"
            );
            assert!(
                (mean - s_mean).abs() < 0.5 * std,
                "{name}: mean {mean} vs {s_mean}"
            );
            let uniform = |lo: f64, hi: f64, std: f64| (hi - lo) / std < 4.2;
            assert_eq!(
                uniform(*lo, *hi, *std),
                uniform(s_lo, s_hi, s_std),
                "{name}: uniform in one, not the other ({lo}..{hi} vs {s_lo}..{s_hi})"
            );
        }
        assert!(compared > 10, "{compared} variables compared");
    }

    #[test]
    fn both_presets_segment_and_classify_with_the_right_shapes() {
        for config in [
            Config::cpu(),
            Config {
                widths: [4, 8, 8, 16, 16],
                ..Config::paper()
            },
        ] {
            let map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
            let net = Jnsc::new(&config, vb).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 32, 32), &Device::Cpu).unwrap();
            let out = net
                .segment(&x, Some(&mut crate::random::Rng::new(1)))
                .unwrap();
            assert_eq!(out.logits.dims(), [2, 1, 32, 32, 32]);
            let sizes: Vec<usize> = out.encoder.iter().map(|e| e.dim(2).unwrap()).collect();
            assert_eq!(sizes, [32, 16, 8, 4, 2]);
            let boxes = [
                Candidate {
                    batch: 0,
                    min: [3, 4, 5],
                    max: [9, 7, 12],
                    voxels: 60,
                },
                Candidate {
                    batch: 1,
                    min: [30, 30, 30],
                    max: [31, 31, 31],
                    voxels: 8,
                },
            ];
            let logits = net.classify(&out.encoder, &boxes).unwrap();
            assert_eq!(logits.dims(), [2, 3]);
            // The loss reaches every parameter.
            let loss = (out.logits.sqr().unwrap().mean_all().unwrap()
                + logits.sqr().unwrap().mean_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let missing: Vec<String> = map
                .data()
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
                .map(|(k, _)| k.clone())
                .collect();
            assert!(missing.is_empty(), "no gradient for {missing:?}");
        }
    }

    /// A backbone in f16 segments like f32 (logits within 1% of their range), takes f32 input,
    /// and its classification head still answers in f32 from its own f32 weights.
    #[test]
    fn a_half_precision_backbone_segments_like_f32_and_classifies_in_f32() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let net = Jnsc::new(&Config::cpu(), vb).unwrap();
        seeded_init(&map, 5).unwrap();
        let half = net.with_backbone_dtype(DType::F16).unwrap();
        assert_eq!((net.dtype(), half.dtype()), (DType::F32, DType::F16));
        let x = Tensor::randn(0f32, 1.0, (1, 1, 32, 32, 32), &Device::Cpu).unwrap();
        let (full, reduced) = (
            net.segment(&x, None).unwrap(),
            half.segment(&x, None).unwrap(),
        );
        assert_eq!(reduced.logits.dtype(), DType::F16);
        let flat = |t: &Tensor| -> Vec<f32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (a, b) = (flat(&full.logits), flat(&reduced.logits));
        let range = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            diff > 0.0 && diff < 0.01 * range,
            "max diff {diff}, range {range}"
        );
        let boxes = [Candidate {
            batch: 0,
            min: [3, 4, 5],
            max: [20, 17, 22],
            voxels: 900,
        }];
        let classes = half.classify(&reduced.encoder, &boxes).unwrap();
        assert_eq!(classes.dtype(), DType::F32);
        let (p, q) = (
            flat(&net.classify(&full.encoder, &boxes).unwrap()),
            flat(&classes),
        );
        for (p, q) in p.iter().zip(&q) {
            assert!((p - q).abs() < 0.01 * p.abs().max(1.0), "{p:?} vs {q:?}");
        }
    }

    #[test]
    fn location_map_finds_components_and_their_boxes() {
        let mut p = vec![0f32; 2 * 8 * 8 * 8];
        let at = |b: usize, d: usize, h: usize, w: usize| ((b * 8 + d) * 8 + h) * 8 + w;
        for (d, h, w) in [(1, 1, 1), (1, 1, 2), (2, 1, 2)] {
            p[at(0, d, h, w)] = 0.9;
        }
        p[at(0, 6, 6, 6)] = 0.5;
        p[at(0, 4, 4, 4)] = 0.3; // below the threshold
        p[at(1, 7, 0, 3)] = 0.99;
        let t = Tensor::from_vec(p, (2, 1, 8, 8, 8), &Device::Cpu).unwrap();
        let found = candidates(&t, 0.4).unwrap();
        assert_eq!(
            found,
            [
                Candidate {
                    batch: 0,
                    min: [1, 1, 1],
                    max: [2, 1, 2],
                    voxels: 3
                },
                Candidate {
                    batch: 0,
                    min: [6, 6, 6],
                    max: [6, 6, 6],
                    voxels: 1
                },
                Candidate {
                    batch: 1,
                    min: [7, 0, 3],
                    max: [7, 0, 3],
                    voxels: 1
                },
            ]
        );
    }

    /// With `--features cuda` (run on a machine with a GPU): the paper network on CUDA gives
    /// the CPU's segmentation and class logits for the same weights (loaded from one file).
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_network_matches_the_cpu() {
        use crate::jnsc::model_file::{ModelInfo, load, save};
        let gpu = Device::new_cuda(0).expect("a CUDA build's tests need a GPU");
        let map = VarMap::new();
        let config = Config::paper();
        Jnsc::new(
            &config,
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        let info = ModelInfo {
            malignancy_calibration: None,
            malignancy_network: None,
            measure_fraction: None,
            operating_points: Vec::new(),
            name: "cuda-check".into(),
            version: "0".into(),
            config,
            normalization: crate::volume::Normalization::default(),
            provenance: serde_json::json!({}),
        };
        save(&file, &map, &info).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 1, 64, 64, 64), &Device::Cpu).unwrap();
        let boxes = [Candidate {
            batch: 0,
            min: [10, 20, 30],
            max: [25, 29, 41],
            voxels: 100,
        }];
        let run = |device: &Device| {
            let (net, _) = load(&file, device).unwrap();
            let out = net.segment(&x.to_device(device).unwrap(), None).unwrap();
            let classes = net.classify(&out.encoder, &boxes).unwrap();
            [out.logits, classes].map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&gpu));
        for (name, a, b) in [
            ("logits", &cpu[0], &cuda[0]),
            ("classes", &cpu[1], &cuda[1]),
        ] {
            let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            println!("{name}: CPU vs CUDA max abs diff {diff:.2e}");
            assert!(diff < 1e-3, "{name}: CPU vs CUDA max diff {diff}");
        }
    }
}
