//! Table tests of admin policy conversion: every port form of both API
//! generations, and the field each invalid rule is reported at, for all
//! three kinds.

use super::convert::{admin_network_policy, baseline_admin_network_policy, cluster_network_policy};
use super::{AdminPeer, AdminPolicy, AdminPort, Subject};
use crate::error::ObjectError;
use crate::model::Protocol;
use serde_json::{json, Value};

fn cnp(spec: Value) -> Result<AdminPolicy, ObjectError> {
    let obj = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    });
    cluster_network_policy(&serde_json::from_value(obj).expect("test object"), None)
}

fn anp(spec: Value) -> Result<AdminPolicy, ObjectError> {
    let obj = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    });
    admin_network_policy(&serde_json::from_value(obj).expect("test object"), None)
}

fn banp(name: &str, spec: Value) -> Result<AdminPolicy, ObjectError> {
    let obj = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    });
    baseline_admin_network_policy(&serde_json::from_value(obj).expect("test object"), None)
}

const PODS: fn() -> Value = || json!({"namespaces": {}});

/// A ClusterNetworkPolicy with one ingress rule holding `protocols`.
fn cnp_ports(protocols: Value) -> Result<Vec<AdminPort>, ObjectError> {
    let p = cnp(json!({
        "tier": "Admin", "priority": 1, "subject": PODS(),
        "ingress": [{"name": "r", "action": "Accept", "from": [PODS()], "protocols": protocols}],
    }))?;
    Ok(p.ingress[0].ports.clone().unwrap_or_default())
}

/// An AdminNetworkPolicy with one ingress rule holding `ports`.
fn anp_ports(ports: Value) -> Result<Vec<AdminPort>, ObjectError> {
    let p = anp(json!({
        "priority": 1, "subject": PODS(),
        "ingress": [{"name": "r", "action": "Allow", "from": [PODS()], "ports": ports}],
    }))?;
    Ok(p.ingress[0].ports.clone().unwrap_or_default())
}

fn range(protocol: Protocol, lo: u16, hi: u16) -> AdminPort {
    AdminPort::Range { protocol, lo, hi }
}

/// The field an error names, or the converted value.
fn field<T>(r: Result<T, ObjectError>) -> Result<T, (String, String)> {
    r.map_err(|e| (e.field, e.message))
}

#[test]
fn port_forms_of_both_generations() {
    use Protocol::*;
    let named = || AdminPort::Named("http".into());
    let ok: Vec<(Value, Vec<AdminPort>)> = vec![
        (
            json!([{"tcp": {"destinationPort": {"number": 80}}}]),
            vec![range(Tcp, 80, 80)],
        ),
        (json!([{"udp": {}}]), vec![range(Udp, 1, u16::MAX)]),
        (
            json!([{"sctp": {"destinationPort": {"range": {"start": 5, "end": 9}}}}]),
            vec![range(Sctp, 5, 9)],
        ),
        (json!([{"destinationNamedPort": "http"}]), vec![named()]),
        (
            json!([{"tcp": {}}, {"destinationNamedPort": "http"}]),
            vec![range(Tcp, 1, u16::MAX), named()],
        ),
    ];
    for (protocols, want) in ok {
        assert_eq!(field(cnp_ports(protocols.clone())), Ok(want), "{protocols}");
    }
    let ok: Vec<(Value, Vec<AdminPort>)> = vec![
        (
            json!([{"portNumber": {"protocol": "UDP", "port": 53}}]),
            vec![range(Udp, 53, 53)],
        ),
        (
            json!([{"portNumber": {"protocol": "", "port": 80}}]),
            vec![range(Tcp, 80, 80)],
        ),
        (json!([{"namedPort": "http"}]), vec![named()]),
        (
            json!([{"portRange": {"protocol": "SCTP", "start": 1, "end": 2}}]),
            vec![range(Sctp, 1, 2)],
        ),
    ];
    for (ports, want) in ok {
        assert_eq!(field(anp_ports(ports.clone())), Ok(want), "{ports}");
    }
}

