//! Adam (PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8, no weight decay) with gradient
//! clipping at a global L2 norm, over a model's variables in name order; its whole state (step
//! count and moments) saves to and loads from safetensors, so training resumes exactly.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

pub struct Adam {
    vars: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: u64,
    pub learning_rate: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    pub fn new(vars: &VarMap, learning_rate: f64) -> Result<Self> {
        let mut named: Vec<(String, Var)> = vars
            .data()
            .lock()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let first = named
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let second = first.clone();
        Ok(Self {
            vars: named,
            first,
            second,
            step: 0,
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    /// Clips the gradients to global L2 norm `max_norm` and takes one step; returns the norm
    /// before clipping. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, max_norm: f64) -> Result<f64> {
        let mut squares = 0f64;
        for (_, v) in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                squares += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let norm = squares.sqrt();
        let scale = if norm > max_norm {
            max_norm / norm
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let correction1 = 1.0 - self.beta1.powi(t);
        let correction2 = 1.0 - self.beta2.powi(t);
        for (i, (_, v)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            self.first[i] = ((&self.first[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            self.second[i] = ((&self.second[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&self.first[i] / correction1)?;
            let v_hat = (&self.second[i] / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            v.set(&(v.as_tensor() - (update * self.learning_rate)?)?)?;
        }
        Ok(norm)
    }

    /// Writes the step count and the moments.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            tensors.insert(format!("m.{name}"), self.first[i].clone());
            tensors.insert(format!("v.{name}"), self.second[i].clone());
        }
        let step = Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)?;
        tensors.insert("step".into(), step);
        candle_core::safetensors::save(&tensors, path)
    }

    /// Restores what [`Adam::save`] wrote (for the same variables).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .vars
            .first()
            .map_or(candle_core::Device::Cpu, |(_, v)| v.device().clone());
        let tensors = candle_core::safetensors::load(path, &device)?;
        let get = |key: &str| {
            tensors
                .get(key)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {key}")))
        };
        for (i, (name, _)) in self.vars.iter().enumerate() {
            self.first[i] = get(&format!("m.{name}"))?;
            self.second[i] = get(&format!("v.{name}"))?;
        }
        self.step = get("step")?.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// One step on a known gradient equals PyTorch's Adam by hand: the first step moves each
    /// weight by lr * sign(g) (up to eps), and clipping scales g before the moments.
    #[test]
    fn steps_and_clipping_follow_adam() {
        let map = VarMap::new();
        map.get(
            (2,),
            "w",
            candle_nn::Init::Const(1.0),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let w = map.data().lock().unwrap().get("w").unwrap().clone();
        let mut adam = Adam::new(&map, 0.1).unwrap();
        // loss = 3 w0 + 4 w1: gradient (3, 4), norm 5.
        let loss = (w.as_tensor() * &Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = adam.step(&loss.backward().unwrap(), 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let v = w.to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-5 && (v[1] - 0.9).abs() < 1e-5,
            "{v:?}"
        );
        // Save, step twice in two copies, one restored from the file: the same weights.
        let dir = tempfile::tempdir().unwrap();
        adam.save(&dir.path().join("adam.safetensors")).unwrap();
        let grad = || {
            (w.as_tensor() * &Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let before = w.as_tensor().copy().unwrap();
        adam.step(&grad(), 1.0).unwrap();
        let continued = w.to_vec1::<f32>().unwrap();
        w.set(&before).unwrap();
        let mut restored = Adam::new(&map, 0.1).unwrap();
        restored.load(&dir.path().join("adam.safetensors")).unwrap();
        restored.step(&grad(), 1.0).unwrap();
        assert_eq!(w.to_vec1::<f32>().unwrap(), continued);
    }
}
