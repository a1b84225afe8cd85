//! Upper bounds on the sizes that configs and flags set. A typo such as `steps: 100000000000`
//! or `views: 100000000` would otherwise ask for terabytes and end in an allocation abort; with
//! these it is a one-line error naming the setting. Each bound sits far above anything the
//! paper's experiments use, so none limits a real run.

use anyhow::{bail, Result};

/// DDIM steps of one chain (the largest training schedule one could load has this many levels).
pub const MAX_STEPS: usize = 100_000;
/// Moves of one chain, RePaint's jumps included (a chain's moves are stored before it runs).
pub const MAX_CHAIN_MOVES: usize = 10_000_000;
/// Training timesteps of a noise schedule.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;
/// Cells of one experiment grid (each cell is ~5 kB of keys in memory before anything runs).
pub const MAX_GRID_CELLS: usize = 200_000;
/// Pixels per side of an image, a view or an analytic prior.
pub const MAX_SIDE: usize = 8192;
/// Elements (channels x pixels) of one image or view.
pub const MAX_IMAGE_ELEMENTS: usize = 1 << 26;
/// Channels of an image or of an analytic prior.
pub const MAX_CHANNELS: usize = 64;
/// Views rendered per step of a panorama or NeRF.
pub const MAX_VIEWS: usize = 1024;
/// Voxels per axis of a voxel NeRF.
pub const MAX_VOXEL_GRID: usize = 512;
/// Frames of a NeRF turntable video.
pub const MAX_TURNTABLE: usize = 3600;
/// Samples drawn at once by `ddrep sample` (each is its own diffrep in memory).
pub const MAX_SAMPLES: usize = 10_000;
/// Hidden width of a SIREN.
pub const MAX_SIREN_WIDTH: usize = 8192;
/// Hidden layers of a SIREN.
pub const MAX_SIREN_DEPTH: usize = 256;

/// Optimiser steps: Adam steps per DDIM step (DDRep's solver; paper: 200), SJC and SDS
/// iterations (SJC's NeRF: 10,000). A typo of 10^12 would otherwise run for ever.
pub const MAX_ITERATIONS: usize = 10_000_000;
/// Layers of an SD1.5 model part: per block in the UNet and the VAE (`layers_per_block`,
/// `transformer_layers_per_block`; SD1.5: 2 and 1), in all in the text encoder
/// (`num_hidden_layers`; 12). A config is read before its weights, and each layer asks the
/// weight file for its tensors.
pub const MAX_MODEL_LAYERS: usize = 1024;

/// Refuses `value` above `max`, naming the setting.
pub fn at_most(what: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        bail!("{what} is {value}; at most {max}");
    }
    Ok(())
}

/// Checks an image shape `[channels, height, width]`.
pub fn image_shape(what: &str, [c, h, w]: [usize; 3]) -> Result<()> {
    at_most(&format!("{what} channels"), c, MAX_CHANNELS)?;
    at_most(&format!("{what} height"), h, MAX_SIDE)?;
    at_most(&format!("{what} width"), w, MAX_SIDE)?;
    at_most(&format!("{what} size (channels x height x width)"), c * h * w, MAX_IMAGE_ELEMENTS)
}
