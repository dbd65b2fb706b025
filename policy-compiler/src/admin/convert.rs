//! CRD objects (nftpol-crds) and Nodes -> the admin model, with the field
//! path of every mistake. Both API generations land in the same shape;
//! `domainNames` peers are rejected as unsupported (the object is skipped
//! and reported, never half-enforced).

use super::*;
use crate::apisyntax;
use crate::convert::{parse_cidr, selector, Ctx};
use crate::error::ObjectError;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use nftpol_crds::{v1alpha1, v1alpha2};
use std::collections::BTreeSet;

fn ctx<'a>(
    kind: &'static str,
    source: Option<&'a str>,
    meta: &ObjectMeta,
) -> Result<(Ctx<'a>, String), ObjectError> {
    let name = meta.name.clone().unwrap_or_default();
    let c = Ctx {
        source,
        kind,
        object: if name.is_empty() {
            "<unnamed>".to_string()
        } else {
            name.clone()
        },
    };
    if name.is_empty() {
        return Err(c.err("metadata.name", "missing"));
    }
    Ok((c, name))
}

pub fn node(n: &core::Node, source: Option<&str>) -> Result<Node, ObjectError> {
    let (c, name) = ctx("Node", source, &n.metadata)?;
    let mut ips = BTreeSet::new();
    let addresses = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or(&[]);
    for (i, a) in addresses.iter().enumerate() {
        // Hostname and DNS entries are not addresses a packet carries.
        if matches!(a.type_.as_str(), "Hostname" | "InternalDNS" | "ExternalDNS") {
            continue;
        }
        let ip = a.address.parse::<IpAddr>().map_err(|_| {
            c.err(
                format!("status.addresses[{i}].address"),
                format!("invalid IP {:?}", a.address),
            )
        })?;
        ips.insert(ip);
    }
    Ok(Node {
        name,
        labels: n.metadata.labels.clone().unwrap_or_default().into(),
        ips: ips.into_iter().collect(),
    })
}

fn priority(c: &Ctx, p: i32) -> Result<u16, ObjectError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p <= 1000)
        .ok_or_else(|| c.err("spec.priority", format!("{p} is not in 0..1000")))
}

fn sel(c: &Ctx, field: &str, s: &LabelSelector) -> Result<Selector, ObjectError> {
    selector(c, field, s)
}

fn subject(
    c: &Ctx,
    namespaces: &Option<LabelSelector>,
    pods: &Option<impl PodSelectors>,
) -> Result<Subject, ObjectError> {
    match (namespaces, pods.as_ref().map(PodSelectors::selectors)) {
        (Some(ns), None) => Ok(Subject::Namespaces(sel(c, "spec.subject.namespaces", ns)?)),
        (None, Some((ns, p))) => Ok(Subject::Pods {
            namespaces: sel(c, "spec.subject.pods.namespaceSelector", ns)?,
            pods: sel(c, "spec.subject.pods.podSelector", p)?,
        }),
        _ => Err(c.err(
            "spec.subject",
            "exactly one of namespaces or pods must be set",
        )),
    }
}

/// The parts of a peer both generations share, as `Option`s.
struct RawPeer<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<(&'a LabelSelector, &'a LabelSelector)>,
    nodes: Option<&'a LabelSelector>,
    networks: Option<Vec<&'a str>>,
    domain_names: bool,
}

/// A namespace selector and a pod selector, as both API generations'
/// `NamespacedPod` hold them.
trait PodSelectors {
    fn selectors(&self) -> (&LabelSelector, &LabelSelector);
}

impl PodSelectors for v1alpha1::NamespacedPod {
    fn selectors(&self) -> (&LabelSelector, &LabelSelector) {
        (&self.namespace_selector, &self.pod_selector)
    }
}

impl PodSelectors for v1alpha2::NamespacedPod {
    fn selectors(&self) -> (&LabelSelector, &LabelSelector) {
        (&self.namespace_selector, &self.pod_selector)
    }
}

impl<'a> RawPeer<'a> {
    /// The namespaces-or-pods peer every kind has in both directions.
    fn new(namespaces: &'a Option<LabelSelector>, pods: &'a Option<impl PodSelectors>) -> Self {
        RawPeer {
            namespaces: namespaces.as_ref(),
            pods: pods.as_ref().map(PodSelectors::selectors),
            nodes: None,
            networks: None,
            domain_names: false,
        }
    }

