//! The Candle network against an independent PyTorch implementation (tools/jnsc_reference.py):
//! same weights file, same input, outputs committed as test vectors, so this runs without
//! PyTorch. Regenerate with `jnsc model init` and the script (see its docstring).

use candle_core::{Device, Tensor};
use jnsc::jnsc::model_file::load;
use jnsc::jnsc::network::Candidate;
use std::path::Path;

fn vector(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// x[n, 0, d, h, w] = sin(0.3 d + 0.2 h) cos(0.25 w) + 0.1 n, as the script builds it.
fn fixed_input() -> Tensor {
    let size = 32;
    let mut values = Vec::with_capacity(2 * size * size * size);
    for n in 0..2 {
        for d in 0..size {
            for h in 0..size {
                for w in 0..size {
                    let v = (0.3 * d as f64 + 0.2 * h as f64).sin() * (0.25 * w as f64).cos()
                        + 0.1 * n as f64;
                    values.push(v as f32);
                }
            }
        }
    }
    Tensor::from_vec(values, (2, 1, size, size, size), &Device::Cpu).unwrap()
}

/// Float32 networks of a dozen layers agree to ~1e-5 relative; 1e-4 of the output range leaves
/// room for summation order and still fails on any architectural difference (a wrong padding,
/// order or weight layout changes outputs by O(1)).
#[test]
fn segmentation_and_classification_match_pytorch() {
    let (net, info) = load(&vector("jnsc-reference.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(info.config.widths, [4, 8, 8, 16, 16]);
    let out = net.segment(&fixed_input(), None).unwrap();
    let ours = out.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let raw = std::fs::read(vector("jnsc-reference.logits.f32")).unwrap();
    let theirs: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(ours.len(), theirs.len());
    let range = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("segmentation logits: max |diff| {diff:e} (range {range})");
    assert!(diff <= 1e-4 * range.max(1.0), "max |diff| {diff}");

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vector("jnsc-reference.json")).unwrap())
            .unwrap();
    let boxes = [
        Candidate {
            batch: 0,
            min: [3, 4, 5],
            max: [9, 7, 12],
            voxels: 60,
        },
        Candidate {
            batch: 1,
            min: [20, 2, 11],
            max: [23, 6, 14],
            voxels: 18,
        },
    ];
    let classes = net
        .classify(&out.encoder, &boxes)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (row, want) in classes
        .iter()
        .zip(expected["class_logits"].as_array().unwrap())
    {
        for (a, b) in row.iter().zip(want.as_array().unwrap()) {
            let b = b.as_f64().unwrap() as f32;
            assert!((a - b).abs() < 1e-4, "class logit {a} vs PyTorch {b}");
        }
    }
}
