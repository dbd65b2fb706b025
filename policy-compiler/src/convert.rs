//! Kubernetes API objects (k8s-openapi types) -> the validated model. This
//! is where every user mistake is caught, once, with the field path that
//! holds it; the compiler and evaluator then work on values that cannot be
//! malformed. Validation follows the apiserver's own rules for
//! networking.k8s.io/v1 where they matter for enforcement.

use crate::error::ObjectError;
use crate::ipblock::{cidr_minus, AddrRange};
use crate::model::*;
use crate::selector::{Operator, Requirement, Selector};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
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
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespaced: bool,
) -> Result<(String, String), ObjectError> {
    let name = meta.name.clone().unwrap_or_default();
    let namespace = if namespaced {
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string())
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
    let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default();
    // The apiserver always sets this label; offline input may lack it.
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    Ok(Namespace { name, labels })
}

pub fn pod(p: &core::Pod, source: Option<&str>) -> Result<Pod, ObjectError> {
    let (namespace, name) = object_name("Pod", source, &p.metadata, true)?;
    let ctx = Ctx {
        source,
        kind: "Pod",
        object: format!("{namespace}/{name}"),
    };
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
        for (i, ip) in list.iter().enumerate() {
            let a = ip.ip.parse::<IpAddr>().map_err(|_| {
                ctx.err(
                    format!("status.podIPs[{i}].ip"),
                    format!("invalid IP {:?}", ip.ip),
                )
            })?;
            ips.insert(a);
        }
    }
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_ref())
        .filter(|s| !s.is_empty())
    {
        let a = ip
            .parse::<IpAddr>()
            .map_err(|_| ctx.err("status.podIP", format!("invalid IP {ip:?}")))?;
        ips.insert(a);
    }
    let mut named_ports = BTreeSet::new();
    // Ports of native sidecars (init containers with `restartPolicy:
    // Always`) count as the pod's ports, as upstream implementations
    // count them: the sidecar serves for the pod's whole life. Plain init
    // containers have exited before the pod serves.
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
                .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
                .map(|(i, c)| ("initContainers", i, c)),
        );
    for (list, ci, c) in serving {
        for (pi, port) in c.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
            let Some(pname) = port.name.as_ref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let field = format!("spec.{list}[{ci}].ports[{pi}]");
            let protocol = match port.protocol.as_deref() {
                None | Some("") => Protocol::Tcp,
                Some(s) => Protocol::parse(s).ok_or_else(|| {
                    ctx.err(
                        format!("{field}.protocol"),
                        format!("unsupported protocol {s:?}"),
                    )
                })?,
            };
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    ctx.err(
                        format!("{field}.containerPort"),
                        format!("{} is not a port number (1-65535)", port.container_port),
                    )
                })?;
            named_ports.insert(NamedPort {
                name: pname.clone(),
                protocol,
                port: number,
            });
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    Ok(Pod {
        namespace,
        name,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips: ips.into_iter().collect(),
        named_ports: named_ports.into_iter().collect(),
        terminal: matches!(phase, Some("Succeeded") | Some("Failed")),
    })
}

pub fn policy(np: &net::NetworkPolicy, source: Option<&str>) -> Result<Policy, ObjectError> {
    let (namespace, name) = object_name("NetworkPolicy", source, &np.metadata, true)?;
    let ctx = Ctx {
        source,
        kind: "NetworkPolicy",
        object: format!("{namespace}/{name}"),
    };
    let Some(spec) = np.spec.as_ref() else {
        return Err(ctx.err("spec", "missing"));
    };
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

    let mut ingress = Vec::with_capacity(ingress_rules.len());
    for (i, r) in ingress_rules.iter().enumerate() {
        let base = format!("spec.ingress[{i}]");
        ingress.push(rule(
            &ctx,
            &base,
            "from",
            r.from.as_deref(),
            r.ports.as_deref(),
        )?);
    }
    let mut egress = Vec::with_capacity(egress_rules.len());
    for (i, r) in egress_rules.iter().enumerate() {
        let base = format!("spec.egress[{i}]");
        egress.push(rule(
            &ctx,
            &base,
            "to",
            r.to.as_deref(),
            r.ports.as_deref(),
        )?);
    }
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
    })
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
        (None, ps, ns) => Ok(Peer::Pods {
            pod_selector: ps
                .as_ref()
                .map(|s| selector(ctx, &format!("{field}.podSelector"), s))
                .transpose()?,
            namespace_selector: ns
                .as_ref()
                .map(|s| selector(ctx, &format!("{field}.namespaceSelector"), s))
                .transpose()?,
        }),
    }
}

pub(crate) fn parse_cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, ObjectError> {
    // A bare address is not a CIDR for the apiserver either.
    let net: IpNet = s
        .parse()
        .map_err(|_| ctx.err(field, format!("invalid CIDR {s:?}")))?;
    Ok(net)
}

fn ip_block(ctx: &Ctx, field: &str, b: &net::IPBlock) -> Result<Peer, ObjectError> {
    let cidr = parse_cidr(ctx, &format!("{field}.cidr"), &b.cidr)?;
    let mut except = Vec::new();
    for (i, e) in b.except.as_deref().unwrap_or(&[]).iter().enumerate() {
        let ef = format!("{field}.except[{i}]");
        let en = parse_cidr(ctx, &ef, e)?;
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
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).ok_or_else(|| {
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
            if !valid_port_name(s) {
                return Err(ctx.err(
                    format!("{field}.port"),
                    format!("{s:?} is not a valid port name (1-15 lowercase letters, digits and '-', with a letter; a port number is written without quotes)"),
                ));
            }
            PortRef::Named(s.clone())
        }
    };
    Ok(PortSpec { protocol, port })
}

/// IANA service name, as the apiserver validates named ports.
pub(crate) fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub(crate) fn selector(ctx: &Ctx, field: &str, s: &LabelSelector) -> Result<Selector, ObjectError> {
    let match_labels = s
        .match_labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut match_expressions = Vec::new();
    for (i, e) in s
        .match_expressions
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let ef = format!("{field}.matchExpressions[{i}]");
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
}
