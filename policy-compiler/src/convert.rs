//! Kubernetes API objects (k8s-openapi types) -> the validated model. This
//! is where every user mistake is caught, once, with the field path that
//! holds it; the compiler and evaluator then work on values that cannot be
//! malformed. Validation follows the apiserver's own rules for
//! networking.k8s.io/v1 where they matter for enforcement.

use crate::apisyntax;
use crate::error::ObjectError;
use crate::ipblock::{cidr_minus, AddrRange};
use crate::model::*;
use crate::selector::{Operator, Requirement, Selector};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Builds `ObjectError`s for one object.
pub(crate) struct Ctx<'a> {
    pub(crate) source: Option<&'a str>,
    pub(crate) kind: &'static str,
    pub(crate) object: String,
}

impl Ctx<'_> {
    pub(crate) fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ObjectError {
        ObjectError {
            file: self.source.map(str::to_string),
            kind: self.kind.to_string(),
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

fn object_name(
    ctx_kind: &'static str,
    source: Option<&str>,
    meta: &ObjectMeta,
    namespaced: bool,
) -> Result<(String, String), ObjectError> {
    names(
        ctx_kind,
        source,
        meta.namespace.as_deref(),
        meta.name.as_deref(),
        namespaced,
    )
}

/// An object's namespace and name as the model keys it: a namespaced
/// object without a namespace is in `default`, and a name is required.
fn names(
    ctx_kind: &'static str,
    source: Option<&str>,
    namespace: Option<&str>,
    name: Option<&str>,
    namespaced: bool,
) -> Result<(String, String), ObjectError> {
    let name = name.unwrap_or_default().to_string();
    let namespace = if namespaced {
        namespace
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    if name.is_empty() {
        let object = if namespaced {
            format!("{namespace}/<unnamed>")
        } else {
            "<unnamed>".to_string()
        };
        return Err(Ctx {
            source,
            kind: ctx_kind,
            object,
        }
        .err("metadata.name", "missing"));
    }
    Ok((namespace, name))
}

pub fn namespace(ns: &core::Namespace, source: Option<&str>) -> Result<Namespace, ObjectError> {
    let (_, name) = object_name("Namespace", source, &ns.metadata, false)?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    // The apiserver always sets this label; offline input may lack it.
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    Ok(Namespace {
        name,
        labels: labels.into(),
    })
}

/// What the reduction reads of a pod, borrowed from whichever reader
/// parsed it: a whole `k8s_openapi` object ([`pod`]) or the agent's
/// reader of served pages, which never builds one.
#[derive(Debug, Default)]
pub struct PodFields<'a> {
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub labels: Labels,
    pub node_name: Option<&'a str>,
    pub host_network: bool,
    pub phase: Option<&'a str>,
    pub pod_ip: Option<&'a str>,
    pub pod_ips: Vec<&'a str>,
    /// The ports of the containers and of the init containers that keep
    /// running (`restartPolicy: Always`), in that order.
    pub ports: Vec<PortFields<'a>>,
}

/// One container port, and where it is (`containers[1].ports[0]`).
#[derive(Debug)]
pub struct PortFields<'a> {
    /// `containers` or `initContainers`.
    pub list: &'static str,
    pub container: usize,
    pub index: usize,
    pub name: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub number: i32,
}

/// Whether an init container's ports count as the pod's: those of a
/// native sidecar (`restartPolicy: Always`) do, as upstream
/// implementations count them, because it serves for the pod's whole
/// life; plain init containers have exited before the pod serves.
pub fn serves(init_restart_policy: Option<&str>) -> bool {
    init_restart_policy == Some("Always")
}

pub fn pod(p: &core::Pod, source: Option<&str>) -> Result<Pod, ObjectError> {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    let sidecars = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[]);
    let serving = containers
        .iter()
        .enumerate()
        .map(|(i, c)| ("containers", i, c))
        .chain(
            sidecars
                .iter()
                .enumerate()
                .filter(|(_, c)| serves(c.restart_policy.as_deref()))
                .map(|(i, c)| ("initContainers", i, c)),
        );
    let mut ports = Vec::new();
    for (list, container, c) in serving {
        for (index, port) in c.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
            ports.push(PortFields {
                list,
                container,
                index,
                name: port.name.as_deref(),
                protocol: port.protocol.as_deref(),
                number: port.container_port,
            });
        }
    }
    let labels = p.metadata.labels.as_ref();
    pod_fields(
        PodFields {
            namespace: p.metadata.namespace.as_deref(),
            name: p.metadata.name.as_deref(),
            labels: labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            node_name: spec.and_then(|s| s.node_name.as_deref()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.as_deref()),
            pod_ip: status.and_then(|s| s.pod_ip.as_deref()),
            pod_ips: status
                .and_then(|s| s.pod_ips.as_deref())
                .unwrap_or(&[])
                .iter()
                .map(|ip| ip.ip.as_str())
                .collect(),
            ports,
        },
        source,
    )
}

