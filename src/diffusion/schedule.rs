//! The SD1.5 noise schedule, its VE view (ALGORITHM.md §1) and diffusers' DDIM timesteps.

use anyhow::{bail, Result};

/// A discrete VP noise schedule: `abar_t` for each training timestep, plus the level the
/// last DDIM step lands on (`final_alpha_cumprod`).
#[derive(Clone, Debug)]
pub struct Schedule {
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
}

/// One position along a sampling chain: a training timestep, or the final level below it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Level {
    Timestep(usize),
    /// Below the first training timestep: `abar = final_alpha_cumprod`.
    Final,
}

impl Schedule {
    /// SD1.5: `scaled_linear` betas from 0.00085 to 0.012 over 1000 steps,
    /// `set_alpha_to_one = false` (the chain ends at `abar_0`, not 1).
    pub fn sd15() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000, false)
    }

    /// `beta_i = linspace(sqrt(beta_start), sqrt(beta_end), n)_i^2`, as diffusers' `scaled_linear`.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, n: usize, set_alpha_to_one: bool) -> Self {
        assert!(n >= 2, "a schedule needs at least two timesteps");
        let (a, b) = (beta_start.sqrt(), beta_end.sqrt());
        let mut abar = 1.0;
        let alphas_cumprod: Vec<f64> = (0..n)
            .map(|i| {
                let beta = (a + (b - a) * i as f64 / (n - 1) as f64).powi(2);
                abar *= 1.0 - beta;
                abar
            })
            .collect();
        let final_alpha_cumprod = if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Self { alphas_cumprod, final_alpha_cumprod }
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `abar` at a level.
    pub fn abar(&self, level: Level) -> f64 {
        match level {
            Level::Timestep(t) => self.alphas_cumprod[t],
            Level::Final => self.final_alpha_cumprod,
        }
    }

    /// Noise-to-signal ratio `sigma = sqrt((1 - abar) / abar)` (the VE noise level).
    pub fn sigma(&self, level: Level) -> f64 {
        let a = self.abar(level);
        ((1.0 - a) / a).sqrt()
    }

    /// Signal scale `s = sqrt(abar)`: `x_vp = s * x_ve`.
    pub fn scale(&self, level: Level) -> f64 {
        self.abar(level).sqrt()
    }

    /// All training sigmas sorted from largest to smallest (SJC's `us`).
    pub fn sigmas_descending(&self) -> Vec<f64> {
        let mut s: Vec<f64> = (0..self.num_train_timesteps())
            .map(|t| self.sigma(Level::Timestep(t)))
            .collect();
        s.sort_by(|a, b| b.partial_cmp(a).unwrap());
        s
    }

    /// The timestep whose sigma is closest to `sigma` (for denoisers that take timesteps).
    pub fn timestep_for_sigma(&self, sigma: f64) -> usize {
        let mut best = (0, f64::INFINITY);
        for t in 0..self.num_train_timesteps() {
            let d = (self.sigma(Level::Timestep(t)).ln() - sigma.ln()).abs();
            if d < best.1 {
                best = (t, d);
            }
        }
        best.0
    }

    /// diffusers' DDIM timesteps with `timestep_spacing = "leading"`: `(0..n) * (T / n)`,
    /// reversed, plus `steps_offset`.
    pub fn ddim_timesteps(&self, num_steps: usize, steps_offset: usize) -> Result<Vec<usize>> {
        let t_train = self.num_train_timesteps();
        if num_steps == 0 {
            bail!("the number of DDIM steps must be at least 1");
        }
        if num_steps > t_train {
            bail!("{num_steps} DDIM steps exceed the {t_train} training timesteps");
        }
        let ratio = t_train / num_steps;
        let ts: Vec<usize> = (0..num_steps).rev().map(|i| i * ratio + steps_offset).collect();
        if ts[0] >= t_train {
            bail!("steps_offset {steps_offset} pushes the first timestep past {}", t_train - 1);
        }
        Ok(ts)
    }

    /// The DDIM chain as levels: `levels[0]` is the starting noise, `levels[n]` the end.
    /// A step from `levels[k]` to `levels[k+1]` is diffusers' step from `t` to `t - T/n`.
    pub fn ddim_levels(&self, num_steps: usize, steps_offset: usize) -> Result<Vec<Level>> {
        let ts = self.ddim_timesteps(num_steps, steps_offset)?;
        let ratio = self.num_train_timesteps() / num_steps;
        let mut levels: Vec<Level> = ts.iter().map(|&t| Level::Timestep(t)).collect();
        // The last step goes to `t - ratio`, which is negative unless steps_offset >= ratio.
        let last = ts[ts.len() - 1] as i64 - ratio as i64;
        levels.push(if last >= 0 { Level::Timestep(last as usize) } else { Level::Final });
        Ok(levels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_timesteps_match_diffusers_convention() {
        let s = Schedule::sd15();
        let ts = s.ddim_timesteps(50, 1).unwrap();
        assert_eq!(ts[0], 981);
        assert_eq!(ts[49], 1);
        let lv = s.ddim_levels(50, 1).unwrap();
        assert_eq!(lv[50], Level::Final);
        assert!((s.abar(Level::Final) - s.abar(Level::Timestep(0))).abs() < 1e-15);
        assert!(s.ddim_timesteps(0, 1).is_err());
    }

    #[test]
    fn ve_view_is_consistent() {
        let s = Schedule::sd15();
        for t in [0usize, 10, 500, 999] {
            let l = Level::Timestep(t);
            let sig = s.sigma(l);
            assert!((s.scale(l) - 1.0 / (1.0 + sig * sig).sqrt()).abs() < 1e-12);
        }
        let d = s.sigmas_descending();
        assert!(d[0] > d[999]);
        assert_eq!(s.timestep_for_sigma(s.sigma(Level::Timestep(321))), 321);
    }
}
