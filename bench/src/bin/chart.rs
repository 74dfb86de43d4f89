//! Renders `bench/run`'s results as an SVG chart (no plotting library: a few rectangles and
//! labels): proxy CPU per request per scenario, and latency percentiles at the fixed rate.
//!
//! Input on stdin, one scenario per line, tab-separated:
//! `scenario  cpu_us  p50_us  p99_us  p999_us` (`-` where a figure does not apply).
//! Output: the SVG document on stdout.

use std::fmt::Write as _;
use std::io::Read as _;

struct Row {
    name: String,
    cpu: Option<f64>,
    latency: [Option<f64>; 3],
}

fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut cells = line.split('\t');
            let name = cells.next().unwrap_or_default().to_owned();
            let mut num = || cells.next().and_then(|c| c.trim().parse::<f64>().ok());
            let cpu = num();
            let latency = [num(), num(), num()];
            Row { name, cpu, latency }
        })
        .collect()
}

const WIDTH: f64 = 900.0;
const LABEL: f64 = 190.0;
const BAR: f64 = 16.0;
const COLOURS: [&str; 3] = ["#4c78a8", "#f58518", "#e45756"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel: a title, and per row `values.len()` bars scaled to the largest value.
fn panel(
    svg: &mut String,
    top: f64,
    title: &str,
    unit: &str,
    rows: &[(&str, Vec<Option<f64>>)],
) -> f64 {
    let max = rows
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0_f64, |a, b| a.max(*b))
        .max(1.0);
    let scale = (WIDTH - LABEL - 90.0) / max;
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        top + 18.0,
        escape(title)
    );
    let mut y = top + 32.0;
    for (name, values) in rows {
        let group = BAR * values.len() as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>"#,
            LABEL - 8.0,
            y + group / 2.0 + 4.0,
            escape(name)
        );
        for (i, value) in values.iter().enumerate() {
            let bar_y = y + BAR * i as f64;
            let colour = COLOURS.get(i).copied().unwrap_or("#888");
            match value {
                Some(v) => {
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{LABEL}" y="{bar_y}" width="{:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{}" font-size="11">{v:.1} {unit}</text>"#,
                        v * scale,
                        BAR - 3.0,
                        LABEL + v * scale + 4.0,
                        bar_y + BAR - 5.0,
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{}" y="{}" font-size="11" fill="#888">n/a</text>"##,
                        LABEL + 4.0,
                        bar_y + BAR - 5.0,
                    );
                }
            }
        }
        y += group + 8.0;
    }
    y
}

fn main() {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("chart: cannot read stdin");
        std::process::exit(2);
    }
    let rows = parse(&input);
    let mut body = String::new();
    let cpu: Vec<(&str, Vec<Option<f64>>)> = rows
        .iter()
        .filter(|r| r.cpu.is_some())
        .map(|r| (r.name.as_str(), vec![r.cpu]))
        .collect();
    let bottom = panel(
        &mut body,
        0.0,
        "Proxy CPU time per request (lower is better)",
        "µs",
        &cpu,
    );
    let latency: Vec<(&str, Vec<Option<f64>>)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.latency.to_vec()))
        .collect();
    let legend_y = bottom + 10.0;
    let _ = writeln!(
        body,
        r##"<text x="{}" y="{}" font-size="12"><tspan fill="{}">■ p50</tspan>  <tspan fill="{}">■ p99</tspan>  <tspan fill="{}">■ p99.9</tspan></text>"##,
        WIDTH - 200.0,
        legend_y + 18.0,
        COLOURS[0],
        COLOURS[1],
        COLOURS[2]
    );
    let end = panel(
        &mut body,
        legend_y,
        "Latency at the fixed offered rate (lower is better)",
        "µs",
        &latency,
    ) + 30.0;
    println!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{end}" viewBox="0 0 {WIDTH} {end}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    print!("{body}");
    println!("</svg>");
}
