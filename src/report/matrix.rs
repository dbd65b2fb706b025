//! The reachability matrix as text, CSV and Markdown, each with the
//! per-namespace summary; each flow with its staged verdict and logs when
//! the matrix is audited (marks in the grids, columns in the CSV). The flow columns of the CSV (and the cell
//! tooltips of the SVG) come from one table, [`FLOW_COLUMNS`], so a new
//! per-flow fact is one entry there.

use super::flowaudit::{logged_short, staged_short};
use super::{describe_side, verdict_word};
use policy_compiler::eval::Decision;
use policy_compiler::flowaudit::FlowAudit;
use policy_compiler::ir::Family;
use policy_compiler::matrix::{Grid, Matrix, Tally};

/// One flow of a grid, as the formats see it.
pub struct Flow<'a> {
    pub grid: &'a Grid,
    pub family: Family,
    pub from: String,
    pub to: String,
    pub decision: &'a Decision,
    /// The staged verdict and logs, when the matrix is audited.
    pub audit: Option<&'a FlowAudit>,
}

impl Flow<'_> {
    /// Whether staging the staged policies would change the verdict.
    pub fn staged_differs(&self) -> bool {
        self.audit
            .and_then(|a| a.staged.as_ref())
            .is_some_and(|s| s.allowed != self.decision.allowed)
    }

    pub fn logged(&self) -> bool {
        self.audit.is_some_and(|a| !a.logged.is_empty())
    }

    /// The grid mark: `.` allowed or `X` denied, then `!` when the staged
    /// policies would deny it or `+` when they would allow it, then `*`
    /// when it is logged.
    pub fn mark(&self) -> String {
        let mut m = String::from(if self.decision.allowed { "." } else { "X" });
        if self.staged_differs() {
            m.push(if self.decision.allowed { '!' } else { '+' });
        }
        if self.logged() {
            m.push('*');
        }
        m
    }
}

/// A named per-flow column: header and value.
pub type FlowColumn = (&'static str, fn(&Flow<'_>) -> String);

/// The per-flow columns, in order.
pub const FLOW_COLUMNS: &[FlowColumn] = &[
    ("port", |f| f.grid.probe.to_string()),
    ("family", |f| family_name(f.family).to_string()),
    ("from", |f| f.from.clone()),
    ("to", |f| f.to.clone()),
    ("verdict", |f| verdict_word(f.decision).to_string()),
    ("from_ip", |f| f.decision.src_ip.to_string()),
    ("to_ip", |f| f.decision.dst_ip.to_string()),
    ("egress", |f| describe_side(&f.decision.egress)),
    ("ingress", |f| describe_side(&f.decision.ingress)),
    ("staged", |f| {
        f.audit
            .and_then(|a| a.staged.as_ref())
            .map(staged_short)
            .unwrap_or_default()
    }),
    ("logged", |f| {
        f.audit.map(|a| logged_short(&a.logged)).unwrap_or_default()
    }),
];

/// The per-namespace summary columns (`--summary` CSV).
const SUMMARY_HEADER: [&str; 7] = [
    "port",
    "family",
    "from_namespace",
    "to_namespace",
    "allowed",
    "denied",
    "total",
];

pub fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

/// Every flow of a grid, row by row.
pub fn flows<'a>(m: &'a Matrix, grid: &'a Grid) -> impl Iterator<Item = Flow<'a>> + 'a {
    m.pods
        .iter()
        .zip(&grid.cells)
        .enumerate()
        .flat_map(move |(r, (src, row))| {
            m.pods
                .iter()
                .zip(row)
                .enumerate()
                .map(move |(c, (dst, d))| Flow {
                    grid,
                    family: m.family,
                    from: src.to_string(),
                    to: dst.to_string(),
                    decision: d,
                    audit: grid.audit.as_ref().and_then(|a| a.get(r)?.get(c)),
                })
        })
}

/// What the marks after `.`/`X` mean, for the grids that use them.
fn legend(m: &Matrix, grid: &Grid) -> String {
    let all: Vec<Flow<'_>> = flows(m, grid).collect();
    let mut s = String::new();
    if all
        .iter()
        .any(|f| f.audit.is_some_and(|a| a.staged.is_some()))
    {
        s.push_str("; ! the staged policies would deny it, + they would allow it");
    }
    if all.iter().any(Flow::logged) {
        s.push_str("; * logged");
    }
    s
}

/// The flows whose verdict the staged policies would change, one line
/// each (empty when none).
fn staged_changes(m: &Matrix, grid: &Grid) -> String {
    let mut s = String::new();
    for f in flows(m, grid).filter(Flow::staged_differs) {
        let Some(st) = f.audit.and_then(|a| a.staged.as_ref()) else {
            continue;
        };
        s.push_str(&format!(
            "  {} -> {}: {} now, would be {}\n",
            f.from,
            f.to,
            verdict_word(f.decision),
            staged_short(st)
        ));
    }
    if !s.is_empty() {
        s.insert_str(
            0,
            &format!(
                "{} {:?}: flows the staged policies would change\n",
                grid.probe, m.family
            ),
        );
        s.push('\n');
    }
    s
}

fn tally_text(t: Tally) -> String {
    format!("{}/{}", t.allowed, t.total)
}

