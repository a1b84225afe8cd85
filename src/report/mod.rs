//! Reports on finished samples: `ddrep score` for experiment grids, `ddrep compare` for
//! images from anywhere, `ddrep report` for tables, plots, image grids and an HTML gallery of
//! a scored grid.

pub mod compare;
pub mod data;
pub mod figures;
pub mod gallery;
pub mod generate;
pub mod grids;
pub mod metric_args;
pub mod plots;
pub mod score;
pub mod table;
