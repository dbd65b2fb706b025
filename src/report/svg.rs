//! The matrix as an SVG heat map for reviewers to open in a browser: per
//! probe the pod grid (green allowed, red denied, outlined when the
//! staged policies would change the verdict; hovering a cell shows the
//! decision with the deciding rules, the staged verdict and the logs) and the namespace summary
//! (shaded by the share of allowed flows). Plain SVG 1.1, no script, no
//! external resources, so any browser or viewer shows it as it is.

use super::matrix::{family_name, flows, FLOW_COLUMNS};
use policy_compiler::matrix::{Matrix, Tally};
use svg::node::element::{Group, Rectangle, Text, Title};
use svg::Document;

const CELL: usize = 22;
const GAP: usize = 28;
/// Rough advance of one character at the label font size.
const CHAR_W: usize = 7;
const FONT: &str = "DejaVu Sans Mono, monospace";
pub const ALLOWED_COLOR: &str = "#2e9d4f";
pub const DENIED_COLOR: &str = "#d7303a";
/// Outline of a cell whose verdict the staged policies would change.
pub const STAGED_OUTLINE: &str = "#1f1f1f";

/// Red (none allowed) through yellow to green (all allowed).
fn ratio_color(t: Tally) -> String {
    let r = t.ratio();
    let (lo, mid, hi) = ((0xd7, 0x30, 0x3a), (0xf2, 0xc1, 0x2e), (0x2e, 0x9d, 0x4f));
    let (a, b, x): ((i32, i32, i32), (i32, i32, i32), f64) = if r < 0.5 {
        (lo, mid, r * 2.0)
    } else {
        (mid, hi, (r - 0.5) * 2.0)
    };
    let mix = |p: i32, q: i32| (p as f64 + (q - p) as f64 * x).round() as i32;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

fn label(x: usize, y: usize, text: &str, anchor: &str) -> Text {
    Text::new(text)
        .set("x", x)
        .set("y", y)
        .set("font-family", FONT)
        .set("font-size", 12)
        .set("text-anchor", anchor)
        .set("dominant-baseline", "middle")
}

fn heading(y: usize, text: String) -> Text {
    Text::new(text)
        .set("x", 10)
        .set("y", y + 14)
        .set("font-family", FONT)
        .set("font-size", 14)
        .set("font-weight", "bold")
}

/// One heat cell: fill, tooltip, class, and whether it is outlined.
type Cell = (String, String, &'static str, bool);

/// A labelled heat grid; returns the group and its (width, height).
fn heat_grid(labels: &[String], cells: &[Vec<Cell>], class: &str) -> (Group, usize, usize) {
    let margin = labels.iter().map(String::len).max().unwrap_or(0) * CHAR_W + 10;
    let mut g = Group::new().set("class", class);
    for (i, l) in labels.iter().enumerate() {
        let c = margin + i * CELL + CELL / 2;
        // Column labels read upwards above their column.
        g = g.add(
            label(c, margin - 6, l, "start")
                .set("transform", format!("rotate(-90 {c} {})", margin - 6)),
        );
        g = g.add(label(margin - 6, margin + i * CELL + CELL / 2, l, "end"));
    }
    for (r, row) in cells.iter().enumerate() {
        for (c, (fill, tip, kind, outlined)) in row.iter().enumerate() {
            let mut rect = Rectangle::new()
                .set("x", margin + c * CELL)
                .set("y", margin + r * CELL)
                .set("width", CELL - 2)
                .set("height", CELL - 2)
                .set("fill", fill.as_str())
                .set("class", *kind)
                .add(Title::new(tip.as_str()));
            if *outlined {
                rect = rect
                    .set("stroke", STAGED_OUTLINE)
                    .set("stroke-width", 2)
                    .set("stroke-dasharray", "3 2");
            }
            g = g.add(rect);
        }
    }
    let side = margin + labels.len() * CELL;
    (g, side, side)
}

/// The whole heat map document.
pub fn render(m: &Matrix) -> String {
    let mut body = Group::new();
    let mut y = 10;
    let mut width = 400;
    let names: Vec<String> = m.pods.iter().map(ToString::to_string).collect();
    let nss: Vec<String> = m.namespaces().into_iter().map(String::from).collect();
    for g in &m.grids {
        body = body.add(heading(
            y,
            format!(
                "{} {} — rows: from, columns: to (green allowed, red denied, dashed: the staged policies would change it)",
                g.probe,
                family_name(m.family)
            ),
        ));
        y += 30;
        let all: Vec<_> = flows(m, g).collect();
        let cells: Vec<Vec<Cell>> = all
            .chunks(m.pods.len().max(1))
            .map(|row| {
                row.iter()
                    .map(|f| {
                        let tip = FLOW_COLUMNS
                            .iter()
                            .map(|(h, v)| format!("{h}: {}", v(f)))
                            .collect::<Vec<_>>()
                            .join("\n");
                        let (fill, kind) = if f.decision.allowed {
                            (ALLOWED_COLOR, "allowed")
                        } else {
                            (DENIED_COLOR, "denied")
                        };
                        (fill.to_string(), tip, kind, f.staged_differs())
                    })
                    .collect()
            })
            .collect();
        let (grid, w, h) = heat_grid(&names, &cells, "pods");
        body = body.add(grid.set("transform", format!("translate(10 {y})")));
        width = width.max(w + 20);
        y += h + GAP;

        body = body.add(heading(
            y,
            format!(
                "{} {} by namespace — share of allowed flows",
                g.probe,
                family_name(m.family)
            ),
        ));
        y += 30;
        let sum = m.namespace_summary(g);
        let cells: Vec<Vec<Cell>> = nss
            .iter()
            .map(|a| {
                nss.iter()
                    .map(|b| {
                        let t = sum
                            .get(&(a.clone(), b.clone()))
                            .copied()
                            .unwrap_or_default();
                        let tip = format!(
                            "{a} -> {b} {}: {} of {} flows allowed",
                            g.probe, t.allowed, t.total
                        );
                        (ratio_color(t), tip, "namespace", false)
                    })
                    .collect()
            })
            .collect();
        let (grid, w, h) = heat_grid(&nss, &cells, "namespaces");
        body = body.add(grid.set("transform", format!("translate(10 {y})")));
        width = width.max(w + 20);
        y += h + GAP;
    }
    let doc = Document::new()
        .set("width", width)
        .set("height", y)
        .set("viewBox", (0, 0, width, y))
        .add(
            Rectangle::new()
                .set("width", "100%")
                .set("height", "100%")
                .set("fill", "white"),
        )
        .add(body);
    let mut s = doc.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_color_runs_from_red_to_green() {
        let t = |allowed, total| Tally { allowed, total };
        assert_eq!(ratio_color(t(0, 4)), DENIED_COLOR);
        assert_eq!(ratio_color(t(4, 4)), ALLOWED_COLOR);
        assert_eq!(ratio_color(t(2, 4)), "#f2c12e");
    }
}
