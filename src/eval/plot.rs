//! Plots as SVG, drawn with `plotters` (text stays text: readable at any size, no font files):
//! the FROC curve (sensitivity against false positives per scan on a log axis from 1/8 to 8,
//! the CPM's range, ticks at the CPM rates, the CPM points marked, the CPM in the title) and the
//! reliability diagram of a probability (observed frequency against mean predicted probability
//! per bin, before and after calibration, with the diagonal).

use super::calibration::Bin;
use super::froc::{CPM_RATES, FrocPoint, sensitivity_at};
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (720, 520);
const BLUE_LINE: RGBColor = RGBColor(31, 90, 180);
const RED_MARK: RGBColor = RGBColor(200, 30, 30);
const GREY: RGBColor = RGBColor(150, 150, 150);

/// A plotting failure as an I/O error (the only way these can fail is writing the file).
fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("plot: {e}"))
}

/// Draws the legend of the labelled series at `position`.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> std::io::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(io_error)
}

/// Writes the FROC plot of `curve` with `title` (e.g. the system's name) to `path`.
pub fn write_froc_svg(path: &Path, curve: &[FrocPoint], title: &str) -> std::io::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(io_error)?;
    let points: Vec<(f64, f64)> = CPM_RATES
        .iter()
        .map(|&rate| (rate, sensitivity_at(curve, rate)))
        .collect();
    let cpm = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let (lo, hi) = (CPM_RATES[0], CPM_RATES[CPM_RATES.len() - 1]);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("FROC: {title} (CPM {cpm:.3})"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(CPM_RATES.to_vec()),
            0f64..1f64,
        )
        .map_err(io_error)?;
    chart
        .configure_mesh()
        .x_desc("False positives per scan")
        .y_desc("Sensitivity")
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v}")
            } else {
                format!("1/{}", (1.0 / v).round())
            }
        })
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(io_error)?;
    // The curve, sampled densely on the log axis with the CPM's interpolation.
    let samples = 400;
    let line = (0..=samples).map(|s| {
        let fps = (lo.log2() + (hi.log2() - lo.log2()) * s as f64 / samples as f64).exp2();
        (fps, sensitivity_at(curve, fps))
    });
    chart
        .draw_series(LineSeries::new(line, BLUE_LINE.stroke_width(3)))
        .map_err(io_error)?
        .label("FROC curve")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE_LINE.stroke_width(3)));
    chart
        .draw_series(
            points
                .iter()
                .map(|&p| Cross::new(p, 6, RED_MARK.stroke_width(2))),
        )
        .map_err(io_error)?
        .label("sensitivity at the CPM rates")
        .legend(|(x, y)| Cross::new((x + 10, y), 6, RED_MARK.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(io_error)
}

/// Writes the reliability diagram of `before` (grey) and `after` (blue) calibration: each bin's
/// observed malignant fraction at its mean predicted probability, marker area by count.
pub fn write_reliability_svg(path: &Path, before: &[Bin], after: &[Bin]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(io_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Reliability of p(malignant | nodule)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(io_error)?;
    chart
        .configure_mesh()
        .x_desc("Mean predicted probability (bin)")
        .y_desc("Observed malignant fraction")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(io_error)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(io_error)?
        .label("perfect calibration")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    let total = after.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
    for (bins, colour, name) in [(before, GREY, "raw"), (after, BLUE_LINE, "calibrated")] {
        let points: Vec<(f64, f64, usize)> = bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.mean_predicted, b.observed, b.count))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                colour.stroke_width(2),
            ))
            .map_err(io_error)?
            .label(format!("{name} (marker area: nodules in the bin)"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
        chart
            .draw_series(points.iter().map(|&(x, y, count)| {
                let radius = 3.0 + 12.0 * (count as f64 / total).sqrt();
                Circle::new((x, y), radius.round() as i32, colour.mix(0.6).filled())
            }))
            .map_err(io_error)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_their_labels_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let curve = vec![
            FrocPoint {
                fps_per_scan: 0.0,
                sensitivity: 0.0,
                threshold: 1.0,
            },
            FrocPoint {
                fps_per_scan: 0.5,
                sensitivity: 0.6,
                threshold: 0.9,
            },
            FrocPoint {
                fps_per_scan: 4.0,
                sensitivity: 0.8,
                threshold: 0.1,
            },
        ];
        let froc = dir.path().join("froc.svg");
        write_froc_svg(&froc, &curve, "test set").unwrap();
        let svg = std::fs::read_to_string(&froc).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "False positives per scan",
            "Sensitivity",
            "FROC: test set (CPM ",
            "1/8",
            "sensitivity at the CPM rates",
        ] {
            assert!(svg.contains(text), "no {text:?} in the FROC plot");
        }
        let bins = [
            Bin {
                count: 3,
                mean_predicted: 0.2,
                observed: 0.1,
            },
            Bin {
                count: 1,
                mean_predicted: 0.8,
                observed: 1.0,
            },
        ];
        let reliability = dir.path().join("reliability.svg");
        write_reliability_svg(&reliability, &bins, &bins).unwrap();
        let svg = std::fs::read_to_string(&reliability).unwrap();
        for text in [
            "Observed malignant fraction",
            "calibrated",
            "perfect calibration",
        ] {
            assert!(svg.contains(text), "no {text:?} in the reliability plot");
        }
    }
}