    /// What egress peers add: nodes, networks, and domainNames where the
    /// kind has them.
    fn egress(
        self,
        nodes: &'a Option<LabelSelector>,
        networks: &'a Option<Vec<impl AsRef<str>>>,
        domain_names: bool,
    ) -> Self {
        RawPeer {
            nodes: nodes.as_ref(),
            networks: strs(networks),
            domain_names,
            ..self
        }
    }
}

/// A rule's ports as its API generation spells them.
enum RawPorts<'a> {
    V1(&'a Option<Vec<v1alpha1::AdminNetworkPolicyPort>>),
    V2(&'a Option<Vec<v1alpha2::ClusterNetworkPolicyProtocol>>),
}

/// One rule of any kind, generation and direction, before validation.
struct RawRule<'a> {
    name: &'a String,
    action: Action,
    peers: Vec<RawPeer<'a>>,
    ports: RawPorts<'a>,
}

/// The rules of one direction of any admin policy: `lower` gives each
/// rule's parts, `peer_field` names its peers (`from`, or `to`, whose
/// rules also have their named ports checked).
fn rules<'r, R>(
    c: &Ctx,
    field: &str,
    peer_field: &str,
    rules: &'r [R],
    lower: impl Fn(&'r R) -> RawRule<'r>,
) -> Result<Vec<AdminRule>, ObjectError> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let raw = lower(r);
        let (action, peers) = peers(c, &format!("{f}.{peer_field}"), raw.action, raw.peers)?;
        let ports = match raw.ports {
            RawPorts::V1(ps) => port_list(c, &format!("{f}.ports"), ps, v1_port)?,
            RawPorts::V2(ps) => port_list(c, &format!("{f}.protocols"), ps, v2_port)?,
        };
        let rule = AdminRule {
            name: raw.name.clone(),
            action,
            peers,
            ports,
        };
        if peer_field == "to" {
            check_named_ports(c, &f, &rule)?;
        }
        out.push(rule);
    }
    Ok(out)
}

fn peers(
    c: &Ctx,
    field: &str,
    action: Action,
    raw: Vec<RawPeer>,
) -> Result<(Action, Vec<AdminPeer>), ObjectError> {
    if raw.is_empty() {
        return Err(c.err(field, "must hold at least one peer"));
    }
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        if p.domain_names {
            return Err(c.err(
                format!("{f}.domainNames"),
                "domainNames peers are not supported by nftpol",
            ));
        }
        let set = usize::from(p.namespaces.is_some())
            + usize::from(p.pods.is_some())
            + usize::from(p.nodes.is_some())
            + usize::from(p.networks.is_some());
        if set > 1 {
            return Err(c.err(
                f,
                "exactly one of namespaces, pods, nodes or networks must be set",
            ));
        }
        if let Some(ns) = p.namespaces {
            out.push(AdminPeer::Namespaces(sel(
                c,
                &format!("{f}.namespaces"),
                ns,
            )?));
        } else if let Some((ns, pods)) = p.pods {
            out.push(AdminPeer::Pods {
                namespaces: sel(c, &format!("{f}.pods.namespaceSelector"), ns)?,
                pods: sel(c, &format!("{f}.pods.podSelector"), pods)?,
            });
        } else if let Some(n) = p.nodes {
            out.push(AdminPeer::Nodes(sel(c, &format!("{f}.nodes"), n)?));
        } else if let Some(nets) = p.networks {
            let mut v = Vec::new();
            for (j, s) in nets.into_iter().enumerate() {
                v.push(parse_cidr(c, &format!("{f}.networks[{j}]"), s)?.trunc());
            }
            if v.is_empty() {
                return Err(c.err(format!("{f}.networks"), "must hold at least one CIDR"));
            }
            out.push(AdminPeer::Networks(v));
        } else {
            // A peer of a newer API version than this one knows: fail
            // closed as upstream asks (Accept matches nothing, Deny and
            // Pass deny everything).
            match action {
                Action::Accept => {}
                Action::Deny | Action::Pass => return Ok((Action::Deny, vec![AdminPeer::All])),
            }
        }
    }
    Ok((action, out))
}

