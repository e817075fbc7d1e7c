//! Percentiles, printed tables and CSV files under the results directory.

use std::io::Write;
use std::path::Path;

/// Latency summary in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lat {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Summarises microsecond samples (sorts them).
pub fn lat(us: &mut [u32]) -> Lat {
    if us.is_empty() {
        return Lat::default();
    }
    us.sort_unstable();
    let at =
        |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1] as f64 / 1e3;
    Lat { n: us.len(), p50: at(0.50), p99: at(0.99), max: *us.last().unwrap() as f64 / 1e3 }
}

pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A table printed to stdout and written as CSV.
pub struct Table {
    pub title: String,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&'static str]) -> Table {
        Table { title: title.into(), headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        println!("\n## {}\n", self.title);
        let line = |cells: Vec<&str>| {
            let parts: Vec<String> =
                cells.iter().enumerate().map(|(i, c)| format!("{:>1$}", c, w[i])).collect();
            println!("| {} |", parts.join(" | "));
        };
        line(self.headers.clone());
        println!(
            "|{}|",
            w.iter().map(|n| format!("{}:", "-".repeat(n + 1))).collect::<Vec<_>>().join("|")
        );
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
        println!();
    }

    /// Writes `dir/name.csv` (replacing it) and prints the path.
    pub fn write_csv(&self, dir: &str, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = Path::new(dir).join(format!("{name}.csv"));
        let mut f = std::fs::File::create(&path)?;
        writeln!(f, "{}", self.headers.join(","))?;
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| csv_cell(c)).collect();
            writeln!(f, "{}", cells.join(","))?;
        }
        println!("wrote {}", path.display());
        Ok(())
    }
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

/// Reads a CSV written by `write_csv` (no quoted commas in numeric tables).
pub fn read_csv(path: &Path) -> std::io::Result<(Vec<String>, Vec<Vec<String>>)> {
    let s = std::fs::read_to_string(path)?;
    let mut lines = s.lines();
    let headers = lines.next().unwrap_or("").split(',').map(str::to_string).collect();
    let rows = lines.map(|l| l.split(',').map(str::to_string).collect()).collect();
    Ok((headers, rows))
}

/// `a / b` as "1.23x", or "-" when either side is missing.
pub fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}
