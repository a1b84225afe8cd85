//! Cameras and view samplers for multiview diffreps (paper §3.2, §4.2, §4.3).
//!
//! World frame: `y` up, a camera at azimuth `az` and elevation `el` on a sphere of radius `r`
//! sits at `r (cos el sin az, sin el, cos el cos az)` and looks at the origin. A panorama
//! camera sits at the origin and looks outward along `(sin az, 0, cos az)`. Pixel `(i, j)`
//! (row, column) of an `H x W` pinhole view has the camera-frame direction
//! `((2 (j + 1/2) / W - 1) tan(fov_x / 2), -(2 (i + 1/2) / H - 1) tan(fov_y / 2), 1)` along
//! (right, up, forward).

use std::f64::consts::PI;

use anyhow::{bail, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Diagonal of the 35 mm film frame (36 x 24 mm), in mm.
pub const FULL_FRAME_DIAGONAL_MM: f64 = 43.266_615_305_567_87;

/// Horizontal and vertical field of view (radians) of a lens of `focal_mm` in 35 mm terms on a
/// frame of aspect `width / height`, the frame having the full-frame diagonal (3:2 gives
/// exactly 36 x 24 mm; 50 mm gives 39.6 x 27.0 degrees).
pub fn fov_from_focal_35mm(focal_mm: f64, aspect: f64) -> Result<(f64, f64)> {
    if !(focal_mm.is_finite() && focal_mm > 0.0) {
        bail!("focal length must be positive, got {focal_mm} mm");
    }
    if !(aspect.is_finite() && aspect > 0.0) {
        bail!("aspect ratio must be positive, got {aspect}");
    }
    let h = FULL_FRAME_DIAGONAL_MM / (1.0 + aspect * aspect).sqrt();
    let w = aspect * h;
    Ok((2.0 * (w / (2.0 * focal_mm)).atan(), 2.0 * (h / (2.0 * focal_mm)).atan()))
}

fn check_fov(name: &str, fov_rad: f64) -> Result<()> {
    if !(fov_rad.is_finite() && fov_rad > 0.0 && fov_rad < PI) {
        bail!("{name} must be in (0, 180) degrees, got {} degrees", fov_rad.to_degrees());
    }
    Ok(())
}

fn check_resolution(res: [usize; 2]) -> Result<()> {
    if res[0] == 0 || res[1] == 0 {
        bail!("view resolution must be positive, got {res:?}");
    }
    crate::limits::image_shape("a view", [1, res[0], res[1]])
}

/// One pinhole view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// Centre of projection.
    pub position: [f64; 3],
    /// Radians, about `y`, 0 = looking along `+z` (panorama) / sitting on `+z` (orbit).
    pub azimuth: f64,
    /// Radians above the horizontal plane.
    pub elevation: f64,
    pub fov_x: f64,
    pub fov_y: f64,
    /// `[H, W]` pixels.
    pub resolution: [usize; 2],
    /// Orthonormal camera frame (world coordinates).
    pub right: [f64; 3],
    pub up: [f64; 3],
    pub forward: [f64; 3],
}