fn port_number(c: &Ctx, field: &str, n: i32) -> Result<u16, ObjectError> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| c.err(field, format!("{n} is not a port number (1-65535)")))
}

fn protocol(c: &Ctx, field: &str, s: &str) -> Result<Protocol, ObjectError> {
    if s.is_empty() {
        return Ok(Protocol::Tcp);
    }
    Protocol::parse(s).ok_or_else(|| {
        c.err(
            field,
            format!("unsupported protocol {s:?} (want TCP, UDP or SCTP)"),
        )
    })
}

fn range(
    c: &Ctx,
    field: &str,
    protocol: Protocol,
    start: i32,
    end: i32,
) -> Result<AdminPort, ObjectError> {
    let lo = port_number(c, &format!("{field}.start"), start)?;
    let hi = port_number(c, &format!("{field}.end"), end)?;
    if hi < lo {
        return Err(c.err(
            format!("{field}.end"),
            format!("{hi} is less than start {lo}"),
        ));
    }
    Ok(AdminPort::Range { protocol, lo, hi })
}

fn named(c: &Ctx, field: &str, name: &str) -> Result<AdminPort, ObjectError> {
    if let Err(m) = apisyntax::port_name(name) {
        return Err(c.err(field, format!("invalid port name {name:?}: {m}")));
    }
    Ok(AdminPort::Named(name.to_string()))
}

/// Named ports exist only on pods: a rule that also names node or network
/// peers is invalid (upstream's CRD rejects it too).
fn check_named_ports(c: &Ctx, field: &str, r: &AdminRule) -> Result<(), ObjectError> {
    let named = r
        .ports
        .iter()
        .flatten()
        .any(|p| matches!(p, AdminPort::Named(_)));
    let non_pod = r
        .peers
        .iter()
        .any(|p| matches!(p, AdminPeer::Nodes(_) | AdminPeer::Networks(_)));
    if named && non_pod {
        return Err(c.err(field, "networks/nodes peers cannot be set with named ports"));
    }
    Ok(())
}

/// A rule's port list in either generation: unset is `None` (every
/// port), set but empty is invalid, and `each` converts one entry given
/// its field path.
fn port_list<P>(
    c: &Ctx,
    field: &str,
    ps: &Option<Vec<P>>,
    each: fn(&Ctx, &str, &P) -> Result<AdminPort, ObjectError>,
) -> Result<Option<Vec<AdminPort>>, ObjectError> {
    let Some(list) = ps else { return Ok(None) };
    if list.is_empty() {
        return Err(c.err(field, "must hold at least one entry when set"));
    }
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        out.push(each(c, &format!("{field}[{i}]"), p)?);
    }
    Ok(Some(out))
}

fn v2_port(
    c: &Ctx,
    f: &str,
    p: &v1alpha2::ClusterNetworkPolicyProtocol,
) -> Result<AdminPort, ObjectError> {
    let by_proto = [
        (
            Protocol::Tcp,
            "tcp",
            p.tcp.as_ref().map(|x| &x.destination_port),
        ),
        (
            Protocol::Udp,
            "udp",
            p.udp.as_ref().map(|x| &x.destination_port),
        ),
        (
            Protocol::Sctp,
            "sctp",
            p.sctp.as_ref().map(|x| &x.destination_port),
        ),
    ];
    let count = by_proto.iter().filter(|x| x.2.is_some()).count()
        + usize::from(!p.destination_named_port.is_empty());
    let one = by_proto
        .into_iter()
        .find_map(|(proto, key, port)| Some((proto, key, port?)));
    let (proto, key, port) = match one {
        _ if count != 1 => {
            return Err(c.err(
                f,
                "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
            ))
        }
        None => {
            return named(
                c,
                &format!("{f}.destinationNamedPort"),
                &p.destination_named_port,
            )
        }
        Some(one) => one,
    };
    let pf = format!("{f}.{key}.destinationPort");
    match port {
        None => Ok(AdminPort::Range {
            protocol: proto,
            lo: 1,
            hi: u16::MAX,
        }),
        Some(v1alpha2::Port {
            number: Some(n),
            range: None,
        }) => {
            let n = port_number(c, &format!("{pf}.number"), *n)?;
            Ok(AdminPort::Range {
                protocol: proto,
                lo: n,
                hi: n,
            })
        }
        Some(v1alpha2::Port {
            number: None,
            range: Some(r),
        }) => range(c, &format!("{pf}.range"), proto, r.start, r.end),
        Some(_) => Err(c.err(pf, "exactly one of number or range must be set")),
    }
}

