//! The expected side of every comparison: the compiler crate's semantic
//! evaluator (`policy_compiler::eval`), fed the very manifests the nodes
//! were programmed from. It works from the model, independent of the IR
//! and of the kernel, so a bug in the compiled ruleset or in the applier
//! shows up as a difference.

use crate::cluster::PodModel;
use crate::probe::Proto;
use policy_compiler::ir::Family;
use policy_compiler::model::Protocol;
use policy_compiler::{Cluster, Endpoint, Loaded};

pub struct Model {
    cluster: Cluster,
}

impl Model {
    /// Loads (file name, YAML text) pairs as nftpol reads them. The
    /// harness writes only valid objects, so any load error is a harness
    /// bug and fails the test.
    pub fn load(manifests: &[(String, String)]) -> Model {
        let mut loaded = Loaded::default();
        for (name, text) in manifests {
            loaded.extend(policy_compiler::parse(name, text));
        }
        assert!(
            loaded.errors.is_empty(),
            "the harness wrote manifests the compiler rejects: {:?}",
            loaded.errors
        );
        Model {
            cluster: Cluster::from_objects(loaded.objects),
        }
    }

    /// The evaluator's verdict for a connection from a non-pod address.
    pub fn allowed_from_ip(
        &self,
        src: std::net::IpAddr,
        dst: &PodModel,
        proto: Proto,
        port: u16,
    ) -> bool {
        let family = Family::of(&src);
        policy_compiler::allowed(
            &self.cluster,
            &Endpoint::Ip(src),
            &Endpoint::pod(&dst.namespace, &dst.name),
            family,
            protocol(proto),
            port,
        )
        .unwrap_or_else(|e| panic!("evaluator error for {src} -> {dst:?}: {e}"))
        .allowed
    }

    /// The evaluator's verdict for a connection from a pod to a non-pod
    /// address (a node, here).
    pub fn allowed_to_ip(
        &self,
        src: &PodModel,
        dst: std::net::IpAddr,
        proto: Proto,
        port: u16,
    ) -> bool {
        policy_compiler::allowed(
            &self.cluster,
            &Endpoint::pod(&src.namespace, &src.name),
            &Endpoint::Ip(dst),
            Family::of(&dst),
            protocol(proto),
            port,
        )
        .unwrap_or_else(|e| panic!("evaluator error for {src:?} -> {dst}: {e}"))
        .allowed
    }

    /// The evaluator's verdict for an SCTP association between two pods.
    pub fn allowed_sctp(&self, src: &PodModel, dst: &PodModel, v6: bool, port: u16) -> bool {
        policy_compiler::allowed(
            &self.cluster,
            &Endpoint::pod(&src.namespace, &src.name),
            &Endpoint::pod(&dst.namespace, &dst.name),
            if v6 { Family::Ipv6 } else { Family::Ipv4 },
            Protocol::Sctp,
            port,
        )
        .unwrap_or_else(|e| panic!("evaluator error for {src:?} -> {dst:?}: {e}"))
        .allowed
    }

    /// The evaluator's decision, both sides, for a new connection from a
    /// pod to a pod or an address, on any protocol.
    pub fn decide(
        &self,
        src: &PodModel,
        dst: &Endpoint,
        v6: bool,
        protocol: Protocol,
        port: u16,
    ) -> policy_compiler::Decision {
        let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
        policy_compiler::allowed(
            &self.cluster,
            &Endpoint::pod(&src.namespace, &src.name),
            dst,
            family,
            protocol,
            port,
        )
        .unwrap_or_else(|e| panic!("evaluator error for {src:?} -> {dst}: {e}"))
    }

    /// The evaluator's verdict for a new connection between two pods.
    pub fn allowed(
        &self,
        src: &PodModel,
        dst: &PodModel,
        v6: bool,
        proto: Proto,
        port: u16,
    ) -> bool {
        let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
        policy_compiler::allowed(
            &self.cluster,
            &Endpoint::pod(&src.namespace, &src.name),
            &Endpoint::pod(&dst.namespace, &dst.name),
            family,
            protocol(proto),
            port,
        )
        .unwrap_or_else(|e| panic!("evaluator error for {src:?} -> {dst:?}: {e}"))
        .allowed
    }
}

pub fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    }
}
