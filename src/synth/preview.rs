//! PNG previews of a study at lung window (width 1500, level -600): an axial and a coronal
//! slice through a point (usually a nodule), side by side, with nodule voxels tinted red.

use crate::volume::Volume;
use std::path::Path;

/// Writes the preview of `hu` (with `labels`, same geometry) through voxel `at`.
pub fn write_preview(
    path: &Path,
    hu: &Volume<f32>,
    labels: &Volume<u8>,
    at: [usize; 3],
) -> std::io::Result<()> {
    let g = hu.geometry;
    let [ni, nj, nk] = g.size;
    // Coronal rows are slices; stretch them to square pixels (k runs inferior to superior,
    // so flip it to show the head at the top).
    let stretch = (g.spacing[2] / g.spacing[0]).max(1.0);
    let coronal_rows = (nk as f64 * stretch).round() as usize;
    let height = nj.max(coronal_rows);
    let width = ni * 2 + 8;
    let mut rgb = vec![0u8; width * height * 3];
    let shade = |v: f32, label: u8| -> [u8; 3] {
        let grey = (((v + 1350.0) / 1500.0).clamp(0.0, 1.0) * 255.0) as u8;
        if label > 0 {
            [grey / 2 + 127, grey / 2, grey / 2]
        } else {
            [grey, grey, grey]
        }
    };
    for j in 0..nj {
        for i in 0..ni {
            let v = g.offset(i, j, at[2]);
            let px = (j * width + i) * 3;
            rgb[px..px + 3].copy_from_slice(&shade(hu.data[v], labels.data[v]));
        }
    }
    for row in 0..coronal_rows.min(height) {
        let k = nk - 1 - ((row as f64 / stretch) as usize).min(nk - 1);
        for i in 0..ni {
            let v = g.offset(i, at[1], k);
            let px = (row * width + ni + 8 + i) * 3;
            rgb[px..px + 3].copy_from_slice(&shade(hu.data[v], labels.data[v]));
        }
    }
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&rgb).map_err(std::io::Error::other)
}