fn normalize(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

impl Camera {
    /// A camera at `position` looking along `forward`, with `y` as the up reference.
    pub fn looking(position: [f64; 3], forward: [f64; 3], azimuth: f64, elevation: f64, fov: (f64, f64), resolution: [usize; 2]) -> Result<Self> {
        check_fov("fov_x", fov.0)?;
        check_fov("fov_y", fov.1)?;
        check_resolution(resolution)?;
        let forward = normalize(forward);
        // Right-handed: right = forward x up_ref, up = right x forward (looking down -z... here +forward).
        let mut right = cross(forward, [0.0, 1.0, 0.0]);
        if (right[0] * right[0] + right[1] * right[1] + right[2] * right[2]) < 1e-18 {
            // Looking straight up or down: any horizontal right vector, fixed by the azimuth.
            right = [-azimuth.cos(), 0.0, azimuth.sin()];
        }
        let right = normalize(right);
        let up = cross(right, forward);
        Ok(Self { position, azimuth, elevation, fov_x: fov.0, fov_y: fov.1, resolution, right, up, forward })
    }

    /// Camera-frame coordinates `(u, v)` of pixel `(i, j)` on the plane at unit depth.
    pub fn pixel_plane(&self, i: usize, j: usize) -> (f64, f64) {
        let [h, w] = self.resolution;
        let u = (2.0 * (j as f64 + 0.5) / w as f64 - 1.0) * (self.fov_x / 2.0).tan();
        let v = -(2.0 * (i as f64 + 0.5) / h as f64 - 1.0) * (self.fov_y / 2.0).tan();
        (u, v)
    }

    /// Unit world direction of the ray through pixel `(i, j)`.
    pub fn pixel_direction(&self, i: usize, j: usize) -> [f64; 3] {
        let (u, v) = self.pixel_plane(i, j);
        normalize([0, 1, 2].map(|k| u * self.right[k] + v * self.up[k] + self.forward[k]))
    }

    /// All ray directions, row-major.
    pub fn directions(&self) -> Vec<[f64; 3]> {
        let [h, w] = self.resolution;
        (0..h).flat_map(|i| (0..w).map(move |j| (i, j))).map(|(i, j)| self.pixel_direction(i, j)).collect()
    }

    /// Coarse view label for view-dependent prompts, as DreamFusion / SJC: overhead above
    /// 60 degrees elevation, else front (|az| < 45), back (|az| > 135) or side.
    pub fn label(&self) -> &'static str {
        if self.elevation.to_degrees() > 60.0 {
            return "overhead";
        }
        let a = self.azimuth.to_degrees().rem_euclid(360.0);
        let a = if a > 180.0 { a - 360.0 } else { a }.abs();
        if a < 45.0 {
            "front"
        } else if a > 135.0 {
            "back"
        } else {
            "side"
        }
    }
}

fn d_pano_views() -> usize {
    12
}
fn d_focal() -> f64 {
    50.0
}
fn d_aspect() -> f64 {
    1.5
}
fn d_pano_res() -> [usize; 2] {
    [64, 96]
}
fn yes() -> bool {
    true
}

/// Views from the centre of a cylinder (panorama, paper §4.2): `views` cameras at elevation
/// 0 and equally spaced azimuths, rotated together by a random offset per sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CylinderViews {
    #[serde(default = "d_pano_views")]
    pub views: usize,
    /// 35 mm-equivalent focal length (paper: 50 mm).
    #[serde(default = "d_focal")]
    pub focal_mm: f64,
    /// Frame aspect width / height (paper: 3:2).
    #[serde(default = "d_aspect")]
    pub aspect: f64,
    /// `[H, W]` pixels (latents) per view.
    #[serde(default = "d_pano_res")]
    pub resolution: [usize; 2],
    /// Random common azimuth offset per sample (else the first view is at azimuth 0).
    #[serde(default = "yes")]
    pub jitter: bool,
}

impl Default for CylinderViews {
    fn default() -> Self {
        Self { views: d_pano_views(), focal_mm: d_focal(), aspect: d_aspect(), resolution: d_pano_res(), jitter: true }
    }
}

impl CylinderViews {
    pub fn fov(&self) -> Result<(f64, f64)> {
        fov_from_focal_35mm(self.focal_mm, self.aspect)
    }

    pub fn validate(&self) -> Result<()> {
        if self.views == 0 {
            bail!("a panorama needs at least one view per step, got 0");
        }
        crate::limits::at_most("panorama views per step", self.views, crate::limits::MAX_VIEWS)?;
        check_resolution(self.resolution)?;
        let (fx, fy) = self.fov()?;
        check_fov("the panorama view's horizontal field of view", fx)?;
        check_fov("the panorama view's vertical field of view", fy)?;
        Ok(())
    }

    /// Fraction of the circle the views cover, summed (> 1 means they overlap).
    pub fn coverage(&self) -> Result<f64> {
        Ok(self.views as f64 * self.fov()?.0 / (2.0 * PI))
    }

    /// The cameras of one sample.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Result<Vec<Camera>> {
        self.validate()?;
        let offset = if self.jitter { rng.random_range(0.0..2.0 * PI) } else { 0.0 };
        self.at_offset(offset)
    }

    /// Equally spaced cameras starting at azimuth `offset`.
    pub fn at_offset(&self, offset: f64) -> Result<Vec<Camera>> {
        self.validate()?;
        let fov = self.fov()?;
        (0..self.views)
            .map(|k| {
                let az = offset + 2.0 * PI * k as f64 / self.views as f64;
                Camera::looking([0.0; 3], [az.sin(), 0.0, az.cos()], az, 0.0, fov, self.resolution)
            })
            .collect()
    }
}