impl From<v1alpha2::ClusterNetworkPolicyRuleAction> for Action {
    fn from(a: v1alpha2::ClusterNetworkPolicyRuleAction) -> Self {
        match a {
            v1alpha2::ClusterNetworkPolicyRuleAction::Accept => Action::Accept,
            v1alpha2::ClusterNetworkPolicyRuleAction::Deny => Action::Deny,
            v1alpha2::ClusterNetworkPolicyRuleAction::Pass => Action::Pass,
        }
    }
}

impl From<v1alpha1::AdminNetworkPolicyRuleAction> for Action {
    fn from(a: v1alpha1::AdminNetworkPolicyRuleAction) -> Self {
        match a {
            v1alpha1::AdminNetworkPolicyRuleAction::Allow => Action::Accept,
            v1alpha1::AdminNetworkPolicyRuleAction::Deny => Action::Deny,
            v1alpha1::AdminNetworkPolicyRuleAction::Pass => Action::Pass,
        }
    }
}

impl From<v1alpha1::BaselineAdminNetworkPolicyRuleAction> for Action {
    fn from(a: v1alpha1::BaselineAdminNetworkPolicyRuleAction) -> Self {
        match a {
            v1alpha1::BaselineAdminNetworkPolicyRuleAction::Allow => Action::Accept,
            v1alpha1::BaselineAdminNetworkPolicyRuleAction::Deny => Action::Deny,
        }
    }
}

fn strs(v: &Option<Vec<impl AsRef<str>>>) -> Option<Vec<&str>> {
    v.as_ref().map(|v| v.iter().map(AsRef::as_ref).collect())
}

pub fn cluster_network_policy(
    p: &v1alpha2::ClusterNetworkPolicy,
    source: Option<&str>,
) -> Result<AdminPolicy, ObjectError> {
    let (c, name) = ctx("ClusterNetworkPolicy", source, &p.metadata)?;
    let s = &p.spec;
    let subject = subject(&c, &s.subject.namespaces, &s.subject.pods)?;
    let ingress = rules(&c, "spec.ingress", "from", &s.ingress, |r| RawRule {
        name: &r.name,
        action: r.action.into(),
        peers: r
            .from
            .iter()
            .map(|p| RawPeer::new(&p.namespaces, &p.pods))
            .collect(),
        ports: RawPorts::V2(&r.protocols),
    })?;
    let egress = rules(&c, "spec.egress", "to", &s.egress, |r| RawRule {
        name: &r.name,
        action: r.action.into(),
        peers: r
            .to
            .iter()
            .map(|p| {
                RawPeer::new(&p.namespaces, &p.pods).egress(
                    &p.nodes,
                    &p.networks,
                    p.domain_names.is_some(),
                )
            })
            .collect(),
        ports: RawPorts::V2(&r.protocols),
    })?;
    Ok(AdminPolicy {
        kind: AdminKind::ClusterNetworkPolicy,
        name,
        tier: match s.tier {
            v1alpha2::Tier::Admin => Tier::Admin,
            v1alpha2::Tier::Baseline => Tier::Baseline,
        },
        priority: Some(priority(&c, s.priority)?),
        subject,
        ingress,
        egress,
    })
}

