//! The reachability matrix as data: the semantic evaluator's decision for
//! every ordered pair of pods, per probed port, plus the per-namespace
//! summary, and on request each flow's staged verdict and logs
//! ([`Matrix::audited`]). Output formats live with the CLI; change review
//! compares two matrices here.

use crate::audit::AuditOptions;
use crate::eval::{self, Decision, Endpoint, EvalError};
use crate::flowaudit::{Auditor, FlowAudit};
use crate::index::Cluster;
use crate::ir::Family;
use crate::model::Protocol;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One probed destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.api())
    }
}

/// The decisions for one probe; `cells[from][to]` index `Matrix::pods`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub probe: Probe,
    pub cells: Vec<Vec<Decision>>,
    /// Each cell's staged verdict and logs, laid out as `cells`; `None`
    /// until [`Matrix::audited`] fills it.
    pub audit: Option<Vec<Vec<FlowAudit>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub family: Family,
    /// Rows and columns, sorted by namespace then name.
    pub pods: Vec<Endpoint>,
    pub grids: Vec<Grid>,
}

/// Allowed flows out of all flows between the pods of two namespaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub allowed: usize,
    pub total: usize,
}

impl Tally {
    pub fn denied(&self) -> usize {
        self.total - self.allowed
    }
    /// Share of allowed flows, 0.0 ..= 1.0 (1.0 for no flows).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.allowed as f64 / self.total as f64
        }
    }
}

