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
        // A marker on each point: a line through one point (one size) draws nothing.
        let markers = line
            .iter()
            .map(|&at| Circle::new(at, width + 2, color.filled()));
        chart.draw_series(markers).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The number in attribute `name="..."` of an SVG element, if it is one.
    fn number(element: &str, name: &str) -> Option<f64> {
        let value = element
            .split(&format!("{name}=\""))
            .nth(1)?
            .split('"')
            .next()?;
        value.parse().ok()
    }

    /// With one cache size every policy is one point, and still shows.
    #[test]
    fn each_point_is_drawn_even_alone() {
        let file = std::env::temp_dir().join(format!("h_plot_{}.svg", std::process::id()));
        let point = |policy, hit_ratio| Point {
            policy,
            size: 100,
            hit_ratio,
        };
        hit_ratio_svg(&file, "t", &[point("lru", 40.0), point("opt", 60.0)]).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        let circles: Vec<(f64, f64)> = svg
            .lines()
            .filter(|l| l.contains("<circle"))
            .filter_map(|l| Some((number(l, "cx")?, number(l, "cy")?)))
            .collect();
        // Both inside the picture, one above the other at the same size.
        assert_eq!(circles.len(), 2, "{svg}");
        let inside = |&(x, y): &(f64, f64)| (0.0..900.0).contains(&x) && (0.0..560.0).contains(&y);
        assert!(circles.iter().all(inside), "{circles:?}");
        assert_eq!(circles[0].0, circles[1].0, "{circles:?}");
        assert!(circles[0].1 > circles[1].1, "{circles:?}");
    }
}
