//! Diffusion math: schedule, DDIM step, separated noise, RePaint, guidance, the Denoiser trait.

pub mod ddim;
pub mod denoiser;
pub mod guidance;
pub mod repaint;
pub mod schedule;

pub use ddim::{check_ddim_settings, ddim_step, ddim_step_vp, repaint_forward, repaint_forward_plain, separated_noise, DdimCoeffs};
pub use denoiser::{Denoiser, GuidedDenoiser};
pub use guidance::{CfgConvention, Guidance, Passes};
pub use repaint::{chain_moves, nfe_count, Move, RepaintConfig};
pub use schedule::{Level, Schedule};
