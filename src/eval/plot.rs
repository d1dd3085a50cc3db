//! Plots as PNG: the FROC curve (sensitivity against false positives per scan on a log2 axis
//! from 1/8 to 8, the CPM's range, grid lines at the CPM rates, the CPM points marked, the CPM in
//! the title) and the reliability diagram of a probability (observed frequency against mean
//! predicted probability per bin, before and after calibration, with the diagonal). Text is
//! drawn with a built-in 3x5 pixel font (no font files needed).

use super::calibration::Bin;
use super::froc::{CPM_RATES, FrocPoint, sensitivity_at};
use std::path::Path;

const WIDTH: usize = 640;
const HEIGHT: usize = 480;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 40;
const BOTTOM: usize = 60;

struct Canvas {
    rgb: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            rgb: vec![255; WIDTH * HEIGHT * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
            let at = (y as usize * WIDTH + x as usize) * 3;
            self.rgb[at..at + 3].copy_from_slice(&colour);
        }
    }

    /// A line of `thickness` pixels (square brush) from a to b.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), colour: [u8; 3], thickness: i64) {
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            for dx in 0..thickness {
                for dy in 0..thickness {
                    let half = thickness / 2;
                    self.set(
                        x.round() as i64 + dx - half,
                        y.round() as i64 + dy - half,
                        colour,
                    );
                }
            }
        }
    }

    fn write_png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut encoder =
            png::Encoder::new(std::io::BufWriter::new(file), WIDTH as u32, HEIGHT as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&self.rgb)
            .map_err(std::io::Error::other)
    }

    /// Text in the 3x5 font at `scale`, top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64) {
        for (n, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..3 {
                    if bits & (4 >> c) != 0 {
                        for dx in 0..scale {
                            for dy in 0..scale {
                                self.set(
                                    x + (n as i64 * 4 + c) * scale + dx,
                                    y + r as i64 * scale + dy,
                                    [0, 0, 0],
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Rows (top to bottom) of a 3-pixel-wide glyph, most significant bit on the left.
fn glyph(ch: char) -> [u8; 5] {
    match ch.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 3, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '/' => [1, 1, 2, 4, 4],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        'A' => [2, 5, 7, 5, 5],
        'C' => [7, 4, 4, 4, 7],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'I' => [7, 2, 2, 2, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'V' => [5, 5, 5, 5, 2],
        'Y' => [5, 5, 2, 2, 2],
        'B' => [6, 5, 6, 5, 6],
        'D' => [6, 5, 5, 5, 6],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'J' => [1, 1, 1, 5, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'Q' => [7, 5, 5, 7, 1],
        'U' => [5, 5, 5, 5, 7],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Z' => [7, 1, 2, 4, 7],
        '_' => [0, 0, 0, 0, 7],
        _ => [0; 5],
    }
}

/// Writes the FROC plot of `curve` with `title` (e.g. the system's name) to `path`.
pub fn write_froc_png(path: &Path, curve: &[FrocPoint], title: &str) -> std::io::Result<()> {
    let mut canvas = Canvas::new();
    let (x0, x1) = (LEFT as f64, (WIDTH - RIGHT) as f64);
    let (y0, y1) = ((HEIGHT - BOTTOM) as f64, TOP as f64);
    let (lo, hi) = (CPM_RATES[0].log2(), CPM_RATES[CPM_RATES.len() - 1].log2());
    let px = |fps: f64| x0 + (fps.max(CPM_RATES[0]).log2() - lo) / (hi - lo) * (x1 - x0);
    let py = |sens: f64| y0 + sens.clamp(0.0, 1.0) * (y1 - y0);
    let grey = [210, 210, 210];
    for rate in CPM_RATES {
        canvas.line((px(rate), y0), (px(rate), y1), grey, 1);
        let label = format!("{rate}");
        canvas.text(
            px(rate) as i64 - label.len() as i64 * 4,
            y0 as i64 + 8,
            &label,
            2,
        );
    }
    for tenth in 0..=10 {
        let s = tenth as f64 / 10.0;
        canvas.line((x0, py(s)), (x1, py(s)), grey, 1);
        canvas.text(LEFT as i64 - 34, py(s) as i64 - 5, &format!("{s:.1}"), 2);
    }
    canvas.line((x0, y0), (x1, y0), [0, 0, 0], 2);
    canvas.line((x0, y0), (x0, y1), [0, 0, 0], 2);
    // The curve, sampled densely on the log axis with the CPM's interpolation.
    let blue = [31, 90, 180];
    let samples = 400;
    let mut last: Option<(f64, f64)> = None;
    for s in 0..=samples {
        let fps = (lo + (hi - lo) * s as f64 / samples as f64).exp2();
        let point = (px(fps), py(sensitivity_at(curve, fps)));
        if let Some(prev) = last {
            canvas.line(prev, point, blue, 3);
        }
        last = Some(point);
    }
    let red = [200, 30, 30];
    let mut sum = 0.0;
    for rate in CPM_RATES {
        let s = sensitivity_at(curve, rate);
        sum += s;
        let (x, y) = (px(rate), py(s));
        canvas.line((x - 4.0, y - 4.0), (x + 4.0, y + 4.0), red, 2);
        canvas.line((x - 4.0, y + 4.0), (x + 4.0, y - 4.0), red, 2);
    }
    let cpm = sum / CPM_RATES.len() as f64;
    canvas.text(LEFT as i64, 10, &format!("FROC {title}  CPM {cpm:.3}"), 3);
    canvas.text(
        (WIDTH / 2) as i64 - 60,
        (HEIGHT - 24) as i64,
        "FPS PER SCAN",
        2,
    );
    canvas.text(6, TOP as i64 - 16, "SENSITIVITY", 2);
    canvas.write_png(path)
}

/// Writes the reliability diagram of `before` (grey) and `after` (blue) calibration: each bin's
/// observed malignant fraction at its mean predicted probability, marker area by count.
pub fn write_reliability_png(path: &Path, before: &[Bin], after: &[Bin]) -> std::io::Result<()> {
    let mut canvas = Canvas::new();
    let (x0, x1) = (LEFT as f64, (WIDTH - RIGHT) as f64);
    let (y0, y1) = ((HEIGHT - BOTTOM) as f64, TOP as f64);
    let px = |p: f64| x0 + p.clamp(0.0, 1.0) * (x1 - x0);
    let py = |p: f64| y0 + p.clamp(0.0, 1.0) * (y1 - y0);
    let grey = [210, 210, 210];
    for tenth in 0..=10 {
        let s = tenth as f64 / 10.0;
        canvas.line((x0, py(s)), (x1, py(s)), grey, 1);
        canvas.line((px(s), y0), (px(s), y1), grey, 1);
        canvas.text(LEFT as i64 - 34, py(s) as i64 - 5, &format!("{s:.1}"), 2);
        canvas.text(px(s) as i64 - 10, y0 as i64 + 8, &format!("{s:.1}"), 2);
    }
    canvas.line((x0, y0), (x1, y0), [0, 0, 0], 2);
    canvas.line((x0, y0), (x0, y1), [0, 0, 0], 2);
    canvas.line((px(0.0), py(0.0)), (px(1.0), py(1.0)), [120, 120, 120], 1);
    let total: usize = after.iter().map(|b| b.count).sum::<usize>().max(1);
    for (bins, colour) in [(before, [150, 150, 150]), (after, [31, 90, 180])] {
        let points: Vec<(f64, f64, usize)> = bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (px(b.mean_predicted), py(b.observed), b.count))
            .collect();
        for w in points.windows(2) {
            canvas.line((w[0].0, w[0].1), (w[1].0, w[1].1), colour, 2);
        }
        for &(x, y, count) in &points {
            let r = 3.0 + 12.0 * (count as f64 / total as f64).sqrt();
            for step in 0..64 {
                let t = step as f64 / 64.0 * std::f64::consts::TAU;
                canvas.line((x, y), (x + r * t.cos(), y + r * t.sin()), colour, 1);
            }
        }
    }
    canvas.text(
        LEFT as i64,
        10,
        "RELIABILITY  GREY: RAW  BLUE: CALIBRATED",
        3,
    );
    canvas.text(
        (WIDTH / 2) as i64 - 100,
        (HEIGHT - 24) as i64,
        "PREDICTED P MALIGNANT",
        2,
    );
    canvas.text(6, TOP as i64 - 16, "OBSERVED MALIGNANT", 2);
    canvas.write_png(path)
}
