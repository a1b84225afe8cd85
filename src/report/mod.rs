//! Reports on finished samples: `ddrep compare` for images from anywhere.

pub mod compare;
