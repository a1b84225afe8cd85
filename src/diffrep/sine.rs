//! `sin(omega z)`, the SIREN activation, as one backend op with its own backward.
//!
//! On the CPU backend the generic path calls libm's scalar `sin` forward and `cos` backward,
//! which took a third of a paper-size SIREN Adam step. Here the CPU computes `sin` and
//! `omega cos` together in one vectorisable, multi-threaded pass and keeps the derivative
//! for the backward pass. Other backends use their own `sin`/`cos`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{ElementConversion, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

/// Backends that provide the SIREN activation.
pub trait SineBackend: Backend {
    /// `(sin(omega x), omega cos(omega x))`.
    fn sine_and_derivative(x: FloatTensor<Self>, omega: f32) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let z = Self::float_mul_scalar(x, omega.elem());
        let d = Self::float_mul_scalar(Self::float_cos(z.clone()), omega.elem());
        (Self::float_sin(z), d)
    }

    fn sine(x: FloatTensor<Self>, omega: f32) -> FloatTensor<Self> {
        Self::float_sin(Self::float_mul_scalar(x, omega.elem()))
    }
}

/// `sin(omega x)` on any backend that provides it.
pub fn sine<B: SineBackend, const D: usize>(x: Tensor<B, D>, omega: f64) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::sine(x.into_primitive().tensor(), omega as f32)))
}

/// `sin(r)` and `cos(r)` for `|r| <= pi/4` (Taylor to degree 9/10: error < 1e-8).
#[inline(always)]
fn sincos_reduced(r: f32) -> (f32, f32) {
    let r2 = r * r;
    let s = r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362_880.0)))));
    let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40_320.0 + r2 * (-1.0 / 3_628_800.0)))));
    (s, c)
}

/// `(sin x, cos x)` by reduction to quadrants of `pi/2` (Cody-Waite in f64 for accuracy at
/// the large arguments a SIREN's first layer can produce). Branch-free so it vectorises.
#[inline(always)]
pub fn fast_sincos(x: f32) -> (f32, f32) {
    // Round to nearest with the 1.5 * 2^52 trick (no libm call, so the loop vectorises); the
    // low mantissa bits of `t` then hold the quadrant.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let xd = x as f64;
    let t = xd * std::f64::consts::FRAC_2_PI + MAGIC;
    let q = t - MAGIC;
    let r = (xd - q * std::f64::consts::FRAC_PI_2) as f32;
    let (s, c) = sincos_reduced(r);
    let qi = t.to_bits() as i64;
    // Quadrant rotation: (sin, cos) of x = r + q pi/2.
    let swap = (qi & 1) != 0;
    let (s1, c1) = if swap { (c, -s) } else { (s, c) };
    let neg = (qi & 2) != 0;
    if neg {
        (-s1, -c1)
    } else {
        (s1, c1)
    }
}

const CHUNK: usize = 1 << 14;

fn host_sine(data: &[f32], omega: f32, derivative: bool) -> (Vec<f32>, Vec<f32>) {
    let mut s = vec![0.0f32; data.len()];
    let mut d = if derivative { vec![0.0f32; data.len()] } else { Vec::new() };
    if derivative {
        s.par_chunks_mut(CHUNK).zip(d.par_chunks_mut(CHUNK)).zip(data.par_chunks(CHUNK)).for_each(|((s, d), x)| {
            for i in 0..x.len() {
                let (a, b) = fast_sincos(omega * x[i]);
                s[i] = a;
                d[i] = omega * b;
            }
        });
    } else {
        s.par_chunks_mut(CHUNK).zip(data.par_chunks(CHUNK)).for_each(|(s, x)| {
            for i in 0..x.len() {
                s[i] = fast_sincos(omega * x[i]).0;
            }
        });
    }
    (s, d)
}

type Cpu = burn::backend::NdArray<f32>;

fn to_host(x: FloatTensor<Cpu>) -> TensorData {
    Tensor::<Cpu, 1>::from_primitive(TensorPrimitive::Float(x)).into_data().convert::<f32>()
}

impl SineBackend for Cpu {
    fn sine_and_derivative(x: FloatTensor<Self>, omega: f32) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let data = to_host(x);
        let shape = data.shape.clone();
        let (s, d) = host_sine(data.as_slice::<f32>().expect("f32 data"), omega, true);
        let device = Default::default();
        (Self::float_from_data(TensorData::new(s, shape.clone()), &device), Self::float_from_data(TensorData::new(d, shape), &device))
    }

    fn sine(x: FloatTensor<Self>, omega: f32) -> FloatTensor<Self> {
        let data = to_host(x);
        let shape = data.shape.clone();
        let (s, _) = host_sine(data.as_slice::<f32>().expect("f32 data"), omega, false);
        Self::float_from_data(TensorData::new(s, shape), &Default::default())
    }
}

#[cfg(feature = "cuda")]
impl SineBackend for burn::backend::Cuda<f32, i32> {}

#[derive(Debug)]
struct SineOp;

impl<B: Backend> Backward<B, 1> for SineOp {
    /// `omega cos(omega x)`, kept from the forward pass.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let derivative = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::float_mul(grad, derivative));
    }
}

impl<B: SineBackend, C: CheckpointStrategy> SineBackend for Autodiff<B, C> {
    fn sine(x: FloatTensor<Self>, omega: f32) -> FloatTensor<Self> {
        match SineOp.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (s, d) = B::sine_and_derivative(x.primitive, omega);
                prep.finish(d, s)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sine(x.primitive, omega)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff as Ad;

    #[test]
    fn fast_sincos_is_accurate() {
        let mut worst = 0.0f64;
        for i in -200_000..200_000 {
            let x = i as f32 * 1e-3 * 1.37;
            let (s, c) = fast_sincos(x);
            worst = worst.max((s as f64 - (x as f64).sin()).abs()).max((c as f64 - (x as f64).cos()).abs());
        }
        assert!(worst < 2e-7, "max error {worst}");
    }

    #[test]
    fn sine_op_matches_sin_and_its_gradient() {
        let device = Default::default();
        let v: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.031).collect();
        let x = Tensor::<Ad<Cpu>, 1>::from_floats(v.as_slice(), &device).require_grad();
        let y = sine(x.clone(), 1.7);
        let grads = (y.clone() * y.clone()).sum().backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let y = y.into_data().to_vec::<f32>().unwrap();
        for (i, &xi) in v.iter().enumerate() {
            let z = (1.7f32 * xi) as f64;
            assert!((y[i] as f64 - z.sin()).abs() < 1e-6);
            // d/dx sin^2(1.7 x) = 2 sin(z) cos(z) 1.7
            assert!((g[i] as f64 - 2.0 * z.sin() * z.cos() * 1.7).abs() < 1e-5, "{i}");
        }
    }
}