/// Validates a pod's fields into the model: the one place a pod's
/// addresses and named ports are checked, whichever reader parsed it.
pub fn pod_fields(f: PodFields<'_>, source: Option<&str>) -> Result<Pod, ObjectError> {
    let (namespace, name) = names("Pod", source, f.namespace, f.name, true)?;
    let ctx = Ctx {
        source,
        kind: "Pod",
        object: format!("{namespace}/{name}"),
    };
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    for (i, ip) in f.pod_ips.iter().enumerate() {
        let a = ip.parse::<IpAddr>().map_err(|_| {
            ctx.err(
                format!("status.podIPs[{i}].ip"),
                format!("invalid IP {ip:?}"),
            )
        })?;
        ips.insert(a);
    }
    if let Some(ip) = f.pod_ip.filter(|s| !s.is_empty()) {
        let a = ip
            .parse::<IpAddr>()
            .map_err(|_| ctx.err("status.podIP", format!("invalid IP {ip:?}")))?;
        ips.insert(a);
    }
    let mut named_ports = BTreeSet::new();
    for port in &f.ports {
        let Some(pname) = port.name.filter(|n| !n.is_empty()) else {
            continue;
        };
        let field = format!(
            "spec.{}[{}].ports[{}]",
            port.list, port.container, port.index
        );
        let protocol = match port.protocol {
            None | Some("") => Protocol::Tcp,
            Some(s) => Protocol::parse(s).ok_or_else(|| {
                ctx.err(
                    format!("{field}.protocol"),
                    format!("unsupported protocol {s:?}"),
                )
            })?,
        };
        let number = u16::try_from(port.number)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| {
                ctx.err(
                    format!("{field}.containerPort"),
                    format!("{} is not a port number (1-65535)", port.number),
                )
            })?;
        named_ports.insert(NamedPort {
            name: pname.to_string(),
            protocol,
            port: number,
        });
    }
    Ok(Pod {
        namespace,
        name,
        labels: f.labels,
        node_name: f.node_name.filter(|n| !n.is_empty()).map(str::to_string),
        host_network: f.host_network,
        ips: ips.into_iter().collect(),
        named_ports: named_ports.into_iter().collect(),
        terminal: matches!(f.phase, Some("Succeeded") | Some("Failed")),
    })
}

pub fn policy(np: &net::NetworkPolicy, source: Option<&str>) -> Result<Policy, ObjectError> {
    let (namespace, name) = object_name("NetworkPolicy", source, &np.metadata, true)?;
    let ctx = Ctx {
        source,
        kind: "NetworkPolicy",
        object: format!("{namespace}/{name}"),
    };
    object_meta(&ctx, &np.metadata)?;
    // The apiserver stores a policy without a spec as the empty spec: all
    // pods of the namespace, isolated for ingress, nothing allowed.
    let empty = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&empty);
    if let Some(s) = &spec.pod_selector {
        selector_syntax(&ctx, "spec.podSelector", s)?;
    }
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(&ctx, "spec.podSelector", s)?,
        None => Selector::everything(),
    };
    let ingress_rules = spec.ingress.as_deref().unwrap_or(&[]);
    let egress_rules = spec.egress.as_deref().unwrap_or(&[]);

    // policyTypes defaulting as the apiserver does it: Ingress always,
    // Egress when there are egress rules.
    let (mut has_ingress, mut has_egress) = (false, false);
    match spec.policy_types.as_deref() {
        Some(types) if types.len() > 2 => {
            return Err(ctx.err(
                "spec.policyTypes",
                format!(
                    "may not specify more than two policyTypes (got {})",
                    types.len()
                ),
            ))
        }
        Some(types) if !types.is_empty() => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_ingress = true,
                    "Egress" => has_egress = true,
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unsupported value {other:?} (want Ingress or Egress)"),
                        ))
                    }
                }
            }
        }
        _ => {
            has_ingress = true;
            has_egress = !egress_rules.is_empty();
        }
    }

    let ing = ingress_rules
        .iter()
        .map(|r| (r.from.as_deref(), r.ports.as_deref()));
    let egr = egress_rules
        .iter()
        .map(|r| (r.to.as_deref(), r.ports.as_deref()));
    let ingress = rules(&ctx, "spec.ingress", "from", ing)?;
    let egress = rules(&ctx, "spec.egress", "to", egr)?;
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
        audit: audit(&ctx, np.metadata.annotations.as_ref())?,
    })
}

type RawRule<'a> = (
    Option<&'a [net::NetworkPolicyPeer]>,
    Option<&'a [net::NetworkPolicyPort]>,
);