/// The family a matrix uses by default: IPv4, or IPv6 when no pod that
/// policies select has an IPv4 address.
pub fn default_family(cluster: &Cluster) -> Family {
    if cluster
        .pods()
        .any(|p| p.is_policy_pod() && p.ips.iter().any(IpAddr::is_ipv4))
    {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}

/// The pods a matrix covers: every pod policies can select that has an
/// address of `family`, restricted to `namespaces` unless that is empty.
pub fn pods(cluster: &Cluster, family: Family, namespaces: &[String]) -> Vec<Endpoint> {
    cluster
        .pods()
        .filter(|p| p.is_policy_pod() && p.ips.iter().any(|ip| Family::of(ip) == family))
        .filter(|p| namespaces.is_empty() || namespaces.contains(&p.namespace))
        .map(|p| Endpoint::pod(&p.namespace, &p.name))
        .collect()
}

/// The matrix of `pods` (as [`pods`] returns them) for every probe.
pub fn build(
    cluster: &Cluster,
    family: Family,
    pods: Vec<Endpoint>,
    probes: &[Probe],
) -> Result<Matrix, EvalError> {
    let mut grids = Vec::with_capacity(probes.len());
    for &probe in probes {
        let cells = pods
            .iter()
            .map(|src| {
                pods.iter()
                    .map(|dst| eval::allowed(cluster, src, dst, family, probe.protocol, probe.port))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        grids.push(Grid {
            probe,
            cells,
            audit: None,
        });
    }
    Ok(Matrix {
        family,
        pods,
        grids,
    })
}

/// The namespace of a matrix pod (the empty string for an address).
pub fn namespace_of(e: &Endpoint) -> &str {
    match e {
        Endpoint::Pod { namespace, .. } => namespace,
        Endpoint::Ip(_) => "",
    }
}

impl Matrix {
    /// The matrix with every cell's staged verdict (when a policy is
    /// staged) and logs (rulesets compiled with `opts`) filled in.
    pub fn audited(mut self, cluster: &Cluster, opts: &AuditOptions) -> Result<Matrix, EvalError> {
        let mut auditor = Auditor::new(cluster, opts);
        for g in &mut self.grids {
            let mut rows = Vec::with_capacity(g.cells.len());
            for (src, row) in self.pods.iter().zip(&g.cells) {
                let audits = self
                    .pods
                    .iter()
                    .zip(row)
                    .map(|(dst, d)| auditor.flow((src, dst), d, g.probe.protocol, g.probe.port))
                    .collect::<Result<Vec<_>, _>>()?;
                rows.push(audits);
            }
            g.audit = Some(rows);
        }
        Ok(self)
    }

    /// The namespaces of the pods, in row order, each once.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.pods.iter().map(namespace_of).collect();
        v.dedup();
        v
    }

    /// Allowed/total flows from each namespace to each namespace for one
    /// grid, keyed (from, to). A pod to itself counts (it is a cell).
    pub fn namespace_summary(&self, grid: &Grid) -> BTreeMap<(String, String), Tally> {
        let mut out: BTreeMap<(String, String), Tally> = BTreeMap::new();
        for (src, row) in self.pods.iter().zip(&grid.cells) {
            for (dst, d) in self.pods.iter().zip(row) {
                let t = out
                    .entry((namespace_of(src).to_string(), namespace_of(dst).to_string()))
                    .or_default();
                t.total += 1;
                t.allowed += usize::from(d.allowed);
            }
        }
        out
    }
}

/// A flow whose verdict differs between two matrices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowChange {
    pub probe: Probe,
    pub from: Endpoint,
    pub to: Endpoint,
    pub before: Decision,
    pub after: Decision,
}

/// The flows between pods present in both matrices whose verdict
/// differs, per probe present in both (in `after`'s order).
pub fn changed_flows(before: &Matrix, after: &Matrix) -> Vec<FlowChange> {
    let index: BTreeMap<&Endpoint, usize> = before
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    let mut out = Vec::new();
    for g in &after.grids {
        let Some(old) = before.grids.iter().find(|o| o.probe == g.probe) else {
            continue;
        };
        for (src, row) in after.pods.iter().zip(&g.cells) {
            let Some(&si) = index.get(src) else { continue };
            for (dst, d) in after.pods.iter().zip(row) {
                let Some(&di) = index.get(dst) else { continue };
                let was = &old.cells[si][di];
                if was.allowed != d.allowed {
                    out.push(FlowChange {
                        probe: g.probe,
                        from: src.clone(),
                        to: dst.clone(),
                        before: was.clone(),
                        after: d.clone(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    /// The fixture, with or without its policy.
    fn cluster(with_policy: bool) -> Cluster {
        let loaded = parse("b-from-a.yaml", include_str!("testdata/b-from-a.yaml"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Cluster::from_objects(
            loaded
                .objects
                .into_iter()
                .filter(|o| with_policy || !matches!(o, crate::Object::Policy(_))),
        )
    }

    fn matrix(c: &Cluster) -> Matrix {
        let probes = [Probe {
            port: 80,
            protocol: Protocol::Tcp,
        }];
        build(c, Family::Ipv4, pods(c, Family::Ipv4, &[]), &probes).expect("matrix")
    }

    #[test]
    fn summary_counts_flows_between_namespaces() {
        let c = cluster(true);
        let m = matrix(&c);
        let s = m.namespace_summary(&m.grids[0]);
        // x -> x: a->a, a->b, b->a, b->b all allowed (b allows a; self).
        assert_eq!(
            s[&("x".into(), "x".into())],
            Tally {
                allowed: 4,
                total: 4
            }
        );
        // y -> x: c->a allowed, c->b denied.
        assert_eq!(
            s[&("y".into(), "x".into())],
            Tally {
                allowed: 1,
                total: 2
            }
        );
        assert_eq!(m.namespaces(), vec!["x", "y"]);
    }

    #[test]
    fn changed_flows_names_exactly_the_flows_a_policy_changes() {
        let before = matrix(&cluster(false));
        let after = matrix(&cluster(true));
        let changes = changed_flows(&before, &after);
        let names: Vec<String> = changes
            .iter()
            .map(|c| format!("{}->{}", c.from, c.to))
            .collect();
        assert_eq!(names, vec!["y/c->x/b"]);
        assert!(changes[0].before.allowed && !changes[0].after.allowed);
        assert!(changed_flows(&after, &after).is_empty());
    }
}