/// A grid of labelled cells, left-aligned labels, centred cells.
fn text_table(corner: &str, cols: &[String], rows: &[(String, Vec<String>)]) -> String {
    let width = rows
        .iter()
        .map(|(l, _)| l.len())
        .chain([corner.len(), 4])
        .max()
        .unwrap_or(4);
    let mut s = format!("{corner:width$}");
    for c in cols {
        s.push_str(&format!(" {c}"));
    }
    s.push('\n');
    for (label, cells) in rows {
        s.push_str(&format!("{label:width$}"));
        for (cell, col) in cells.iter().zip(cols) {
            s.push_str(&format!(" {cell:^w$}", w = col.len()));
        }
        s.push('\n');
    }
    s
}

fn summary_rows(m: &Matrix, grid: &Grid) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let sum = m.namespace_summary(grid);
    let nss: Vec<String> = m.namespaces().into_iter().map(String::from).collect();
    let rows = nss
        .iter()
        .map(|a| {
            let cells = nss
                .iter()
                .map(|b| {
                    tally_text(
                        sum.get(&(a.clone(), b.clone()))
                            .copied()
                            .unwrap_or_default(),
                    )
                })
                .collect();
            (a.clone(), cells)
        })
        .collect();
    (nss, rows)
}

/// The text matrix: per probe the pod grid (`.` allowed, `X` denied) and
/// the namespace summary (allowed/total). `summary_only` leaves the pod
/// grid out.
pub fn text(m: &Matrix, summary_only: bool) -> String {
    let mut s = String::new();
    let names: Vec<String> = m.pods.iter().map(ToString::to_string).collect();
    for g in &m.grids {
        if !summary_only {
            s.push_str(&format!(
                "{} {:?} (rows: from, columns: to; . allowed, X denied{})\n",
                g.probe,
                m.family,
                legend(m, g)
            ));
            let marks: Vec<String> = flows(m, g).map(|f| f.mark()).collect();
            let rows: Vec<(String, Vec<String>)> = names
                .iter()
                .zip(marks.chunks(names.len().max(1)))
                .map(|(n, row)| (n.clone(), row.to_vec()))
                .collect();
            s.push_str(&text_table("", &names, &rows));
            s.push('\n');
            s.push_str(&staged_changes(m, g));
        }
        s.push_str(&format!(
            "{} {:?} by namespace (rows: from, columns: to; allowed/total flows)\n",
            g.probe, m.family
        ));
        let (cols, rows) = summary_rows(m, g);
        s.push_str(&text_table("", &cols, &rows));
        s.push('\n');
    }
    s
}

/// CSV: one row per flow with [`FLOW_COLUMNS`], or with `summary_only`
/// one row per (probe, from namespace, to namespace).
pub fn csv(m: &Matrix, summary_only: bool) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if summary_only {
        w.write_record(SUMMARY_HEADER)?;
        for g in &m.grids {
            for ((from, to), t) in m.namespace_summary(g) {
                w.write_record([
                    g.probe.to_string(),
                    family_name(m.family).to_string(),
                    from,
                    to,
                    t.allowed.to_string(),
                    t.denied().to_string(),
                    t.total.to_string(),
                ])?;
            }
        }
    } else {
        w.write_record(FLOW_COLUMNS.iter().map(|(h, _)| *h))?;
        for g in &m.grids {
            for f in flows(m, g) {
                w.write_record(FLOW_COLUMNS.iter().map(|(_, v)| v(&f)))?;
            }
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn md_table(corner: &str, cols: &[String], rows: &[(String, Vec<String>)]) -> String {
    let mut s = format!("| {corner} |");
    for c in cols {
        s.push_str(&format!(" {c} |"));
    }
    s.push_str("\n|---|");
    for _ in cols {
        s.push_str(":---:|");
    }
    s.push('\n');
    for (label, cells) in rows {
        s.push_str(&format!("| **{label}** |"));
        for c in cells {
            s.push_str(&format!(" {c} |"));
        }
        s.push('\n');
    }
    s
}

/// A Markdown pod cell: `allow` or `**DENY**`, then what the staged
/// policies would make of it when that differs, then `(logged)`.
fn md_cell(f: &Flow<'_>) -> String {
    let mut c = String::from(if f.decision.allowed {
        "allow"
    } else {
        "**DENY**"
    });
    if f.staged_differs() {
        c.push_str(if f.decision.allowed {
            " (staged: **DENY**)"
        } else {
            " (staged: allow)"
        });
    }
    if f.logged() {
        c.push_str(" (logged)");
    }
    c
}

/// Markdown: per probe a heading, the pod table (allow / **DENY**) and the
/// namespace summary table.
pub fn markdown(m: &Matrix, summary_only: bool) -> String {
    let mut s = String::new();
    let names: Vec<String> = m.pods.iter().map(ToString::to_string).collect();
    for g in &m.grids {
        s.push_str(&format!("## {} {}\n\n", g.probe, family_name(m.family)));
        if !summary_only {
            let cells: Vec<String> = flows(m, g).map(|f| md_cell(&f)).collect();
            let rows: Vec<(String, Vec<String>)> = names
                .iter()
                .zip(cells.chunks(names.len().max(1)))
                .map(|(n, row)| (n.clone(), row.to_vec()))
                .collect();
            s.push_str(&md_table("from \\ to", &names, &rows));
            s.push('\n');
        }
        s.push_str("### By namespace (allowed/total flows)\n\n");
        let (cols, rows) = summary_rows(m, g);
        s.push_str(&md_table("from \\ to", &cols, &rows));
        s.push('\n');
    }
    s
}