#[test]
fn invalid_ports_name_their_field() {
    let base = "spec.ingress[0]";
    let cnp_bad = [
        (json!([]), "protocols", "at least one entry"),
        (
            json!([{}]),
            "protocols[0]",
            "exactly one of tcp, udp, sctp or destinationNamedPort",
        ),
        (
            json!([{"tcp": {}, "udp": {}}]),
            "protocols[0]",
            "exactly one of tcp, udp, sctp or destinationNamedPort",
        ),
        (
            json!([{"tcp": {}, "destinationNamedPort": "http"}]),
            "protocols[0]",
            "exactly one of tcp, udp, sctp or destinationNamedPort",
        ),
        (
            json!([{"udp": {}}, {"tcp": {"destinationPort": {"number": 0}}}]),
            "protocols[1].tcp.destinationPort.number",
            "not a port number",
        ),
        (
            json!([{"sctp": {"destinationPort": {}}}]),
            "protocols[0].sctp.destinationPort",
            "exactly one of number or range",
        ),
        (
            json!([{"udp": {"destinationPort": {"range": {"start": 9, "end": 5}}}}]),
            "protocols[0].udp.destinationPort.range.end",
            "less than start",
        ),
        (
            json!([{"destinationNamedPort": "Not_A_Name"}]),
            "protocols[0].destinationNamedPort",
            "invalid port name",
        ),
    ];
    for (protocols, f, message) in cnp_bad {
        let (got_field, got) =
            field(cnp_ports(protocols.clone())).expect_err(&protocols.to_string());
        assert_eq!(got_field, format!("{base}.{f}"), "{protocols}");
        assert!(got.contains(message), "{protocols}: {got}");
    }
    let anp_bad = [
        (json!([]), "ports", "at least one entry"),
        (
            json!([{}]),
            "ports[0]",
            "exactly one of portNumber, namedPort or portRange",
        ),
        (
            json!([{"namedPort": "a", "portNumber": {"protocol": "TCP", "port": 1}}]),
            "ports[0]",
            "exactly one of portNumber, namedPort or portRange",
        ),
        (
            json!([{"portNumber": {"protocol": "ICMP", "port": 1}}]),
            "ports[0].portNumber.protocol",
            "unsupported protocol",
        ),
        (
            json!([{"portNumber": {"protocol": "TCP", "port": 70000}}]),
            "ports[0].portNumber.port",
            "not a port number",
        ),
        (
            json!([{"namedPort": "a"}, {"portRange": {"protocol": "GRE", "start": 1, "end": 2}}]),
            "ports[1].portRange.protocol",
            "unsupported protocol",
        ),
        (
            json!([{"portRange": {"protocol": "TCP", "start": 0, "end": 2}}]),
            "ports[0].portRange.start",
            "not a port number",
        ),
    ];
    for (ports, f, message) in anp_bad {
        let (got_field, got) = field(anp_ports(ports.clone())).expect_err(&ports.to_string());
        assert_eq!(got_field, format!("{base}.{f}"), "{ports}");
        assert!(got.contains(message), "{ports}: {got}");
    }
}