/// The rules of one direction; `base` is their list's field path.
fn rules<'a>(
    ctx: &Ctx,
    base: &str,
    peers_field: &str,
    list: impl Iterator<Item = RawRule<'a>>,
) -> Result<Vec<PolicyRule>, ObjectError> {
    list.enumerate()
        .map(|(i, (peers, ports))| rule(ctx, &format!("{base}[{i}]"), peers_field, peers, ports))
        .collect()
}

/// Annotation naming how a policy's verdicts are logged.
pub const LOG_ANNOTATION: &str = "nftpol.io/log";
/// Annotation that stages a policy (`audit`) instead of enforcing it.
pub const ENFORCEMENT_ANNOTATION: &str = "nftpol.io/enforcement";

/// The policy's audit settings. An unknown value is an error like any
/// invalid field: guessing what a typo meant is how a policy ends up
/// enforced when it was meant to be staged.
fn audit(
    ctx: &Ctx,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Audit, ObjectError> {
    let mut out = Audit::default();
    let Some(a) = annotations else {
        return Ok(out);
    };
    if let Some(v) = a.get(LOG_ANNOTATION) {
        out.log = LogMode::parse(v).ok_or_else(|| {
            ctx.err(
                format!("metadata.annotations[{LOG_ANNOTATION:?}]"),
                format!("unsupported value {v:?} (want deny, all or off)"),
            )
        })?;
    }
    if let Some(v) = a.get(ENFORCEMENT_ANNOTATION) {
        out.staged = match v.as_str() {
            "audit" => true,
            "enforce" => false,
            _ => {
                return Err(ctx.err(
                    format!("metadata.annotations[{ENFORCEMENT_ANNOTATION:?}]"),
                    format!("unsupported value {v:?} (want audit or enforce)"),
                ))
            }
        };
    }
    Ok(out)
}

fn rule(
    ctx: &Ctx,
    base: &str,
    peers_field: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
) -> Result<PolicyRule, ObjectError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| peer(ctx, &format!("{base}.{peers_field}[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port(ctx, &format!("{base}.ports[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(PolicyRule { peers, ports })
}

fn peer(ctx: &Ctx, field: &str, p: &net::NetworkPolicyPeer) -> Result<Peer, ObjectError> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ctx.err(
            field,
            "ipBlock cannot be combined with podSelector or namespaceSelector",
        )),
        (None, None, None) => Err(ctx.err(
            field,
            "a peer needs one of podSelector, namespaceSelector or ipBlock",
        )),
        (Some(b), None, None) => ip_block(ctx, &format!("{field}.ipBlock"), b),
        (None, ps, ns) => {
            let checked = |s: &LabelSelector, sub: &str| {
                let f = format!("{field}.{sub}");
                selector_syntax(ctx, &f, s)?;
                selector(ctx, &f, s)
            };
            Ok(Peer::Pods {
                pod_selector: ps.as_ref().map(|s| checked(s, "podSelector")).transpose()?,
                namespace_selector: ns
                    .as_ref()
                    .map(|s| checked(s, "namespaceSelector"))
                    .transpose()?,
            })
        }
    }
}

pub(crate) fn parse_cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, ObjectError> {
    // A bare address is not a CIDR for the apiserver either.
    let net: IpNet = s
        .parse()
        .map_err(|_| ctx.err(field, format!("invalid CIDR {s:?}")))?;
    Ok(net)
}

/// An except as the apiserver reads it against its cidr. It tests
/// "inside" with Go's `net.IPNet`, which reads an IPv4-mapped IPv6 prefix
/// (`::ffff:a.b.c.d/n`, n >= 96) against an IPv4 cidr as the IPv4 prefix
/// `a.b.c.d/(n-96)`, so it accepts such an except, and Go implementations
/// match it that way. Refusing it would skip the whole policy, and with
/// it the isolation it gives, for an except that was meant to deny more.
fn as_apiserver_reads_except(cidr: &IpNet, except: IpNet) -> IpNet {
    match (cidr, except) {
        (IpNet::V4(_), IpNet::V6(e)) if e.prefix_len() >= 96 => e
            .addr()
            .to_ipv4_mapped()
            .and_then(|a| ipnet::Ipv4Net::new(a, e.prefix_len() - 96).ok())
            .map_or(except, IpNet::V4),
        _ => except,
    }
}

