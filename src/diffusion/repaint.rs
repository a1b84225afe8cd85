//! RePaint schedules (Lugmayr et al. 2022, `get_schedule_jump`) over a DDIM chain of levels.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How often and how far the chain jumps back up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepaintConfig {
    /// Levels climbed per jump.
    pub jump_length: usize,
    /// How many times each jump point is passed (1 = no RePaint).
    pub jump_n_sample: usize,
}

/// One move of a chain over level indices (`0` = the starting noise, `n` = the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Denoise from level `from` to `from + 1`: one denoiser evaluation.
    Reverse { from: usize },
    /// Re-noise from level `from` to `from - 1`, undoing the reverse step `from - 1 -> from`.
    Forward { from: usize },
}

/// The moves of an `n`-step DDIM chain, with RePaint jumps if configured.
pub fn chain_moves(n: usize, repaint: Option<RepaintConfig>) -> Result<Vec<Move>> {
    if n == 0 {
        bail!("the number of DDIM steps must be at least 1");
    }
    crate::limits::at_most("the number of DDIM steps", n, crate::limits::MAX_STEPS)?;
    let Some(rp) = repaint else {
        return Ok((0..n).map(|from| Move::Reverse { from }).collect());
    };
    if rp.jump_length == 0 || rp.jump_n_sample == 0 {
        bail!("repaint.jump_length and repaint.jump_n_sample must be at least 1");
    }
    if rp.jump_length >= n && rp.jump_n_sample > 1 {
        bail!("repaint.jump_length ({}) must be smaller than the number of steps ({n})", rp.jump_length);
    }
    if chain_len(n, rp).is_none_or(|m| m > crate::limits::MAX_CHAIN_MOVES) {
        bail!(
            "repaint ({}, {}) over {n} steps makes a chain of more than {} moves",
            rp.jump_length,
            rp.jump_n_sample,
            crate::limits::MAX_CHAIN_MOVES
        );
    }
    // Lugmayr's schedule in their time index v (n-1 .. -1); level = n - 1 - v.
    let mut jumps = vec![0usize; n];
    let mut j = 0;
    while j + rp.jump_length < n {
        jumps[j] = rp.jump_n_sample - 1;
        j += rp.jump_length;
    }
    let mut ts: Vec<i64> = Vec::new();
    let mut t = n as i64;
    while t >= 1 {
        t -= 1;
        ts.push(t);
        if t >= 0 && jumps[t as usize] > 0 {
            jumps[t as usize] -= 1;
            for _ in 0..rp.jump_length {
                t += 1;
                ts.push(t);
            }
        }
    }
    ts.push(-1);
    let level = |v: i64| (n as i64 - 1 - v) as usize;
    Ok(ts
        .windows(2)
        .map(|w| {
            if w[1] < w[0] {
                Move::Reverse { from: level(w[0]) }
            } else {
                Move::Forward { from: level(w[0]) }
            }
        })
        .collect())
}

/// The number of moves [`chain_moves`] makes (None if it overflows `usize`), known before the
/// chain is built: each jump point (every `jump_length` levels below the top) is passed
/// `jump_n_sample - 1` more times, `jump_length` levels up and down again.
fn chain_len(n: usize, rp: RepaintConfig) -> Option<usize> {
    let points = if rp.jump_length < n { (n - rp.jump_length - 1) / rp.jump_length + 1 } else { 0 };
    rp.jump_n_sample.checked_sub(1)?.checked_mul(rp.jump_length)?.checked_mul(points)?.checked_mul(2)?.checked_add(n)
}

/// Denoiser evaluations of a chain: one per reverse move (forward moves reuse the latest x0).
pub fn nfe_count(moves: &[Move]) -> usize {
    moves.iter().filter(|m| matches!(m, Move::Reverse { .. })).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_nerf_schedule_has_199_nfes() {
        let m = chain_moves(100, Some(RepaintConfig { jump_length: 1, jump_n_sample: 2 })).unwrap();
        assert_eq!(nfe_count(&m), 199);
        assert_eq!(m.len() - nfe_count(&m), 99);
        // Starts at level 0 and ends at level 100.
        assert_eq!(m[0], Move::Reverse { from: 0 });
        assert_eq!(*m.last().unwrap(), Move::Reverse { from: 99 });
        // Levels stay in range and every forward move undoes the reverse move just before it.
        let mut level = 0usize;
        for w in m.iter() {
            match *w {
                Move::Reverse { from } => {
                    assert_eq!(from, level);
                    level += 1;
                }
                Move::Forward { from } => {
                    assert_eq!(from, level);
                    level -= 1;
                }
            }
        }
        assert_eq!(level, 100);
    }

    #[test]
    fn no_repaint_is_plain_chain() {
        let m = chain_moves(20, None).unwrap();
        assert_eq!(nfe_count(&m), 20);
        let m1 = chain_moves(20, Some(RepaintConfig { jump_length: 5, jump_n_sample: 1 })).unwrap();
        assert_eq!(m, m1);
        let m3 = chain_moves(20, Some(RepaintConfig { jump_length: 5, jump_n_sample: 3 })).unwrap();
        // Jumps at v = 0, 5, 10 (each passed 3 times): 20 + 3 * 2 * 5 reverse moves.
        assert_eq!(nfe_count(&m3), 50);
        assert!(chain_moves(0, None).is_err());
    }

    #[test]
    fn chain_length_is_known_before_building() {
        for n in [1, 2, 7, 20, 100] {
            for (l, k) in [(1, 1), (1, 2), (2, 3), (5, 3), (6, 2), (19, 4)] {
                let rp = RepaintConfig { jump_length: l, jump_n_sample: k };
                if let Ok(m) = chain_moves(n, Some(rp)) {
                    assert_eq!(chain_len(n, rp), Some(m.len()), "n {n}, repaint ({l}, {k})");
                }
            }
        }
        // Sizes that would not fit in memory are refused before anything is allocated.
        assert!(chain_moves(1_000_000_000, None).is_err());
        let e = chain_moves(10, Some(RepaintConfig { jump_length: 3, jump_n_sample: 1_000_000_000 })).unwrap_err();
        assert!(e.to_string().contains("more than 10000000 moves"), "{e}");
        assert!(chain_moves(10, Some(RepaintConfig { jump_length: 3, jump_n_sample: usize::MAX })).is_err());
    }
}