fn d_orbit_views() -> usize {
    8
}
fn d_fov60() -> f64 {
    60.0
}
fn d_radius() -> f64 {
    1.5
}
fn d_elev() -> [f64; 2] {
    [0.0, 30.0]
}
fn d_orbit_res() -> [usize; 2] {
    [64, 64]
}

/// Views on a sphere around an object (NeRF, paper §4.3, SJC's cameras): azimuths equally
/// spaced with a random offset, elevations uniform in a range, radius and FoV fixed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SphereViews {
    #[serde(default = "d_orbit_views")]
    pub views: usize,
    /// Field of view in degrees, on both axes (square pixels for square views).
    #[serde(default = "d_fov60")]
    pub fov_deg: f64,
    #[serde(default = "d_radius")]
    pub radius: f64,
    /// Elevation range in degrees.
    #[serde(default = "d_elev")]
    pub elevation_deg: [f64; 2],
    #[serde(default = "d_orbit_res")]
    pub resolution: [usize; 2],
    #[serde(default = "yes")]
    pub jitter: bool,
}

impl Default for SphereViews {
    fn default() -> Self {
        Self { views: d_orbit_views(), fov_deg: d_fov60(), radius: d_radius(), elevation_deg: d_elev(), resolution: d_orbit_res(), jitter: true }
    }
}

impl SphereViews {
    /// Checks the views; `half_extent` is the half side of the scene's bounding box, which
    /// every camera must stay outside (`radius > half_extent * sqrt(3)`).
    pub fn validate(&self, half_extent: Option<f64>) -> Result<()> {
        if self.views == 0 {
            bail!("a NeRF needs at least one view per step, got 0");
        }
        crate::limits::at_most("NeRF views per step", self.views, crate::limits::MAX_VIEWS)?;
        check_resolution(self.resolution)?;
        check_fov("the NeRF view's field of view", self.fov_deg.to_radians())?;
        if !(self.radius.is_finite() && self.radius > 0.0) {
            bail!("camera radius must be positive, got {}", self.radius);
        }
        let [lo, hi] = self.elevation_deg;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi && lo >= -90.0 && hi <= 90.0) {
            bail!("elevation range must be increasing within [-90, 90] degrees, got {:?}", self.elevation_deg);
        }
        if let Some(b) = half_extent {
            if self.radius <= b * 3f64.sqrt() {
                bail!(
                    "cameras at radius {} can be inside the grid bounds [-{b}, {b}]^3: the radius must exceed {:.4} (half extent x sqrt 3)",
                    self.radius,
                    b * 3f64.sqrt()
                );
            }
        }
        Ok(())
    }

    /// The camera at a given azimuth and elevation (radians).
    pub fn camera(&self, azimuth: f64, elevation: f64) -> Result<Camera> {
        let (ce, se) = (elevation.cos(), elevation.sin());
        let p = [self.radius * ce * azimuth.sin(), self.radius * se, self.radius * ce * azimuth.cos()];
        let fov = self.fov_deg.to_radians();
        Camera::looking(p, [-p[0], -p[1], -p[2]], azimuth, elevation, (fov, fov), self.resolution)
    }

    /// The cameras of one sample.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Result<Vec<Camera>> {
        self.validate(None)?;
        let offset = if self.jitter { rng.random_range(0.0..2.0 * PI) } else { 0.0 };
        let [lo, hi] = self.elevation_deg;
        (0..self.views)
            .map(|k| {
                let az = offset + 2.0 * PI * k as f64 / self.views as f64;
                let el = if self.jitter && hi > lo { rng.random_range(lo..hi) } else { 0.5 * (lo + hi) };
                self.camera(az, el.to_radians())
            })
            .collect()
    }

    /// `count` cameras at equally spaced azimuths and the middle elevation (a turntable).
    pub fn turntable(&self, count: usize) -> Result<Vec<Camera>> {
        if count == 0 {
            bail!("a turntable needs at least one view");
        }
        let el = 0.5 * (self.elevation_deg[0] + self.elevation_deg[1]);
        (0..count).map(|k| self.camera(2.0 * PI * k as f64 / count as f64, el.to_radians())).collect()
    }
}