fn v1_port(
    c: &Ctx,
    f: &str,
    p: &v1alpha1::AdminNetworkPolicyPort,
) -> Result<AdminPort, ObjectError> {
    match (&p.port_number, &p.named_port, &p.port_range) {
        (Some(n), None, None) => {
            let proto = protocol(c, &format!("{f}.portNumber.protocol"), &n.protocol)?;
            let port = port_number(c, &format!("{f}.portNumber.port"), n.port)?;
            Ok(AdminPort::Range {
                protocol: proto,
                lo: port,
                hi: port,
            })
        }
        (None, Some(name), None) => named(c, &format!("{f}.namedPort"), name),
        (None, None, Some(r)) => {
            let proto = protocol(c, &format!("{f}.portRange.protocol"), &r.protocol)?;
            range(c, &format!("{f}.portRange"), proto, r.start, r.end)
        }
        _ => Err(c.err(
            f,
            "exactly one of portNumber, namedPort or portRange must be set",
        )),
    }
}

/// The v1alpha1 rules of one direction of either kind: `lower` gives a
/// rule's name, action, peers and ports (the kinds' rules differ only in
/// their action type and, for egress, domainNames).
fn v1_rules<'r, R>(
    c: &Ctx,
    field: &str,
    peer_field: &str,
    rs: &'r [R],
    lower: impl Fn(
        &'r R,
    ) -> (
        &'r String,
        Action,
        Vec<RawPeer<'r>>,
        &'r Option<Vec<v1alpha1::AdminNetworkPolicyPort>>,
    ),
) -> Result<Vec<AdminRule>, ObjectError> {
    rules(c, field, peer_field, rs, |r| {
        let (name, action, peers, ports) = lower(r);
        RawRule {
            name,
            action,
            peers,
            ports: RawPorts::V1(ports),
        }
    })
}

fn v1_ingress_peers(from: &[v1alpha1::AdminNetworkPolicyIngressPeer]) -> Vec<RawPeer<'_>> {
    from.iter()
        .map(|p| RawPeer::new(&p.namespaces, &p.pods))
        .collect()
}

pub fn admin_network_policy(
    p: &v1alpha1::AdminNetworkPolicy,
    source: Option<&str>,
) -> Result<AdminPolicy, ObjectError> {
    let (c, name) = ctx("AdminNetworkPolicy", source, &p.metadata)?;
    let s = &p.spec;
    let ingress = v1_rules(&c, "spec.ingress", "from", &s.ingress, |r| {
        (
            &r.name,
            r.action.into(),
            v1_ingress_peers(&r.from),
            &r.ports,
        )
    })?;
    let egress = v1_rules(&c, "spec.egress", "to", &s.egress, |r| {
        let peers = r.to.iter().map(|p| {
            RawPeer::new(&p.namespaces, &p.pods).egress(
                &p.nodes,
                &p.networks,
                p.domain_names.is_some(),
            )
        });
        (&r.name, r.action.into(), peers.collect(), &r.ports)
    })?;
    Ok(AdminPolicy {
        kind: AdminKind::AdminNetworkPolicy,
        name,
        tier: Tier::Admin,
        priority: Some(priority(&c, s.priority)?),
        subject: subject(&c, &s.subject.namespaces, &s.subject.pods)?,
        ingress,
        egress,
    })
}

pub fn baseline_admin_network_policy(
    p: &v1alpha1::BaselineAdminNetworkPolicy,
    source: Option<&str>,
) -> Result<AdminPolicy, ObjectError> {
    let (c, name) = ctx("BaselineAdminNetworkPolicy", source, &p.metadata)?;
    if name != "default" {
        return Err(c.err(
            "metadata.name",
            "the only BaselineAdminNetworkPolicy allowed is named \"default\"",
        ));
    }
    let s = &p.spec;
    let ingress = v1_rules(&c, "spec.ingress", "from", &s.ingress, |r| {
        (
            &r.name,
            r.action.into(),
            v1_ingress_peers(&r.from),
            &r.ports,
        )
    })?;
    let egress = v1_rules(&c, "spec.egress", "to", &s.egress, |r| {
        let peers =
            r.to.iter()
                .map(|p| RawPeer::new(&p.namespaces, &p.pods).egress(&p.nodes, &p.networks, false));
        (&r.name, r.action.into(), peers.collect(), &r.ports)
    })?;
    Ok(AdminPolicy {
        kind: AdminKind::BaselineAdminNetworkPolicy,
        name,
        tier: Tier::Baseline,
        priority: None,
        subject: subject(&c, &s.subject.namespaces, &s.subject.pods)?,
        ingress,
        egress,
    })
}