fn ip_block(ctx: &Ctx, field: &str, b: &net::IPBlock) -> Result<Peer, ObjectError> {
    let cidr_field = format!("{field}.cidr");
    if b.cidr.is_empty() {
        return Err(ctx.err(cidr_field, "required"));
    }
    let sloppy = |f: &str, s: &str| {
        apisyntax::cidr(s).map_err(|m| ctx.err(f, format!("invalid CIDR {s:?}: {m}")))
    };
    let cidr = sloppy(&cidr_field, &b.cidr)?;
    let mut except = Vec::new();
    for (i, e) in b.except.as_deref().unwrap_or(&[]).iter().enumerate() {
        let ef = format!("{field}.except[{i}]");
        let en = as_apiserver_reads_except(&cidr, sloppy(&ef, e)?);
        let inside = en.addr().is_ipv4() == cidr.addr().is_ipv4()
            && cidr.trunc().contains(&en.trunc())
            && en.prefix_len() > cidr.prefix_len();
        if !inside {
            return Err(ctx.err(
                ef,
                format!("{e:?} must be a strict subset of cidr {:?}", b.cidr),
            ));
        }
        except.push(en);
    }
    let ranges: Vec<AddrRange> = cidr_minus(&cidr, &except);
    Ok(Peer::IpBlock {
        cidr,
        except,
        ranges,
    })
}

fn port(ctx: &Ctx, field: &str, p: &net::NetworkPolicyPort) -> Result<PortSpec, ObjectError> {
    // Exact case: the apiserver refuses `tcp`.
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).filter(|p| p.api() == s).ok_or_else(|| {
            ctx.err(
                format!("{field}.protocol"),
                format!("unsupported protocol {s:?} (want TCP, UDP or SCTP)"),
            )
        })?,
    };
    let number = |n: i32, f: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| ctx.err(f, format!("{n} is not a port number (1-65535)")))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortRef::Any,
        (None, Some(_)) => return Err(ctx.err(format!("{field}.endPort"), "endPort requires port")),
        (Some(IntOrString::Int(n)), end) => {
            let lo = number(*n, &format!("{field}.port"))?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = number(e, &format!("{field}.endPort"))?;
                    if hi < lo {
                        return Err(ctx.err(
                            format!("{field}.endPort"),
                            format!("{hi} is less than port {lo}"),
                        ));
                    }
                    hi
                }
            };
            PortRef::Range(lo, hi)
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(ctx.err(
                    format!("{field}.endPort"),
                    "endPort cannot be used with a named port",
                ));
            }
            // The apiserver takes a string port as a name only: `"80"` is
            // rejected for having no letter, never read as a number.
            if let Err(m) = apisyntax::port_name(s) {
                return Err(ctx.err(
                    format!("{field}.port"),
                    format!("{s:?} is not a valid port name: {m} (a port number is written without quotes)"),
                ));
            }
            PortRef::Named(s.clone())
        }
    };
    Ok(PortSpec { protocol, port })
}

