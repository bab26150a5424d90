//! One SVG per trace: hit ratio against cache size, one line per policy.

use std::path::Path;

use plotters::prelude::*;

/// One measured point.
#[derive(Debug)]
pub struct Point<'a> {
    /// Policy name (one line per policy).
    pub policy: &'a str,
    /// Cache size in entries.
    pub size: usize,
    /// Hit ratio in percent.
    pub hit_ratio: f64,
}

/// Draws `points` of trace `title` to `file`.
pub fn hit_ratio_svg(file: &Path, title: &str, points: &[Point<'_>]) -> Result<(), String> {
    let max_size = points.iter().map(|p| p.size).max().unwrap_or(1).max(2) as f64;
    let min_size = points.iter().map(|p| p.size).min().unwrap_or(1).max(1) as f64;
    let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_size..max_size).log_scale(), 0f64..100f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("cache size (entries)")
        .y_desc("hit ratio (%)")
        .draw()
        .map_err(|e| e.to_string())?;
    let mut policies: Vec<&str> = points.iter().map(|p| p.policy).collect();
    policies.dedup();
    policies.sort_unstable();
    policies.dedup();
    for (index, policy) in policies.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let mut line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.policy == *policy)
            .map(|p| (p.size as f64, p.hit_ratio))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        let width = if *policy == "larder" { 3 } else { 1 };
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(width)))
            .map_err(|e| e.to_string())?
            .label(*policy)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 16, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
