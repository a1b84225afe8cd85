//! A borrowed batch of NCHW f32 images on the host.

use super::{check_finite, MetricError, MetricResult};

/// A validated view of `N x C x H x W` f32 pixels (row-major, NCHW).
///
/// Construction checks that the length matches the shape, that no dimension is zero and that
/// every value is finite, so the metrics never see NaN pixels.
#[derive(Clone, Copy, Debug)]
pub struct ImageBatch<'a> {
    data: &'a [f32],
    shape: [usize; 4],
}

impl<'a> ImageBatch<'a> {
    /// Wraps `data` (NCHW). `what` names the input in error messages ("preds", "target").
    pub fn new(what: &str, data: &'a [f32], shape: [usize; 4]) -> MetricResult<Self> {
        if shape.contains(&0) {
            return Err(MetricError::Empty(format!("{what}: image batch of shape {shape:?}")));
        }
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(MetricError::DataLength {
                what: what.to_string(),
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        check_finite(what, data)?;
        Ok(Self { data, shape })
    }

    /// A single `C x H x W` image as a batch of one.
    pub fn single(what: &str, data: &'a [f32], chw: [usize; 3]) -> MetricResult<Self> {
        Self::new(what, data, [1, chw[0], chw[1], chw[2]])
    }

    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    pub fn len(&self) -> usize {
        self.shape[0]
    }
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
    /// Pixels of image `n` (`C*H*W` values).
    pub fn image(&self, n: usize) -> &'a [f32] {
        let s = self.shape[1] * self.shape[2] * self.shape[3];
        &self.data[n * s..(n + 1) * s]
    }
}

/// Errors unless the two batches have the same shape.
pub(crate) fn same_shape(a: &ImageBatch<'_>, b: &ImageBatch<'_>) -> MetricResult<()> {
    if a.shape() != b.shape() {
        return Err(MetricError::ShapeMismatch {
            what: "preds and target must have the same NCHW shape".into(),
            left: a.shape().to_vec(),
            right: b.shape().to_vec(),
        });
    }
    Ok(())
}
