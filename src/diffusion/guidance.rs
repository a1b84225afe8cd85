//! Classifier-free guidance `eps_u + w (eps_c - eps_u)` under the two conventions of
//! ALGORITHM.md §1.

use serde::{Deserialize, Serialize};

/// How a CFG scale maps to model passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CfgConvention {
    /// Hugging Face's pipeline: guidance only when `w > 1`; otherwise one conditional pass.
    #[default]
    Diffusers,
    /// The formula as written: `w = 0` is unconditional, `w = 1` conditional.
    Literal,
}

impl std::str::FromStr for CfgConvention {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "diffusers" => Ok(Self::Diffusers),
            "literal" => Ok(Self::Literal),
            other => anyhow::bail!("unknown CFG convention '{other}' (expected diffusers or literal)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guidance {
    pub scale: f64,
    #[serde(default)]
    pub convention: CfgConvention,
}

/// Which model evaluations a guidance setting needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Passes {
    Conditional,
    Unconditional,
    /// Both, combined with this weight.
    Both(f64),
}

impl Guidance {
    pub fn new(scale: f64, convention: CfgConvention) -> Self {
        Self { scale, convention }
    }

    pub fn passes(&self) -> Passes {
        match self.convention {
            CfgConvention::Diffusers if self.scale <= 1.0 => Passes::Conditional,
            CfgConvention::Literal if self.scale == 0.0 => Passes::Unconditional,
            CfgConvention::Literal if self.scale == 1.0 => Passes::Conditional,
            _ => Passes::Both(self.scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        let d = |w| Guidance::new(w, CfgConvention::Diffusers).passes();
        let l = |w| Guidance::new(w, CfgConvention::Literal).passes();
        assert_eq!(d(0.0), Passes::Conditional);
        assert_eq!(d(1.0), Passes::Conditional);
        assert_eq!(d(3.0), Passes::Both(3.0));
        assert_eq!(l(0.0), Passes::Unconditional);
        assert_eq!(l(1.0), Passes::Conditional);
        assert_eq!(l(0.5), Passes::Both(0.5));
    }
}
