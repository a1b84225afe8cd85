//! Multiview geometry: the panorama's periodic embedding, the pinhole cameras, the voxel NeRF
//! renderer against closed-form transmittance and depth, gradients, and bad input.

use burn::module::Param;
use burn::tensor::Tensor;
use ddrep::backend::{Cpu, CpuAutodiff};
use ddrep::diffrep::cameras::{fov_from_focal_35mm, CylinderViews, SphereViews};
use ddrep::diffrep::panorama::cylinder_coords;
use ddrep::diffrep::siren::init_siren_params;
use ddrep::diffrep::{Diffrep, MultiviewDiffrep, PanoramaConfig, PanoramaDiffrep, VoxNerfConfig, VoxNerfDiffrep};
use ddrep::noise::{normal_vec, rng_for};
use ddrep::tensor_util::{tensor_from_vec, tensor_to_vec};

fn small_panorama() -> PanoramaConfig {
    PanoramaConfig {
        out_channels: 3,
        embedding_size: 32,
        depth: 2,
        width: 32,
        views: CylinderViews { views: 6, focal_mm: 24.0, resolution: [8, 12], ..Default::default() },
        ..Default::default()
    }
}

#[test]
fn panorama_embedding_and_render_are_periodic_in_azimuth() {
    let device = Default::default();
    let rep = PanoramaDiffrep::<CpuAutodiff>::new(small_panorama(), &device).unwrap();
    // The x frequencies are whole cycles per turn.
    let kx = rep.config().frequencies_x().unwrap();
    assert!(kx.windows(2).all(|w| w[0] < w[1]) && kx[0] >= 1, "{kx:?}");
    let mut rng = rng_for(7, "test-points");
    let base: Vec<[f64; 2]> = normal_vec(&mut rng, 128).chunks(2).map(|c| [c[0].tanh() as f64, (c[1] as f64).abs().fract()]).collect();
    let shifted: Vec<[f64; 2]> = base.iter().flat_map(|&[y, x]| [[y, x + 1.0], [y, x - 1.0], [y, x + 3.0]]).collect();
    let e0 = rep.embedding(&base);
    let e1 = rep.embedding(&shifted);
    let e = rep.config().embedding_size;
    let mut worst = 0.0f32;
    for (p, row) in e1.chunks(e).enumerate() {
        let r0 = &e0[(p / 3) * e..(p / 3 + 1) * e];
        worst = worst.max(row.iter().zip(r0).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
    }
    assert!(worst <= 1e-6, "embedding differs by {worst:e} after whole turns");

    // A SIREN with a non-zero output layer: the render is periodic, and not constant.
    let mut params = init_siren_params::<CpuAutodiff>(&rep.config().siren(), &[3, 4], &device).unwrap();
    let last = params.weights.len() - 1;
    let dims = params.weights[last].dims();
    let w: Tensor<CpuAutodiff, 3> = tensor_from_vec(normal_vec(&mut rng, dims.iter().product()), dims, &device);
    params.weights[last] = Param::from_tensor(w);
    let r0 = tensor_to_vec(rep.render_points(&params, &base));
    let r1 = tensor_to_vec(rep.render_points(&params, &shifted.iter().step_by(3).cloned().collect::<Vec<_>>()));
    let d = r0.iter().zip(&r1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d <= 1e-6, "render differs by {d:e} after one turn");
    let half: Vec<[f64; 2]> = base.iter().map(|&[y, x]| [y, x + 0.37]).collect();
    let r2 = tensor_to_vec(rep.render_points(&params, &half));
    let spread = r0.iter().zip(&r2).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(spread > 1e-2, "the test SIREN is (nearly) constant in x: {spread:e}");

    // The whole panorama's first and last columns are neighbours: closer than columns half a
    // turn apart.
    let pano = tensor_to_vec(rep.render_panorama(&params));
    let [_, h, wp] = Diffrep::<CpuAutodiff>::render_shape(&rep);
    let col = |j: usize| -> Vec<f32> { (0..3 * 2 * h).map(|r| pano[r * wp + j]).collect() };
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
    let seam = dist(&col(0), &col(wp - 1));
    let inner = dist(&col(0), &col(1));
    assert!(seam < 3.0 * inner + 1e-6, "seam {seam} vs neighbouring columns {inner}");
}

#[test]
fn fov_of_a_50mm_lens_on_3_2_is_that_of_36_by_24_mm() {
    let (fx, fy) = fov_from_focal_35mm(50.0, 1.5).unwrap();
    assert!((fx - 2.0 * (18.0f64 / 50.0).atan()).abs() < 1e-12, "{}", fx.to_degrees());
    assert!((fy - 2.0 * (12.0f64 / 50.0).atan()).abs() < 1e-12, "{}", fy.to_degrees());
    assert!((fx.to_degrees() - 39.6).abs() < 0.05 && (fy.to_degrees() - 26.99).abs() < 0.05);
}

/// Projects world point `p` with the pinhole model of focal length `f_px` pixels and principal
/// point at the image centre: returns (column, row) in continuous pixel units.
fn project(cam: &ddrep::diffrep::Camera, p: [f64; 3], f_px: (f64, f64)) -> (f64, f64) {
    let q = [p[0] - cam.position[0], p[1] - cam.position[1], p[2] - cam.position[2]];
    let dot = |a: [f64; 3]| a[0] * q[0] + a[1] * q[1] + a[2] * q[2];
    let (x, y, z) = (dot(cam.right), dot(cam.up), dot(cam.forward));
    let [h, w] = cam.resolution;
    (f_px.0 * x / z + w as f64 / 2.0, -f_px.1 * y / z + h as f64 / 2.0)
}

#[test]
fn pixel_directions_match_the_pinhole_model() {
    // Panorama camera: 50 mm on 36 x 24 mm, 64 x 96 pixels: f_px = 50 / 36 * 96 on both axes.
    let pano = CylinderViews { views: 5, jitter: false, ..Default::default() };
    let f = 50.0 / 36.0 * 96.0;
    let orbit = SphereViews { views: 3, resolution: [16, 24], fov_deg: 60.0, ..Default::default() };
    let fo = (12.0 / (30f64.to_radians()).tan(), 8.0 / (30f64.to_radians()).tan());
    let mut rng = rng_for(1, "cams");
    let mut cams: Vec<(ddrep::diffrep::Camera, (f64, f64))> = pano.at_offset(0.3).unwrap().into_iter().map(|c| (c, (f, f))).collect();
    cams.extend(orbit.sample(&mut rng).unwrap().into_iter().map(|c| (c, fo)));
    for (cam, fpx) in &cams {
        // An orthonormal right-handed frame with `up` having no downward tilt.
        let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
        for (a, b) in [(cam.right, cam.up), (cam.right, cam.forward), (cam.up, cam.forward)] {
            assert!(dot(a, b).abs() < 1e-12);
        }
        assert!(cam.up[1] >= 0.0 && cam.right[1].abs() < 1e-12);
        let [h, w] = cam.resolution;
        for (i, j) in [(0, 0), (h - 1, w - 1), (h / 2, 3), (1, w / 2)] {
            let d = cam.pixel_direction(i, j);
            assert!((dot(d, d) - 1.0).abs() < 1e-12);
            let p = [0, 1, 2].map(|k| cam.position[k] + 2.7 * d[k]);
            let (u, v) = project(cam, p, *fpx);
            assert!((u - (j as f64 + 0.5)).abs() < 1e-9 && (v - (i as f64 + 0.5)).abs() < 1e-9, "pixel ({i}, {j}) reprojects to ({v}, {u})");
        }
    }
    // Orbit cameras look at the origin from the configured radius.
    for (cam, _) in &cams[5..] {
        let r = cam.position.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((r - 1.5).abs() < 1e-12);
        for k in 0..3 {
            assert!((cam.forward[k] + cam.position[k] / r).abs() < 1e-12);
        }
    }
    // Cylinder coordinates: the centre column of a level view is at the view's azimuth (in
    // turns, increasing to the right) and its rows span y in [-1, 1].
    let (_, fy) = pano.fov().unwrap();
    let cam = &cams[2].0;
    let c = cylinder_coords(cam.forward, fy);
    assert!((c[1] - (-cam.azimuth / std::f64::consts::TAU).rem_euclid(1.0)).abs() < 1e-12 && c[0].abs() < 1e-12);
    let top = cylinder_coords(cam.pixel_direction(0, 47), fy)[0];
    let right = cylinder_coords(cam.pixel_direction(32, 60), fy)[1];
    assert!(top < -0.9 && top > -1.0, "{top}");
    assert!((right - c[1]).rem_euclid(1.0) < 0.1, "x must increase to the right: {right} vs {}", c[1]);
}

/// A voxel NeRF holding a sphere of radius `r` and density `sigma` with colour `col`, against
/// background `bg`.
fn sphere_nerf(grid: usize, r: f64, sigma: f64, col: [f32; 3], bg: [f32; 3], radius: f64) -> (VoxNerfDiffrep, ddrep::diffrep::VoxNerfParams<Cpu>) {
    let cfg = VoxNerfConfig {
        grid,
        bound: 1.0,
        channels: 3,
        background: 4,
        views: SphereViews { views: 2, fov_deg: 40.0, radius, resolution: [9, 9], elevation_deg: [20.0, 20.0], ..Default::default() },
        // Every sample's colour counts, for the closed form (SJC's 1e-4 cut drops ~1e-3 of it).
        weight_threshold: 0.0,
        ..Default::default()
    };
    let rep = VoxNerfDiffrep::new(cfg).unwrap();
    let c = rep.config().clone();
    // softplus(raw + shift) = sigma inside.
    let raw_in = ((sigma.exp() - 1.0).ln() - c.density_shift) as f32;
    let mut dens = Vec::new();
    for iz in 0..grid {
        for iy in 0..grid {
            for ix in 0..grid {
                let p = [c.cell_centre(ix), c.cell_centre(iy), c.cell_centre(iz)];
                dens.push(if (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() < r { raw_in } else { -60.0 });
            }
        }
    }
    let feats: Vec<f32> = (0..grid.pow(3)).flat_map(|_| col).collect();
    let bgv: Vec<f32> = (0..16).flat_map(|_| bg).collect();
    let params = rep.params_from_host::<Cpu>(vec![dens], vec![feats], vec![bgv], &Default::default()).unwrap();
    (rep, params)
}

#[test]
fn nerf_renders_a_constant_density_sphere_with_closed_form_transmittance_and_depth() {
    let (r, sigma) = (0.6, 3.0);
    let (col, bg) = ([0.5, -0.2, 0.1], [-0.8, 0.4, 0.0]);
    let (rep, params) = sphere_nerf(64, r, sigma, col, bg, 3.0);
    let c = rep.config().clone();
    let cams = vec![c.views.camera(0.4, 0.35).unwrap(), c.views.camera(2.0, -0.2).unwrap()];
    let views = rep.prepare::<Cpu>(cams.clone(), &Default::default()).unwrap();
    let out = rep.render_full(&params, &views);
    let (img, op, depth) = (tensor_to_vec(out.image), tensor_to_vec(out.opacity), tensor_to_vec(out.depth));
    // Error bar: the sphere's edge is known to within a voxel (cell-centre classification
    // plus trilinear blending) and the quadrature to within a step.
    let h = c.voxel() + c.step();
    let law = |rr: f64, b: f64, tmid: f64| -> (f64, f64) {
        let l = 2.0 * (rr * rr - b * b).max(0.0).sqrt();
        let opacity = 1.0 - (-sigma * l).exp();
        let t0 = tmid - l / 2.0;
        let depth = t0 + 1.0 / sigma - l * (-sigma * l).exp() / opacity;
        (opacity, depth)
    };
    let (mut hits, mut misses, mut worst) = (0, 0, 0.0f64);
    for (v, cam) in cams.iter().enumerate() {
        for i in 0..9 {
            for j in 0..9 {
                let d = cam.pixel_direction(i, j);
                let o = cam.position;
                let tmid = -(o[0] * d[0] + o[1] * d[1] + o[2] * d[2]);
                let b = ((0..3).map(|k| (o[k] + tmid * d[k]).powi(2)).sum::<f64>()).sqrt();
                let px = (v * 9 + i) * 9 + j;
                let (o_meas, d_meas) = (op[px] as f64, depth[px] as f64);
                if b < r - 2.0 * h {
                    hits += 1;
                    let (lo, hi) = (law(r - h, b, tmid), law(r + h, b, tmid));
                    assert!(o_meas >= lo.0 - 1e-5 && o_meas <= hi.0 + 1e-5, "view {v} pixel ({i}, {j}): opacity {o_meas} outside [{}, {}]", lo.0, hi.0);
                    let (dlo, dhi) = (lo.1.min(hi.1), lo.1.max(hi.1));
                    assert!(d_meas >= dlo - 1e-4 && d_meas <= dhi + 1e-4, "view {v} pixel ({i}, {j}): depth {d_meas} outside [{dlo}, {dhi}]");
                    worst = worst.max(((o_meas - law(r, b, tmid).0) / (hi.0 - lo.0)).abs());
                } else if b > r + 2.0 * h {
                    misses += 1;
                    assert!(o_meas < 1e-6, "a ray missing the sphere has opacity {o_meas}");
                }
                // Colour: the sphere's over the background, by the opacity.
                for ch in 0..3 {
                    let want = col[ch] as f64 * o_meas + bg[ch] as f64 * (1.0 - o_meas);
                    let got = img[((v * 3 + ch) * 9 + i) * 9 + j] as f64;
                    assert!((got - want).abs() < 1e-4, "colour {got} vs {want}");
                }
            }
        }
    }
    eprintln!("{hits} hit rays within the bar; worst |opacity - exact-radius law| = {worst:.2} bar widths");
    assert!(hits >= 10 && misses >= 10, "{hits} hits, {misses} misses: the test views do not frame the sphere");
}

#[test]
fn gradients_flow_to_both_grids_and_the_background_and_match_finite_differences() {
    let device = Default::default();
    let cfg = VoxNerfConfig {
        grid: 8,
        bound: 0.5,
        channels: 3,
        blob_lambda: 2.0,
        views: SphereViews { views: 2, resolution: [6, 6], ..Default::default() },
        ..Default::default()
    };
    let rep = VoxNerfDiffrep::new(cfg).unwrap();
    let params = Diffrep::<CpuAutodiff>::init(&rep, &[5], &device).unwrap();
    let views = MultiviewDiffrep::<CpuAutodiff>::sample_views(&rep, &mut [rng_for(5, "v")], &device).unwrap();
    let weights: Tensor<CpuAutodiff, 4> = tensor_from_vec(normal_vec(&mut rng_for(9, "w"), 2 * 3 * 36), [2, 3, 6, 6], &device);
    let loss = |p: &ddrep::diffrep::VoxNerfParams<CpuAutodiff>| (rep.render_views(p, &views) * weights.clone()).sum();
    let grads = loss(&params).backward();
    let gd = tensor_to_vec(params.density.grad(&grads).unwrap());
    let gf = tensor_to_vec(params.features.grad(&grads).unwrap());
    let gb = tensor_to_vec(params.background.grad(&grads).unwrap());
    for (name, g) in [("density", &gd), ("features", &gf), ("background", &gb)] {
        let nz = g.iter().filter(|x| x.abs() > 0.0).count();
        assert!(nz > 0 && g.iter().all(|x| x.is_finite()), "{name}: {nz} non-zero gradient entries");
    }
    // Finite differences on the density cell with the largest gradient.
    let (cell, &g) = gd.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
    let base = tensor_to_vec(params.density.val());
    let at = |delta: f32| {
        let mut d = base.clone();
        d[cell] += delta;
        let p = ddrep::diffrep::VoxNerfParams {
            density: Param::from_tensor(tensor_from_vec(d, [1, 512], &device)),
            features: params.features.clone(),
            background: params.background.clone(),
        };
        tensor_to_vec(loss(&p))[0] as f64
    };
    let eps = 1e-2;
    let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
    assert!((fd - g as f64).abs() <= 0.02 * (g as f64).abs() + 1e-3, "density gradient {g} vs finite difference {fd}");
}

#[test]
fn bad_views_and_grids_are_clear_errors() {
    let device = Default::default();
    let err = |r: anyhow::Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
    // Zero views.
    let e = err(CylinderViews { views: 0, ..Default::default() }.validate());
    assert!(e.contains("at least one view"), "{e}");
    let e = err(SphereViews { views: 0, ..Default::default() }.validate(None));
    assert!(e.contains("at least one view"), "{e}");
    let e = err(PanoramaDiffrep::<CpuAutodiff>::new(PanoramaConfig { views: CylinderViews { views: 0, ..Default::default() }, ..Default::default() }, &device).map(|_| ()));
    assert!(e.contains("at least one view"), "{e}");
    // Fields of view out of (0, 180).
    for fov in [0.0, -10.0, 180.0, 200.0, f64::NAN] {
        let e = err(SphereViews { fov_deg: fov, ..Default::default() }.validate(None));
        assert!(e.contains("field of view") && e.contains("(0, 180)"), "{fov}: {e}");
    }
    for focal in [0.0, -50.0] {
        let e = err(CylinderViews { focal_mm: focal, ..Default::default() }.validate());
        assert!(e.contains("focal length"), "{e}");
    }
    // Grid and view resolution 0.
    let e = err(VoxNerfDiffrep::new(VoxNerfConfig { grid: 0, ..Default::default() }).map(|_| ()));
    assert!(e.contains("grid") && e.contains("at least 1"), "{e}");
    let e = err(CylinderViews { resolution: [0, 8], ..Default::default() }.validate());
    assert!(e.contains("resolution"), "{e}");
    // Cameras inside the grid bounds.
    let e = err(VoxNerfDiffrep::new(VoxNerfConfig { views: SphereViews { radius: 1.0, ..Default::default() }, ..Default::default() }).map(|_| ()));
    assert!(e.contains("inside the grid bounds"), "{e}");
    let rep = VoxNerfDiffrep::new(VoxNerfConfig { grid: 4, views: SphereViews { views: 1, ..Default::default() }, ..Default::default() }).unwrap();
    let mut cam = rep.config().views.camera(0.0, 0.0).unwrap();
    cam.position = [0.1, 0.0, 0.2];
    let e = err(rep.prepare::<Cpu>(vec![cam], &device).map(|_| ()));
    assert!(e.contains("inside the grid bounds"), "{e}");
}
