//! `bench-results/scaling.svg` from `bench-results/scaling.csv`: connections against RSS per
//! connection, server threads and heartbeat p99, one line per server.

use std::path::Path;

use plotters::prelude::*;

type Series = Vec<(String, Vec<(f64, f64)>)>;

pub fn scaling(out: &str) -> Result<(), String> {
    let csv = Path::new(out).join("scaling.csv");
    let (headers, rows) =
        crate::report::read_csv(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let col =
        |name: &str| headers.iter().position(|h| h == name).ok_or(format!("no column {name}"));
    let (server, conns) = (col("server")?, col("joined")?);
    let series = |metric: &str| -> Result<Series, String> {
        let m = col(metric)?;
        let mut by: Series = Vec::new();
        for r in &rows {
            let (Some(x), Some(y)) =
                (r.get(conns).and_then(|v| v.parse().ok()), r.get(m).and_then(|v| v.parse().ok()))
            else {
                continue;
            };
            match by.iter_mut().find(|(s, _)| *s == r[server]) {
                Some((_, pts)) => pts.push((x, y)),
                None => by.push((r[server].clone(), vec![(x, y)])),
            }
        }
        Ok(by)
    };
    let panels = [
        ("RSS per joined connection", "KiB", series("rss_kib_per_conn")?),
        ("Server threads", "threads", series("threads")?),
        ("Heartbeat round trip p99", "ms", series("hb_p99_ms")?),
    ];
    let svg = Path::new(out).join("scaling.svg");
    let root = SVGBackend::new(&svg, (900, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((3, 1));
    for ((title, unit, data), area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, title, unit, data).map_err(|e| format!("plot {title}: {e}"))?;
    }
    root.present().map_err(|e| e.to_string())?;
    println!("wrote {}", svg.display());
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    data: &Series,
) -> Result<(), Box<dyn std::error::Error>> {
    let xmax = data.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0, f64::max) * 1.05;
    let ymax = data.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(1e-3, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart.configure_mesh().x_desc("joined connections").y_desc(unit).draw()?;
    let colors = [RGBColor(200, 40, 40), RGBColor(30, 90, 200), RGBColor(40, 150, 60)];
    for (i, (name, pts)) in data.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}
