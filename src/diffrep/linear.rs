//! Linear diffreps for the exact oracles: `r(theta) = A theta` and the identity.

use anyhow::{bail, Result};
use burn::module::{Module, Param};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};

use super::{Diffrep, NamedTensor};
use crate::tensor_util::{tensor_from_f64, tensor_to_vec};

/// Parameters `theta`: `[n, 1, k]`.
#[derive(Module, Debug)]
pub struct LinearParams<B: Backend> {
    pub theta: Param<Tensor<B, 3>>,
}

/// `r(theta) = sum_k theta_k a_k` for fixed images `a_k` (the columns of A).
pub struct LinearDiffrep<B: Backend> {
    shape: [usize; 3],
    /// `[k, D]`: the columns of A as rows.
    a: Tensor<B, 2>,
    /// `[D, k]`: `A (A^T A)^{-1}` in column terms, the least-squares solve.
    pinv: Tensor<B, 2>,
    k: usize,
}

/// Solves `G X = B` for symmetric positive definite `G` (`k x k`) by Gauss-Jordan; `B` is `k x m`.
fn solve(mut g: Vec<f64>, mut b: Vec<f64>, k: usize, m: usize) -> Result<Vec<f64>> {
    for col in 0..k {
        let piv = (col..k).max_by(|&i, &j| g[i * k + col].abs().partial_cmp(&g[j * k + col].abs()).unwrap()).unwrap();
        if g[piv * k + col].abs() < 1e-12 {
            bail!("linear diffrep: the columns of A are linearly dependent");
        }
        for c in 0..k {
            g.swap(col * k + c, piv * k + c);
        }
        for c in 0..m {
            b.swap(col * m + c, piv * m + c);
        }
        let d = g[col * k + col];
        for r in 0..k {
            if r != col {
                let f = g[r * k + col] / d;
                for c in 0..k {
                    g[r * k + c] -= f * g[col * k + c];
                }
                for c in 0..m {
                    b[r * m + c] -= f * b[col * m + c];
                }
            }
        }
    }
    for r in 0..k {
        let d = g[r * k + r];
        for c in 0..m {
            b[r * m + c] /= d;
        }
    }
    Ok(b)
}

impl<B: Backend> LinearDiffrep<B> {
    /// `columns[k]` is the image `a_k` (length `C*H*W`).
    pub fn new(shape: [usize; 3], columns: &[Vec<f64>], device: &B::Device) -> Result<Self> {
        let d: usize = shape.iter().product();
        let k = columns.len();
        if k == 0 {
            bail!("linear diffrep needs at least one column");
        }
        if columns.iter().any(|c| c.len() != d) {
            bail!("linear diffrep columns must have {d} entries");
        }
        let mut gram = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                gram[i * k + j] = columns[i].iter().zip(&columns[j]).map(|(a, b)| a * b).sum();
            }
        }
        // theta = G^{-1} A^T x  ==>  pinv (as [D, k]) = (G^{-1} A^T)^T.
        let at: Vec<f64> = columns.iter().flatten().cloned().collect(); // [k, D]
        let ginv_at = solve(gram, at.clone(), k, d)?; // [k, D]
        let mut pinv = vec![0.0; d * k];
        for i in 0..k {
            for j in 0..d {
                pinv[j * k + i] = ginv_at[i * d + j];
            }
        }
        Ok(Self { shape, a: tensor_from_f64(&at, [k, d], device), pinv: tensor_from_f64(&pinv, [d, k], device), k })
    }
}

impl<B: AutodiffBackend> Diffrep<B> for LinearDiffrep<B> {
    type Params = LinearParams<B>;

    fn name(&self) -> &'static str {
        "linear"
    }

    fn render_shape(&self) -> [usize; 3] {
        self.shape
    }

    fn init(&self, seeds: &[u64], device: &B::Device) -> Result<Self::Params> {
        Ok(LinearParams { theta: Param::from_tensor(Tensor::zeros([seeds.len(), 1, self.k], device)) })
    }

    fn render(&self, params: &Self::Params) -> Tensor<B, 4> {
        let theta = params.theta.val();
        let n = theta.dims()[0];
        let [c, h, w] = self.shape;
        let a = self.a.clone().unsqueeze::<3>().expand([n, self.k, c * h * w]);
        theta.matmul(a).reshape([n, c, h, w])
    }

    fn exact_fit(&self, _params: &Self::Params, target: Tensor<B::InnerBackend, 4>) -> Option<Self::Params> {
        let n = target.dims()[0];
        let d: usize = self.shape.iter().product();
        let pinv = self.pinv.clone().inner().unsqueeze::<3>().expand([n, d, self.k]);
        let theta = target.reshape([n, 1, d]).matmul(pinv);
        Some(LinearParams { theta: Param::from_tensor(Tensor::from_inner(theta)) })
    }

    fn export(&self, params: &Self::Params) -> Vec<NamedTensor> {
        let t = params.theta.val();
        vec![NamedTensor { name: "theta".into(), shape: t.dims().to_vec(), data: tensor_to_vec(t) }]
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "diffrep": "linear", "shape": self.shape, "columns": self.k })
    }
}

/// Parameters are the image itself: `[n, C, H, W]`.
#[derive(Module, Debug)]
pub struct IdentityParams<B: Backend> {
    pub image: Param<Tensor<B, 4>>,
}

/// `r(theta) = theta`: with it DDRep must reduce to the image-space sampler.
pub struct IdentityDiffrep {
    pub shape: [usize; 3],
}

impl<B: AutodiffBackend> Diffrep<B> for IdentityDiffrep {
    type Params = IdentityParams<B>;

    fn name(&self) -> &'static str {
        "identity"
    }

    fn render_shape(&self) -> [usize; 3] {
        self.shape
    }

    fn init(&self, seeds: &[u64], device: &B::Device) -> Result<Self::Params> {
        let [c, h, w] = self.shape;
        Ok(IdentityParams { image: Param::from_tensor(Tensor::zeros([seeds.len(), c, h, w], device)) })
    }

    fn render(&self, params: &Self::Params) -> Tensor<B, 4> {
        params.image.val()
    }

    fn exact_fit(&self, _params: &Self::Params, target: Tensor<B::InnerBackend, 4>) -> Option<Self::Params> {
        Some(IdentityParams { image: Param::from_tensor(Tensor::from_inner(target)) })
    }

    fn export(&self, params: &Self::Params) -> Vec<NamedTensor> {
        let t = params.image.val();
        vec![NamedTensor { name: "image".into(), shape: t.dims().to_vec(), data: tensor_to_vec(t) }]
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "diffrep": "identity", "shape": self.shape })
    }
}