/// Egress peers of each kind, and the checks only egress rules get.
#[test]
fn egress_peers_of_every_kind() {
    let nets = json!({"networks": ["10.0.0.0/8"]});
    let nodes = json!({"nodes": {"matchLabels": {"a": "b"}}});
    let cnp_rule = |to: Value, protocols: Value| {
        cnp(
            json!({"tier": "Baseline", "priority": 0, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {}}},
            "egress": [{"name": "e", "action": "Deny", "to": to, "protocols": protocols}]}),
        )
    };
    let anp_rule = |to: Value, ports: Value| {
        anp(json!({"priority": 1000, "subject": PODS(),
            "egress": [{"name": "e", "action": "Pass", "to": to, "ports": ports}]}))
    };
    let banp_rule = |to: Value, ports: Value| {
        banp(
            "default",
            json!({"subject": PODS(),
            "egress": [{"name": "e", "action": "Allow", "to": to, "ports": ports}]}),
        )
    };
    let named_cnp = json!([{"destinationNamedPort": "http"}]);
    let named_v1 = json!([{"namedPort": "http"}]);
    for (kind, r) in [
        (
            "cnp",
            cnp_rule(json!([nets.clone(), nodes.clone()]), Value::Null),
        ),
        (
            "anp",
            anp_rule(json!([nets.clone(), nodes.clone()]), Value::Null),
        ),
        (
            "banp",
            banp_rule(json!([nets.clone(), nodes.clone()]), Value::Null),
        ),
    ] {
        let p = r.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(
            matches!(&p.egress[0].peers[..], [AdminPeer::Networks(n), AdminPeer::Nodes(_)] if n.len() == 1),
            "{kind}: {:?}",
            p.egress[0].peers
        );
        assert_eq!(p.egress[0].ports, None, "{kind}");
    }
    for (kind, r) in [
        ("cnp", cnp_rule(json!([nets.clone()]), named_cnp.clone())),
        ("anp", anp_rule(json!([nodes.clone()]), named_v1.clone())),
        ("banp", banp_rule(json!([nets.clone()]), named_v1.clone())),
    ] {
        let (f, m) = field(r).expect_err(kind);
        assert_eq!(f, "spec.egress[0]", "{kind}");
        assert!(m.contains("cannot be set with named ports"), "{kind}: {m}");
    }
    // Named ports with pod peers are fine, in ingress as in egress.
    let p = anp_rule(json!([PODS()]), named_v1.clone()).expect("pods and named ports");
    assert_eq!(
        p.egress[0].ports,
        Some(vec![AdminPort::Named("http".into())])
    );
    for (kind, r) in [
        (
            "cnp",
            cnp_rule(json!([{"domainNames": ["example.com"]}]), Value::Null),
        ),
        (
            "anp",
            anp_rule(json!([{"domainNames": ["example.com"]}]), Value::Null),
        ),
    ] {
        let (f, m) = field(r).expect_err(kind);
        assert_eq!(f, "spec.egress[0].to[0].domainNames", "{kind}");
        assert!(m.contains("not supported"), "{kind}: {m}");
    }
    let (f, _) = field(banp_rule(json!([]), Value::Null)).expect_err("no peers");
    assert_eq!(f, "spec.egress[0].to");
    let (f, _) = field(anp_rule(
        json!([{"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}]),
        Value::Null,
    ))
    .expect_err("two peer kinds");
    assert_eq!(f, "spec.egress[0].to[0]");
}

#[test]
fn subjects_actions_and_names() {
    let pods =
        json!({"pods": {"namespaceSelector": {"matchLabels": {"a": "b"}}, "podSelector": {}}});
    let p = anp(json!({"priority": 3, "subject": pods,
        "ingress": [{"name": "i", "action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}]}))
    .expect("valid ANP");
    assert!(matches!(p.subject, Subject::Pods { .. }), "{:?}", p.subject);
    assert_eq!(p.priority, Some(3));
    assert_eq!(p.ingress[0].action, super::Action::Deny);
    assert!(matches!(&p.ingress[0].peers[..], [AdminPeer::Pods { .. }]));
    let both = json!({"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}});
    for (kind, r) in [
        (
            "cnp",
            cnp(json!({"tier": "Admin", "priority": 1, "subject": both.clone()})),
        ),
        ("anp", anp(json!({"priority": 1, "subject": both.clone()}))),
        ("banp", banp("default", json!({"subject": both.clone()}))),
    ] {
        let (f, _) = field(r).expect_err(kind);
        assert_eq!(f, "spec.subject", "{kind}");
    }
    let (f, _) = field(banp("other", json!({"subject": PODS()}))).expect_err("BANP name");
    assert_eq!(f, "metadata.name");
    let p = banp(
        "default",
        json!({"subject": PODS(),
        "ingress": [{"name": "i", "action": "Allow", "from": [PODS()]}]}),
    )
    .expect("valid BANP");
    assert_eq!(
        (p.priority, p.ingress[0].action),
        (None, super::Action::Accept)
    );
    let p = cnp(json!({"tier": "Baseline", "priority": 2, "subject": PODS(),
        "ingress": [{"name": "i", "action": "Pass", "from": [PODS()]}]}))
    .expect("valid CNP");
    assert_eq!(p.ingress[0].action, super::Action::Pass);
}
