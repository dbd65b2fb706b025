//! The same NetworkPolicies rendered the way iptables + ipset enforcers
//! (kube-router's shape) program them, for comparison only; nftpol never
//! ships this. Filter table, FORWARD path: conntrack established/related
//! accept and invalid drop first, then one rule per isolated local pod
//! jumping to its chain (`-s` for egress, then `-d` for ingress), and in
//! each pod chain the rules of the policies selecting it in policy order:
//! one rule per (peer, port) with an ipset match per peer selector, then
//! a drop. Egress allows `RETURN`, so the destination's ingress chain
//! still judges the packet on the same node.
//!
//! IPv4 only (the benchmark's pods are). Egress named ports and admin
//! policies have no rendering here and are refused rather than skipped.

use ipnet::IpNet;
use policy_compiler::model::*;
use policy_compiler::selector::Selector;
use policy_compiler::Cluster;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

/// What one peer set holds; equal peers share one ipset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SetKey {
    Pods {
        /// The policy's namespace when the peer has no namespace selector.
        own_namespace: Option<String>,
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

/// The two inputs of `ipset restore` and `iptables-restore`.
pub struct Rendered {
    pub ipsets: String,
    pub rules: String,
    /// Rules in each local pod's ingress chain, keyed `namespace/name`.
    pub ingress_chain_rules: BTreeMap<String, usize>,
    pub total_rules: usize,
    pub set_count: usize,
}

#[derive(Default)]
struct Builder {
    sets: BTreeMap<SetKey, String>,
    ipsets: String,
}

impl Builder {
    /// The ipset for `peer` of a policy in `namespace`, created on first use.
    fn set_for(&mut self, cluster: &Cluster, namespace: &str, peer: &Peer) -> String {
        let key = match peer {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => SetKey::Pods {
                own_namespace: namespace_selector.is_none().then(|| namespace.to_string()),
                pods: pod_selector.clone(),
                namespaces: namespace_selector.clone(),
            },
            Peer::IpBlock { cidr, except, .. } => SetKey::Block {
                cidr: *cidr,
                except: except.clone(),
            },
        };
        if let Some(name) = self.sets.get(&key) {
            return name.clone();
        }
        let name = format!("NP-{}", self.sets.len());
        match &key {
            SetKey::Pods {
                own_namespace,
                pods,
                namespaces,
            } => {
                let _ = writeln!(self.ipsets, "create {name} hash:ip family inet");
                for ns in cluster.namespaces_with_pods() {
                    let ns_ok = match (own_namespace, namespaces) {
                        (Some(own), _) => own == ns,
                        (None, Some(sel)) => sel.matches(&cluster.namespace_labels(ns)),
                        (None, None) => false,
                    };
                    if !ns_ok {
                        continue;
                    }
                    for p in cluster.pods_in(ns).filter(|p| p.is_policy_pod()) {
                        if pods.as_ref().is_none_or(|s| s.matches(&p.labels)) {
                            for ip in p.ips.iter().filter(|ip| ip.is_ipv4()) {
                                let _ = writeln!(self.ipsets, "add {name} {ip}");
                            }
                        }
                    }
                }
            }
            SetKey::Block { cidr, except } => {
                let _ = writeln!(self.ipsets, "create {name} hash:net family inet");
                if cidr.addr().is_ipv4() {
                    let _ = writeln!(self.ipsets, "add {name} {cidr}");
                    for e in except {
                        let _ = writeln!(self.ipsets, "add {name} {e} nomatch");
                    }
                }
            }
        }
        self.sets.insert(key, name.clone());
        name
    }
}

/// The port alternatives of a rule as iptables matches (`[""]`: any).
fn port_matches(
    pod: &Pod,
    direction: Direction,
    ports: &Option<Vec<PortSpec>>,
) -> Result<Vec<String>, String> {
    let Some(ports) = ports else {
        return Ok(vec![String::new()]);
    };
    let mut out = Vec::new();
    for spec in ports {
        let proto = spec.protocol.lower();
        match &spec.port {
            PortRef::Any => out.push(format!("-p {proto}")),
            PortRef::Range(lo, hi) if lo == hi => out.push(format!("-p {proto} --dport {lo}")),
            PortRef::Range(lo, hi) => out.push(format!("-p {proto} --dport {lo}:{hi}")),
            PortRef::Named(name) => match direction {
                Direction::Ingress => {
                    if let Some(n) = pod.resolve_port(name, spec.protocol) {
                        out.push(format!("-p {proto} --dport {n}"));
                    }
                }
                Direction::Egress => {
                    return Err(format!("egress named port {name:?}: not rendered"));
                }
            },
        }
    }
    Ok(out)
}

/// Renders `node`'s pods of `cluster`.
pub fn render(cluster: &Cluster, node: &str) -> Result<Rendered, String> {
    if cluster.admin_policies().next().is_some() {
        return Err("admin network policies: not rendered".into());
    }
    let mut b = Builder::default();
    let mut chains = String::new();
    let mut body = String::new();
    let mut dispatch: [String; 2] = Default::default();
    let mut ingress_chain_rules = BTreeMap::new();
    let mut total_rules = 2;
    let local = cluster
        .pods()
        .filter(|p| p.is_policy_pod() && p.node_name.as_deref() == Some(node));
    for (k, pod) in local.enumerate() {
        let Some(IpAddr::V4(ip)) = pod.ips.iter().find(|ip| ip.is_ipv4()).copied() else {
            continue;
        };
        for (d, direction) in [Direction::Egress, Direction::Ingress]
            .into_iter()
            .enumerate()
        {
            let selecting: Vec<&Policy> = cluster
                .policies_in(&pod.namespace)
                .filter(|pol| pol.pod_selector.matches(&pod.labels))
                .filter(|pol| rules_of(pol, direction).is_some())
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let (chain, addr, peer_dir, allow) = match direction {
                Direction::Ingress => (format!("NP-IN-{k}"), "-d", "src", "ACCEPT"),
                Direction::Egress => (format!("NP-OUT-{k}"), "-s", "dst", "RETURN"),
            };
            let _ = writeln!(chains, ":{chain} - [0:0]");
            let _ = writeln!(dispatch[d], "-A FORWARD {addr} {ip}/32 -j {chain}");
            total_rules += 1;
            let mut n = 0;
            for pol in selecting {
                for (i, rule) in rules_of(pol, direction).into_iter().flatten().enumerate() {
                    let peers: Vec<String> = match &rule.peers {
                        None => vec![String::new()],
                        Some(peers) => peers
                            .iter()
                            .map(|p| {
                                let set = b.set_for(cluster, &pol.namespace, p);
                                format!("-m set --match-set {set} {peer_dir}")
                            })
                            .collect(),
                    };
                    let ports = port_matches(pod, direction, &rule.ports)?;
                    for peer in &peers {
                        for port in &ports {
                            let _ = writeln!(
                                body,
                                "-A {chain} -m comment --comment \"{}/{} {}[{i}]\" {peer} {port} -j {allow}",
                                pol.namespace,
                                pol.name,
                                direction.word()
                            );
                            n += 1;
                        }
                    }
                }
            }
            let _ = writeln!(body, "-A {chain} -j DROP");
            n += 1;
            total_rules += n;
            if direction == Direction::Ingress {
                ingress_chain_rules.insert(format!("{}/{}", pod.namespace, pod.name), n);
            }
        }
    }
    let rules = format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{chains}\
         -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -m conntrack --ctstate INVALID -j DROP\n{}{}{body}COMMIT\n",
        dispatch[0], dispatch[1]
    );
    Ok(Rendered {
        set_count: b.sets.len(),
        ipsets: b.ipsets,
        rules,
        ingress_chain_rules,
        total_rules,
    })
}

fn rules_of(pol: &Policy, direction: Direction) -> Option<&Vec<PolicyRule>> {
    match direction {
        Direction::Ingress => pol.ingress.as_ref(),
        Direction::Egress => pol.egress.as_ref(),
    }
}
