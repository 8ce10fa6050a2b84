//! SVG plots beside the bench tables (plotters' SVG backend: text is left to the viewer's fonts).

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;
use pushpull::{Error, ErrorKind};

const COLORS: [RGBColor; 6] = [
    RGBColor(47, 95, 208),
    RGBColor(214, 96, 39),
    RGBColor(46, 160, 67),
    RGBColor(170, 60, 170),
    RGBColor(120, 120, 120),
    RGBColor(200, 160, 0),
];

fn plot_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Config, format!("cannot draw {}: {error}", path.display()))
}

/// Makes `dir`, where a bench will draw its charts, before the runs (so a bad path fails at once,
/// not after them).
pub(crate) fn directory(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::new(ErrorKind::Config, format!("cannot make {} for the charts: {e}", dir.display()))
    })
}

/// The latency distribution of each transport: the share of messages (y, %) delivered within
/// a latency (x, ms, logarithmic), one line per transport.
pub(crate) fn latency_distribution(
    path: &Path,
    series: &[(String, Vec<Duration>)],
) -> Result<(), Error> {
    let ms = |d: &Duration| (d.as_secs_f64() * 1000.0).max(0.01);
    let max = series.iter().flat_map(|(_, l)| l.iter().map(ms)).fold(0.1_f64, f64::max);
    let min = series.iter().flat_map(|(_, l)| l.iter().map(ms)).fold(max, f64::min);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency distribution by transport", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min * 0.8..max * 1.25).log_scale(), 0.0..100.0)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("messages delivered within (%)")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (index, (name, latencies)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let count = latencies.len().max(1) as f64;
        let points =
            latencies.iter().enumerate().map(|(i, l)| (ms(l), (i + 1) as f64 / count * 100.0));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// One bar per name: `values` in `unit`, under `title`.
pub(crate) fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    values: &[(String, f64)],
) -> Result<(), Error> {
    let top = values.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max).max(1e-9) * 1.15;
    let names: Vec<String> = values.iter().map(|(n, _)| n.clone()).collect();
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..values.len()).into_segmented(), 0.0..top)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, (_, value))| {
            let color = COLORS[i % COLORS.len()];
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *value)],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// One line per series: `y` against `x` (logarithmic), points marked.
pub(crate) fn curves(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Error> {
    let points = || series.iter().flat_map(|(_, points)| points.iter());
    let x_max = points().map(|p| p.0).fold(1.0_f64, f64::max);
    let x_min = points().map(|p| p.0).fold(x_max, f64::min);
    let y_max = points().map(|p| p.1).fold(1e-9_f64, f64::max) * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0.0..y_max)
        .map_err(|e| plot_error(path, e))?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(|e| plot_error(path, e))?;
    for (index, (name, points)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| plot_error(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// A line to draw, with its measured points marked.
pub(crate) struct Marked {
    pub(crate) name: String,
    pub(crate) line: Vec<(f64, f64)>,
    pub(crate) marks: Vec<(f64, f64)>,
}

/// One line per series on logarithmic axes, with its measured points marked.
pub(crate) fn log_log(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Marked],
) -> Result<(), Error> {
    let points = || {
        series.iter().flat_map(|s| s.line.iter().chain(&s.marks)).filter(|p| p.0 > 0.0 && p.1 > 0.0)
    };
    let x_max = points().map(|p| p.0).fold(1.0_f64, f64::max);
    let x_min = points().map(|p| p.0).fold(x_max, f64::min);
    let y_max = points().map(|p| p.1).fold(1e-9_f64, f64::max);
    let y_min = points().map(|p| p.1).fold(y_max, f64::min);
    let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min * 0.8..x_max * 1.25).log_scale(),
            (y_min * 0.5..y_max * 2.0).log_scale(),
        )
        .map_err(|e| plot_error(path, e))?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(|e| plot_error(path, e))?;
    for (index, Marked { name, line, marks }) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let positive = |p: &&(f64, f64)| p.0 > 0.0 && p.1 > 0.0;
        chart
            .draw_series(LineSeries::new(
                line.iter().filter(positive).copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(marks.iter().filter(positive).map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| plot_error(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}