/// The metadata rules the apiserver applies to every namespaced object it
/// stores (`metadata.name` is known to be non-empty here).
fn object_meta(ctx: &Ctx, m: &ObjectMeta) -> Result<(), ObjectError> {
    let invalid = |f: &str, v: &str, msg: String| ctx.err(f, format!("{v:?}: {msg}"));
    if let Some(g) = m.generate_name.as_deref().filter(|g| !g.is_empty()) {
        apisyntax::object_name(g, true).map_err(|e| invalid("metadata.generateName", g, e))?;
    }
    if let Some(n) = m.name.as_deref() {
        apisyntax::object_name(n, false).map_err(|e| invalid("metadata.name", n, e))?;
    }
    if let Some(ns) = m.namespace.as_deref().filter(|n| !n.is_empty()) {
        apisyntax::dns1123_label(ns).map_err(|e| invalid("metadata.namespace", ns, e))?;
    }
    if m.generation.is_some_and(|g| g < 0) {
        return Err(ctx.err("metadata.generation", "must be greater than or equal to 0"));
    }
    labels(ctx, "metadata.labels", m.labels.as_ref())?;
    if let Some(ann) = &m.annotations {
        for k in ann.keys() {
            apisyntax::qualified_name(&k.to_lowercase())
                .map_err(|e| invalid("metadata.annotations", k, e))?;
        }
        let size: usize = ann.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > apisyntax::ANNOTATIONS_MAX_BYTES {
            return Err(ctx.err(
                "metadata.annotations",
                format!(
                    "{size} bytes: may not be more than {} bytes",
                    apisyntax::ANNOTATIONS_MAX_BYTES
                ),
            ));
        }
    }
    for (i, o) in m
        .owner_references
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let f = format!("metadata.ownerReferences[{i}]");
        let version = o.api_version.rsplit('/').next().unwrap_or_default();
        for (sub, empty) in [
            ("apiVersion", version.is_empty()),
            ("kind", o.kind.is_empty()),
            ("name", o.name.is_empty()),
            ("uid", o.uid.is_empty()),
        ] {
            if empty {
                return Err(ctx.err(format!("{f}.{sub}"), "must not be empty"));
            }
        }
    }
    let finalizers = m.finalizers.as_deref().unwrap_or(&[]);
    for (i, fin) in finalizers.iter().enumerate() {
        apisyntax::qualified_name(fin)
            .map_err(|e| invalid(&format!("metadata.finalizers[{i}]"), fin, e))?;
    }
    if ["orphan", "foregroundDeletion"]
        .iter()
        .all(|f| finalizers.iter().any(|x| x == f))
    {
        return Err(ctx.err(
            "metadata.finalizers",
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    Ok(())
}

fn labels(
    ctx: &Ctx,
    field: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), ObjectError> {
    for (k, v) in labels.into_iter().flatten() {
        apisyntax::qualified_name(k).map_err(|e| ctx.err(field, format!("key {k:?}: {e}")))?;
        apisyntax::label_value(v)
            .map_err(|e| ctx.err(field, format!("value {v:?} of {k:?}: {e}")))?;
    }
    Ok(())
}

/// Each of a selector's matchExpressions with its field path.
fn expressions<'s>(
    field: &str,
    s: &'s LabelSelector,
) -> impl Iterator<Item = (String, &'s LabelSelectorRequirement)> + use<'s> {
    let field = field.to_owned();
    let all = s.match_expressions.iter().flatten().enumerate();
    all.map(move |(i, e)| (format!("{field}.matchExpressions[{i}]"), e))
}

/// The syntax the apiserver demands of a NetworkPolicy's label selectors:
/// label keys and values, expression keys, and expression values.
/// `selector` checks the operators and the shape of each expression.
fn selector_syntax(ctx: &Ctx, field: &str, s: &LabelSelector) -> Result<(), ObjectError> {
    labels(
        ctx,
        &format!("{field}.matchLabels"),
        s.match_labels.as_ref(),
    )?;
    for (ef, e) in expressions(field, s) {
        apisyntax::qualified_name(&e.key)
            .map_err(|m| ctx.err(format!("{ef}.key"), format!("{:?}: {m}", e.key)))?;
        for (j, v) in e.values.as_deref().unwrap_or(&[]).iter().enumerate() {
            apisyntax::label_value(v)
                .map_err(|m| ctx.err(format!("{ef}.values[{j}]"), format!("{v:?}: {m}")))?;
        }
    }
    Ok(())
}

pub(crate) fn selector(ctx: &Ctx, field: &str, s: &LabelSelector) -> Result<Selector, ObjectError> {
    let match_labels = s
        .match_labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut match_expressions = Vec::new();
    for (ef, e) in expressions(field, s) {
        let operator = Operator::parse(&e.operator).ok_or_else(|| {
            ctx.err(
                format!("{ef}.operator"),
                format!(
                    "unknown operator {:?} (want In, NotIn, Exists or DoesNotExist)",
                    e.operator
                ),
            )
        })?;
        if e.key.is_empty() {
            return Err(ctx.err(format!("{ef}.key"), "must not be empty"));
        }
        let values: BTreeSet<String> = e.values.clone().unwrap_or_default().into_iter().collect();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(ctx.err(
                    format!("{ef}.values"),
                    format!("must be non-empty for operator {}", e.operator),
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(ctx.err(
                    format!("{ef}.values"),
                    format!("must be empty for operator {}", e.operator),
                ))
            }
            _ => {}
        }
        match_expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values,
        });
    }
    Ok(Selector {
        match_labels,
        match_expressions,
    })
}

#[cfg(test)]
mod tests {
    use crate::manifest::{parse, Object};
    use crate::model::{NamedPort, Protocol};

    fn pod_ports(text: &str) -> Vec<NamedPort> {
        let l = parse("p.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        match &l.objects[..] {
            [Object::Pod(p)] => p.named_ports.clone(),
            other => panic!("want one pod, got {other:?}"),
        }
    }

