//! Reports on finished samples: `ddrep score` for experiment grids, `ddrep compare` for
//! images from anywhere.

pub mod compare;
pub mod metric_args;
pub mod score;
