//! Adamax (Kingma & Ba, §7.1), as PyTorch implements it: SJC's optimizer. burn has no
//! Adamax, so it is a `SimpleOptimizer` here.

use burn::module::AutodiffModule;
use burn::optim::{adaptor::OptimizerAdaptor, LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};

#[derive(Clone, Debug)]
pub struct Adamax {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
}

impl Default for Adamax {
    fn default() -> Self {
        Self { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 }
    }
}

#[derive(Record, Clone)]
pub struct AdamaxState<B: Backend, const D: usize> {
    pub time: usize,
    pub exp_avg: Tensor<B, D>,
    pub exp_inf: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for Adamax {
    type State<const D: usize> = AdamaxState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let abs_eps = grad.clone().abs().add_scalar(self.epsilon);
        let (time, exp_avg, exp_inf) = match state {
            Some(s) => (
                s.time + 1,
                s.exp_avg.mul_scalar(self.beta_1) + grad.mul_scalar(1.0 - self.beta_1),
                s.exp_inf.mul_scalar(self.beta_2).max_pair(abs_eps),
            ),
            None => (1, grad.mul_scalar(1.0 - self.beta_1), abs_eps),
        };
        let clr = lr / (1.0 - self.beta_1.powi(time as i32));
        let update = exp_avg.clone().div(exp_inf.clone()).mul_scalar(clr);
        (tensor - update, Some(AdamaxState { time, exp_avg, exp_inf }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.exp_avg = state.exp_avg.to_device(device);
        state.exp_inf = state.exp_inf.to_device(device);
        state
    }
}

impl Adamax {
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Adamax, M, B> {
        OptimizerAdaptor::from(self)
    }
}