    #[test]
    fn sidecar_ports_are_the_pods_and_plain_init_ports_are_not() {
        let ports = pod_ports(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: n}
spec:
  initContainers:
  - {name: once, ports: [{name: setup, containerPort: 7000}]}
  - {name: once-too, restartPolicy: OnFailure, ports: [{name: other, containerPort: 7001}]}
  - {name: side, restartPolicy: Always, ports: [{name: metrics, containerPort: 9102, protocol: UDP}]}
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
"#,
        );
        let names: Vec<(&str, Protocol, u16)> = ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol, p.port))
            .collect();
        assert_eq!(
            names,
            [
                ("http", Protocol::Tcp, 8080),
                ("metrics", Protocol::Udp, 9102)
            ]
        );
    }

    #[test]
    fn a_bad_sidecar_port_names_its_field() {
        let l = parse(
            "p.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\nspec:\n  containers: []\n  initContainers:\n  - {name: s, restartPolicy: Always, ports: [{name: m, containerPort: 70000}]}\n",
        );
        assert_eq!(l.errors.len(), 1);
        assert!(
            l.errors[0]
                .to_string()
                .contains("spec.initContainers[0].ports[0].containerPort"),
            "{}",
            l.errors[0]
        );
    }

    #[test]
    fn an_ipv4_mapped_except_of_an_ipv4_cidr_denies_the_ipv4_hosts() {
        let l = parse(
            "np.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['::ffff:10.1.0.0/112']}}]\n",
        );
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let [Object::Policy(pol)] = &l.objects[..] else {
            panic!("want one policy, got {:?}", l.objects);
        };
        let peers = pol.ingress.as_ref().unwrap()[0].peers.as_ref().unwrap();
        let crate::model::Peer::IpBlock {
            cidr,
            except,
            ranges,
        } = &peers[0]
        else {
            panic!("want an ipBlock, got {peers:?}");
        };
        for (ip, admitted) in [
            ("10.1.2.3", false),
            ("10.2.0.1", true),
            ("10.0.255.255", true),
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            // The evaluator's reading and the compiler's ranges alike.
            assert_eq!(
                crate::eval::spec::in_ip_block(cidr, except, ip),
                admitted,
                "{ip}"
            );
            assert_eq!(
                ranges.iter().any(|r| r.lo <= ip && ip <= r.hi),
                admitted,
                "{ip}"
            );
        }
    }

    #[test]
    fn a_quoted_number_is_not_a_port() {
        for port in [
            r#""80""#,
            r#""0""#,
            r#""-1""#,
            r#""Http""#,
            r#""a--b""#,
            r#""abcdefghijklmnop""#,
        ] {
            let text = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: n}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports: [{{port: {port}}}]\n"
            );
            let l = parse("np.yaml", &text);
            assert_eq!(l.errors.len(), 1, "{port} accepted");
            assert!(
                l.errors[0]
                    .to_string()
                    .contains("spec.ingress[0].ports[0].port"),
                "{}",
                l.errors[0]
            );
        }
    }

    /// One NetworkPolicy per row: its metadata and spec as JSON (`None`:
    /// no spec), and the field path the error must name (`None`: valid).
    #[test]
    fn network_policy_validation_follows_the_apiserver_rule_by_rule() {
        let long_name = "a".repeat(254);
        let big = "x".repeat(256 * 1024);
        let m = r#"{"name": "p", "namespace": "n"}"#;
        let spec_from =
            |peer: &str| format!(r#"{{"podSelector": {{}}, "ingress": [{{"from": [{peer}]}}]}}"#);
        let spec_to = |peer: &str| {
            format!(
                r#"{{"podSelector": {{}}, "policyTypes": ["Egress"], "egress": [{{"to": [{peer}]}}]}}"#
            )
        };
        let spec_port =
            |port: &str| format!(r#"{{"podSelector": {{}}, "ingress": [{{"ports": [{port}]}}]}}"#);
        let spec_sel = |sel: &str| format!(r#"{{"podSelector": {sel}}}"#);
        let rows: Vec<(&str, String, Option<String>, Option<&str>)> = vec![
            // metadata: ValidateObjectMeta with DNS-subdomain names
            ("plain", m.into(), Some("{}".into()), None),
            ("dotted name", r#"{"name": "a.b-c", "namespace": "n"}"#.into(), Some("{}".into()), None),
            ("name case", r#"{"name": "Allow", "namespace": "n"}"#.into(), Some("{}".into()), Some("metadata.name")),
            ("name underscore", r#"{"name": "a_b", "namespace": "n"}"#.into(), Some("{}".into()), Some("metadata.name")),
            ("name length", format!(r#"{{"name": "{long_name}", "namespace": "n"}}"#), Some("{}".into()), Some("metadata.name")),
            ("generateName", r#"{"name": "p", "generateName": "web-", "namespace": "n"}"#.into(), Some("{}".into()), None),
            ("bad generateName", r#"{"name": "p", "generateName": "Web-", "namespace": "n"}"#.into(), Some("{}".into()), Some("metadata.generateName")),
            ("namespace dots", r#"{"name": "p", "namespace": "a.b"}"#.into(), Some("{}".into()), Some("metadata.namespace")),
            ("namespace case", r#"{"name": "p", "namespace": "N"}"#.into(), Some("{}".into()), Some("metadata.namespace")),
            ("labels", r#"{"name": "p", "namespace": "n", "labels": {"example.com/app": "Web_1", "x": ""}}"#.into(), Some("{}".into()), None),
            ("label key", r#"{"name": "p", "namespace": "n", "labels": {"a/b/c": "x"}}"#.into(), Some("{}".into()), Some("metadata.labels")),
            ("label value", r#"{"name": "p", "namespace": "n", "labels": {"a": "-x"}}"#.into(), Some("{}".into()), Some("metadata.labels")),
            ("annotation key case", r#"{"name": "p", "namespace": "n", "annotations": {"Example.COM/Note": "any text at all"}}"#.into(), Some("{}".into()), None),
            ("annotation key", r#"{"name": "p", "namespace": "n", "annotations": {"a b": "x"}}"#.into(), Some("{}".into()), Some("metadata.annotations")),
            ("annotation size", format!(r#"{{"name": "p", "namespace": "n", "annotations": {{"a": "{big}"}}}}"#), Some("{}".into()), Some("metadata.annotations")),
            ("generation", r#"{"name": "p", "namespace": "n", "generation": -1}"#.into(), Some("{}".into()), Some("metadata.generation")),
            ("owner", r#"{"name": "p", "namespace": "n", "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u"}]}"#.into(), Some("{}".into()), None),
            ("owner uid", r#"{"name": "p", "namespace": "n", "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "o", "uid": ""}]}"#.into(), Some("{}".into()), Some("metadata.ownerReferences[0].uid")),
            ("owner version", r#"{"name": "p", "namespace": "n", "ownerReferences": [{"apiVersion": "apps/", "kind": "K", "name": "o", "uid": "u"}]}"#.into(), Some("{}".into()), Some("metadata.ownerReferences[0].apiVersion")),
            ("finalizer", r#"{"name": "p", "namespace": "n", "finalizers": ["example.com/keep"]}"#.into(), Some("{}".into()), None),
            ("finalizer name", r#"{"name": "p", "namespace": "n", "finalizers": ["a b"]}"#.into(), Some("{}".into()), Some("metadata.finalizers[0]")),
            ("finalizer pair", r#"{"name": "p", "namespace": "n", "finalizers": ["orphan", "foregroundDeletion"]}"#.into(), Some("{}".into()), Some("metadata.finalizers")),
            // spec: podSelector through ValidateLabelSelector
            ("no spec", m.into(), None, None),
            ("selector", m.into(), Some(spec_sel(r#"{"matchLabels": {"a.io/b": "c"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["v", ""]}]}"#)), None),
            ("matchLabels key", m.into(), Some(spec_sel(r#"{"matchLabels": {"-a": "b"}}"#)), Some("spec.podSelector.matchLabels")),
            ("matchLabels value", m.into(), Some(spec_sel(r#"{"matchLabels": {"a": "b c"}}"#)), Some("spec.podSelector.matchLabels")),
            ("expression key", m.into(), Some(spec_sel(r#"{"matchExpressions": [{"key": "a/b/c", "operator": "Exists"}]}"#)), Some("spec.podSelector.matchExpressions[0].key")),
            ("expression empty key", m.into(), Some(spec_sel(r#"{"matchExpressions": [{"key": "", "operator": "Exists"}]}"#)), Some("spec.podSelector.matchExpressions[0].key")),
            ("expression value", m.into(), Some(spec_sel(r#"{"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["ok", "not ok"]}]}"#)), Some("spec.podSelector.matchExpressions[0].values[1]")),
            ("operator", m.into(), Some(spec_sel(r#"{"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}"#)), Some("spec.podSelector.matchExpressions[0].operator")),
            ("In without values", m.into(), Some(spec_sel(r#"{"matchExpressions": [{"key": "a", "operator": "In"}]}"#)), Some("spec.podSelector.matchExpressions[0].values")),
            ("Exists with values", m.into(), Some(spec_sel(r#"{"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}"#)), Some("spec.podSelector.matchExpressions[0].values")),
            // spec.policyTypes
            ("types twice", m.into(), Some(r#"{"podSelector": {}, "policyTypes": ["Ingress", "Ingress"]}"#.into()), None),
            ("three types", m.into(), Some(r#"{"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}"#.into()), Some("spec.policyTypes")),
            ("type case", m.into(), Some(r#"{"podSelector": {}, "policyTypes": ["ingress"]}"#.into()), Some("spec.policyTypes[0]")),
            // ValidateNetworkPolicyPort
            ("port", m.into(), Some(spec_port(r#"{"protocol": "SCTP", "port": 1, "endPort": 65535}"#)), None),
            ("named port", m.into(), Some(spec_port(r#"{"protocol": "UDP", "port": "dns-udp"}"#)), None),
            ("protocol case", m.into(), Some(spec_port(r#"{"protocol": "tcp", "port": 80}"#)), Some("spec.ingress[0].ports[0].protocol")),
            ("protocol", m.into(), Some(spec_port(r#"{"protocol": "ICMP"}"#)), Some("spec.ingress[0].ports[0].protocol")),
            ("empty protocol", m.into(), Some(spec_port(r#"{"protocol": ""}"#)), Some("spec.ingress[0].ports[0].protocol")),
            ("port 0", m.into(), Some(spec_port(r#"{"port": 0}"#)), Some("spec.ingress[0].ports[0].port")),
            ("port 65536", m.into(), Some(spec_port(r#"{"port": 65536}"#)), Some("spec.ingress[0].ports[0].port")),
            ("endPort below", m.into(), Some(spec_port(r#"{"port": 80, "endPort": 79}"#)), Some("spec.ingress[0].ports[0].endPort")),
            ("endPort range", m.into(), Some(spec_port(r#"{"port": 80, "endPort": 65536}"#)), Some("spec.ingress[0].ports[0].endPort")),
            ("endPort named", m.into(), Some(spec_port(r#"{"port": "http", "endPort": 90}"#)), Some("spec.ingress[0].ports[0].endPort")),
            ("endPort alone", m.into(), Some(spec_port(r#"{"endPort": 90}"#)), Some("spec.ingress[0].ports[0].endPort")),
            ("port name", m.into(), Some(spec_port(r#"{"port": "a--b"}"#)), Some("spec.ingress[0].ports[0].port")),
            ("quoted number", m.into(), Some(spec_port(r#"{"port": "80"}"#)), Some("spec.ingress[0].ports[0].port")),
            // ValidateNetworkPolicyPeer
            ("no peer", m.into(), Some(spec_from("{}")), Some("spec.ingress[0].from[0]")),
            ("ipBlock and pods", m.into(), Some(spec_from(r#"{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}"#)), Some("spec.ingress[0].from[0]")),
            ("both selectors", m.into(), Some(spec_from(r#"{"podSelector": {}, "namespaceSelector": {"matchLabels": {"a": "b"}}}"#)), None),
            ("peer pod selector", m.into(), Some(spec_from(r#"{"podSelector": {"matchLabels": {"a": "-"}}}"#)), Some("spec.ingress[0].from[0].podSelector.matchLabels")),
            ("peer namespace selector", m.into(), Some(spec_to(r#"{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b/c"]}]}}"#)), Some("spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values[0]")),
            // ValidateIPBlock
            ("ipBlock", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}"#)), None),
            ("leading zeros", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "010.0.0.0/08", "except": ["010.001.0.0/16"]}}"#)), None),
            ("host bits", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.1.2.3/8", "except": ["10.1.2.3/16"]}}"#)), None),
            ("no cidr", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": ""}}"#)), Some("spec.egress[0].to[0].ipBlock.cidr")),
            ("bare address", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.0.0.1"}}"#)), Some("spec.egress[0].to[0].ipBlock.cidr")),
            ("bad except", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/33"]}}"#)), Some("spec.egress[0].to[0].ipBlock.except[0]")),
            ("except outside", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}"#)), Some("spec.egress[0].to[0].ipBlock.except[0]")),
            ("except equal", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}"#)), Some("spec.egress[0].to[0].ipBlock.except[0]")),
            ("except family", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["::/1"]}}"#)), Some("spec.egress[0].to[0].ipBlock.except[0]")),
            ("IPv4-mapped except of an IPv4 cidr", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::ffff:10.1.0.0/112"]}}"#)), None),
            ("IPv4 except of an IPv4-mapped cidr", m.into(), Some(spec_to(r#"{"ipBlock": {"cidr": "::ffff:10.0.0.0/104", "except": ["10.1.0.0/16"]}}"#)), Some("spec.egress[0].to[0].ipBlock.except[0]")),
        ];
        let mut failures = Vec::new();
        for (what, meta, spec, want) in &rows {
            let spec = spec
                .as_ref()
                .map(|s| format!(r#", "spec": {s}"#))
                .unwrap_or_default();
            let text = format!(
                r#"{{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {meta}{spec}}}"#
            );
            let l = parse("np.yaml", &text);
            let got: Option<String> = l.errors.first().map(|e| e.to_string());
            let ok = match (want, &got) {
                (None, None) => l.objects.len() == 1,
                (Some(field), Some(msg)) => {
                    msg.starts_with("np.yaml: NetworkPolicy ")
                        && msg.contains(&format!(": {field}: "))
                }
                _ => false,
            };
            if !ok {
                failures.push(format!("{what}: want {want:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_policy_without_spec_isolates_every_pod_of_its_namespace_for_ingress() {
        let l = parse(
            "np.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\n",
        );
        match &l.objects[..] {
            [Object::Policy(p)] => {
                assert_eq!(p.pod_selector, crate::selector::Selector::everything());
                assert_eq!(p.ingress.as_deref(), Some(&[][..]));
                assert_eq!(p.egress, None);
            }
            other => panic!("want one policy, got {other:?} {:?}", l.errors),
        }
    }
}
