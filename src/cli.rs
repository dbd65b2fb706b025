//! The command line: argument definitions (clap) and the offline commands
//! `compile`, `explain` and `matrix`. Each command writes to a given
//! writer and returns its exit status, so tests drive them directly.

use crate::error::Error;
use crate::report;
use clap::{Args, Parser, Subcommand, ValueEnum};
use policy_compiler::eval::{self, Endpoint, SideVerdict};
use policy_compiler::flowaudit::{Auditor, FlowAudit};
use policy_compiler::ir::Family;
use policy_compiler::matrix::{self as pmatrix, Probe};
use policy_compiler::model::Protocol;
use policy_compiler::{render, Cluster, Loaded, NodeNet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

/// Exit status when some objects were invalid and skipped.
pub const EXIT_SKIPPED: i32 = 2;
/// Exit status of `explain --live` when the kernel's table does not decide
/// as the compiler intends.
pub const EXIT_MISMATCH: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "nftpol",
    version,
    about = "Kubernetes NetworkPolicy enforcer on nftables",
    long_about = "nftpol compiles the NetworkPolicies that select each pod of a node into that \
pod's own nftables ingress and egress chains (table `inet nftpol`) and applies the \
difference to the kernel as one atomic netlink batch.\n\n\
Offline, for auditors: `compile` prints the exact ruleset a node enforces, `explain` says \
why one flow is allowed or denied, `matrix` prints pod-to-pod reachability. They read \
manifests (multi-document YAML, or `kubectl get ns,pods,networkpolicies -A -o yaml`) and \
need no root and no cluster.",
    after_help = "Examples:\n  \
nftpol compile --manifests examples/policies/01-web-allow.yaml\n  \
kubectl get ns,pods,networkpolicies -A -o yaml > dump.yaml\n  \
nftpol compile --manifests dump.yaml --node-name worker-1 > worker-1.nft\n  \
nftpol explain --manifests dump.yaml --from prod/web-0 --to prod/db-0 --port 5432/TCP\n  \
nftpol matrix --manifests dump.yaml --port 80/TCP --port 53/UDP"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ruleset a node enforces (a script `nft -f` loads as it is).
    ///
    /// The script replaces the whole `inet nftpol` table in one transaction
    /// and can be loaded any number of times. Exit status 2 means some
    /// objects were invalid and skipped (each is reported on stderr with
    /// file, object and field); everything else was compiled.
    Compile(CompileArgs),
    /// Explain why one connection is allowed or denied, naming the policies
    /// and rules that decide it.
    ///
    /// With --live (root, on a node): also read the kernel's `inet nftpol`
    /// table back and run the connection through what the kernel really
    /// holds, naming the deciding rule and its comment, and compare with
    /// the ruleset the compiler intends for the node. A different verdict
    /// or deciding rule is a MISMATCH (exit status 3).
    Explain(ExplainArgs),
    /// Print the pod-to-pod reachability matrix (rows: from, columns: to;
    /// `.` allowed, `X` denied).
    Matrix(MatrixArgs),
    /// Show what applying these manifests would change: the chains, rules
    /// and set elements of the node's `inet nftpol` table, and the
    /// pod-to-pod flows whose verdict changes.
    ///
    /// By default the table is compared with the kernel's (read back over
    /// netlink as `apply` does; needs CAP_NET_ADMIN, changes nothing).
    /// With --against-manifests the comparison is between two manifest
    /// sets, offline and without root, for change review.
    Diff(DiffArgs),
    /// Compile the node's ruleset and make the kernel's `inet nftpol` table
    /// equal it: read the table back, diff, and send only the difference
    /// as one atomic netlink batch (nothing when already equal). Prints a
    /// one-line summary. Needs CAP_NET_ADMIN. Exit status 2 as for compile.
    Apply(ApplyArgs),
    /// Packets counted per policy and direction in the kernel's `inet
    /// nftpol` table, and the policies that counted none (clean-up
    /// candidates). Needs CAP_NET_ADMIN; reads only.
    ///
    /// MATCHED counts the packets a policy's rules decided on this node;
    /// ISOLATION-DROPS the new connections dropped because the policy
    /// isolates a pod and nothing allowed them. Counts start when a rule is
    /// written: a pod chain is rewritten when the policies selecting its
    /// pod change. The agent keeps totals across rewrites (its metrics
    /// and the NodeNetworkPolicyStatus object).
    Hits(HitsArgs),
    /// Remove the `inet nftpol` table (and nothing else). Needs
    /// CAP_NET_ADMIN.
    Cleanup,
    /// Run the per-node agent: watch the cluster (or a manifest directory
    /// with --manifests) and keep the kernel's `inet nftpol` table equal to
    /// the compiled ruleset; serves /metrics, /healthz, /readyz.
    Agent(crate::agent::AgentArgs),
    /// Print the CustomResourceDefinitions nftpol reads (ClusterNetworkPolicy
    /// v1alpha2, AdminNetworkPolicy and BaselineAdminNetworkPolicy
    /// v1alpha1) and writes (NodeNetworkPolicyStatus, nftpol.io/v1alpha1,
    /// one per node) as one YAML stream: `nftpol crds | kubectl apply -f -`.
    Crds,
}

#[derive(Args, Debug, Clone)]
pub struct Input {
    /// Manifest files or directories (read recursively: *.yaml, *.yml,
    /// *.json). Multi-document YAML and `kind: List` are understood.
    #[arg(long = "manifests", short = 'm', required = true, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Fail on the first invalid object instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub input: Input,
    /// The node to compile for. Optional when every pod sits on one node.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// `nft` prints the script for `nft -f`; `json` prints the ruleset IR.
    #[arg(long, value_enum, default_value_t = Format::Nft)]
    pub format: Format,
    /// Print only the ruleset's hash: what the node's
    /// NodeNetworkPolicyStatus shows as `rulesetHash` while its kernel
    /// holds this ruleset (give the agent's --log and --pod-interfaces
    /// flags to compare with what it programs).
    #[arg(long, conflicts_with = "format")]
    pub hash: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug)]
pub struct HitsArgs {
    /// Only the policy directions that counted no packet.
    #[arg(long)]
    pub zero: bool,
    /// `json` prints an array of {policy, direction, matched,
    /// isolation_drops, rules}.
    #[arg(long, value_enum, default_value_t = HitsFormat::Text)]
    pub format: HitsFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HitsFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub input: Input,
    /// The node to compile for. Optional when every pod sits on one node.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Node-wide verdict logging, on top of each policy's own
/// `nftpol.io/log` annotation (a policy logs the more of the two).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Verdict logging")]
pub struct LogArgs {
    /// Log verdicts for every policy on the node: `deny` logs the default
    /// drop of every isolated pod (nflog prefix `<ns>/<pod>
    /// default-deny`) and admin Deny rules; `all` also logs every packet a
    /// policy rule admits (prefix `<ns>/<policy> <direction>[<i>] allow`).
    /// Policies annotated `nftpol.io/log: deny|all` log regardless, and
    /// staged policies (`nftpol.io/enforcement: audit`) always log what
    /// they would deny. Logging never changes a verdict: each log is a
    /// rule of its own, without one. The agent prints one line per logged
    /// packet; elsewhere read the group with ulogd or `tcpdump -i nflog:N`.
    #[arg(long = "log", value_enum, default_value_t = LogArg::None, value_name = "MODE")]
    pub log: LogArg,
    /// The nflog group the log rules send to (the agent reads it).
    #[arg(long, value_name = "N", default_value_t = policy_compiler::audit::DEFAULT_GROUP)]
    pub log_group: u16,
    /// Packets per second each log rule may log, enforced in the kernel
    /// (`limit rate R/second burst 5 packets`): a flood of denied packets
    /// costs at most this many log messages per rule, and is still
    /// dropped in full.
    #[arg(long, value_name = "R", default_value_t = policy_compiler::audit::DEFAULT_RATE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub log_rate: u32,
}

/// `--log`: what every policy logs at least.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogArg {
    /// Only what policies' own annotations ask for.
    #[value(alias = "off")]
    None,
    /// Denied packets.
    Deny,
    /// Denied and allowed packets.
    All,
}

impl LogArgs {
    /// The compiler's options for these flags.
    pub fn audit(&self) -> policy_compiler::audit::AuditOptions {
        use policy_compiler::model::LogMode;
        policy_compiler::audit::AuditOptions {
            log: match self.log {
                LogArg::None => LogMode::Off,
                LogArg::Deny => LogMode::Deny,
                LogArg::All => LogMode::All,
            },
            group: self.log_group,
            rate: self.log_rate,
            ..Default::default()
        }
    }
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            log: LogArg::None,
            log_group: policy_compiler::audit::DEFAULT_GROUP,
            log_rate: policy_compiler::audit::DEFAULT_RATE,
        }
    }
}

/// Source validation: which interface each local pod sends through.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// A YAML or JSON map `NAMESPACE/POD: INTERFACE` naming each local
    /// pod's host-side interface (veth end or bridge port). `apply` and
    /// the agent learn it from the node's routes, ARP table and bridge
    /// FDBs when this is not given; an offline `compile` without it
    /// compiles no source validation.
    #[arg(long, value_name = "FILE")]
    pub pod_interfaces: Option<PathBuf>,
    /// Turn source validation off (asymmetric-routing networks only: a pod
    /// with CAP_NET_RAW can then forge another pod's address past ingress
    /// allow-lists and skip its own egress policy).
    #[arg(long)]
    pub no_source_validation: bool,
    /// Let pods send tunnel packets (IPIP, IPv6 in IP, GRE, UDP to ports
    /// 4789, 6081, 8472), for pods that run their own overlays; NetworkPolicy
    /// then judges them like any other traffic. By default source
    /// validation drops them at the pod's interface, because a node's own
    /// overlay device would decapsulate such a packet and take the source
    /// written inside unchecked (see SECURITY.md).
    #[arg(long)]
    pub allow_pod_tunnels: bool,
}

/// The node's interface map: the given file, else (`discover`) the
/// kernel's view, else none.
pub fn node_net(
    args: &SourceArgs,
    cluster: &Cluster,
    node: &str,
    discover: bool,
) -> Result<NodeNet, Error> {
    let validation = !args.no_source_validation;
    let mut net = match &args.pod_interfaces {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            let pod_interfaces = policy_compiler::srcval::parse_interface_map(&text)
                .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
            NodeNet {
                pod_interfaces,
                source_validation: validation,
                ..NodeNet::default()
            }
        }
        None if discover => {
            // What an earlier apply learned stays bound (a later ARP claim
            // does not move it): the devices of the kernel's `src_` chains.
            let previous = match crate::netlink::read_table() {
                Ok(Some(rs)) => policy_compiler::srcval::bindings_in(&rs, cluster, node),
                _ => Default::default(),
            };
            let mut prober = crate::ifmap::Prober::default();
            crate::ifmap::discover(cluster, node, validation, &previous, &mut prober).map_err(
                |e| Error::Io {
                    // What failed is an rtnetlink dump of the node's
                    // links, routes, neighbours or bridge tables.
                    path: "rtnetlink (the node's links, routes and bridge tables)".into(),
                    source: e,
                },
            )?
        }
        None => NodeNet {
            source_validation: validation,
            ..NodeNet::default()
        },
    };
    if discover || args.pod_interfaces.is_some() {
        // One line, not one per pod: on a node whose interfaces cannot be
        // learned, a thousand lines cost `apply` more than its compile.
        let unmapped = net.unmapped(cluster, node);
        if !unmapped.is_empty() {
            const SHOWN: usize = 5;
            let mut names: Vec<String> = unmapped
                .iter()
                .take(SHOWN)
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            if unmapped.len() > SHOWN {
                names.push(format!("and {} more", unmapped.len() - SHOWN));
            }
            tracing::warn!(
                count = unmapped.len(),
                pods = %names.join(", "),
                "no host interface known for these local pods: their source addresses are not validated"
            );
        }
    }
    for (ip, pods) in cluster.shared_addresses() {
        let names: Vec<String> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        tracing::warn!(address = %ip, pods = %names.join(", "), "address claimed by several live pods: flows to and from it fail closed");
    }
    net.pod_tunnels = args.allow_pod_tunnels;
    Ok(net)
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub input: Input,
    /// The node to compile for. Optional when every pod sits on one node.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Compare with these manifests (the state before the change) instead
    /// of the kernel's table.
    #[arg(long, num_args = 1..)]
    pub against_manifests: Vec<PathBuf>,
    /// Port/protocol whose flows to compare; repeat for several (default
    /// 80/TCP).
    #[arg(long)]
    pub port: Vec<String>,
    /// Address family of the flows (default: IPv4, or IPv6 when no pod has
    /// IPv4).
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    /// Against the kernel, the pod interfaces are learned as `apply` does
    /// (or given here), so source validation chains compare equal.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Give the agent's --log flags too, so its log rules compare equal.
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Nft,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Family {
        match f {
            FamilyArg::Ipv4 => Family::Ipv4,
            FamilyArg::Ipv6 => Family::Ipv6,
        }
    }
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub input: Input,
    /// Source: NAMESPACE/POD, an IP, or a CIDR (its first address).
    #[arg(long)]
    pub from: String,
    /// Destination: NAMESPACE/POD, an IP, or a CIDR (its first address).
    #[arg(long)]
    pub to: String,
    /// Destination port and protocol, e.g. `80/TCP`, `53/udp`; the
    /// protocol defaults to TCP.
    #[arg(long)]
    pub port: String,
    /// Address family; by default the first both ends have (IPv4 first).
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    #[arg(long, value_enum, default_value_t = Format::Nft, hide_possible_values = true)]
    /// `json` prints the decision as JSON; anything else prints text.
    pub format: Format,
    /// Also run the connection through the kernel's table on this node
    /// (read back over netlink; needs CAP_NET_ADMIN) and compare with the
    /// compiled ruleset; exit status 3 when they differ.
    #[arg(long)]
    pub live: bool,
    /// With --live: the node whose intended ruleset the kernel is compared
    /// with. Optional when every pod sits on one node.
    #[arg(long, env = "NODE_NAME", requires = "live")]
    pub node_name: Option<String>,
    /// The node-wide logging the flow's log rules are compiled with (with
    /// --live: give the agent's, so its log rules compare equal).
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub input: Input,
    /// Port/protocol to probe; repeat for several (default 80/TCP).
    #[arg(long)]
    pub port: Vec<String>,
    /// Address family (default: IPv4, or IPv6 when no pod has IPv4).
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    /// Only pods in these namespaces (default: all).
    #[arg(long)]
    pub namespace: Vec<String>,
    /// Output format. `text`: a grid (`.` allowed, `X` denied) and the
    /// per-namespace summary; `csv`: one row per flow with the deciding
    /// rules; `markdown`: tables for a review; `svg`: a heat map to open in
    /// a browser (hover a cell for the decision).
    #[arg(long, value_enum, default_value_t = MatrixFormat::Text)]
    pub format: MatrixFormat,
    /// Only the per-namespace summary (allowed/total flows between each
    /// pair of namespaces); with csv, one row per namespace pair.
    #[arg(long)]
    pub summary: bool,
    /// The node-wide logging each flow's log rules are compiled with.
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Text,
    Csv,
    Markdown,
    Svg,
}

/// Loads the manifests into a cluster, reporting invalid objects on stderr.
/// Returns the cluster and how many objects were skipped.
pub fn load_cluster(input: &Input) -> Result<(Cluster, usize), Error> {
    let Loaded {
        objects,
        errors,
        ignored,
    } = crate::manifests::load(&input.manifests)?;
    if input.strict {
        if let Some(first) = errors.into_iter().next() {
            return Err(first.into());
        }
        return Ok((Cluster::from_objects(objects), 0));
    }
    for e in &errors {
        eprintln!("error: {e} (object skipped)");
    }
    if ignored > 0 {
        tracing::debug!(ignored, "objects of other kinds ignored");
    }
    Ok((Cluster::from_objects(objects), errors.len()))
}

fn exit_status(skipped: usize) -> i32 {
    if skipped > 0 {
        EXIT_SKIPPED
    } else {
        0
    }
}

/// Picks the node: the given one, or the only node any pod is on.
pub fn resolve_node(cluster: &Cluster, node: Option<&str>) -> Result<String, Error> {
    if let Some(n) = node {
        return Ok(n.to_string());
    }
    let nodes = cluster.nodes();
    match nodes.len() {
        1 => Ok(nodes.into_iter().next().unwrap_or_default()),
        0 => Err(Error::Usage(
            "no pod in the input has spec.nodeName: pass --node-name".into(),
        )),
        _ => Err(Error::Usage(format!(
            "pods sit on {} nodes ({}): pass --node-name",
            nodes.len(),
            nodes.into_iter().collect::<Vec<_>>().join(", ")
        ))),
    }
}

pub fn compile(args: &CompileArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let (cluster, skipped) = load_cluster(&args.input)?;
    let node = resolve_node(&cluster, args.node_name.as_deref())?;
    let net = node_net(&args.source, &cluster, &node, false)?;
    let rs = policy_compiler::compile_node_with(&cluster, &node, &net, &args.log.audit());
    let text = match args.format {
        _ if args.hash => format!("{}\n", crate::agent::status::ruleset_hash(&rs)),
        Format::Nft => render::render_script(&rs),
        Format::Json => pretty_json(&rs)?,
    };
    write_out(out, &text)?;
    Ok(exit_status(skipped))
}

/// `nftpol apply`: compile, then one netlink reconcile.
pub fn apply(args: &ApplyArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let (cluster, skipped) = load_cluster(&args.input)?;
    let node = resolve_node(&cluster, args.node_name.as_deref())?;
    let net = node_net(&args.source, &cluster, &node, true)?;
    let rs = policy_compiler::compile_node_with(&cluster, &node, &net, &args.log.audit());
    let report = crate::netlink::apply(&rs)?;
    write_out(out, &format!("{}\n", report.summary))?;
    Ok(exit_status(skipped))
}

/// `nftpol hits`: the kernel's counters per policy.
pub fn hits(args: &HitsArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let counters = crate::netlink::read_counters()?;
    let text = match args.format {
        HitsFormat::Text => report::hits::text(&counters, args.zero),
        HitsFormat::Json => pretty_json(&report::hits::json(&counters, args.zero))?,
    };
    write_out(out, &text)?;
    Ok(0)
}

/// `nftpol cleanup`: delete the table if it exists.
pub fn cleanup(out: &mut dyn Write) -> Result<i32, Error> {
    let removed = crate::netlink::cleanup()?;
    let text = if removed {
        "removed table inet nftpol\n"
    } else {
        "table inet nftpol not present\n"
    };
    write_out(out, text)?;
    Ok(0)
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes()).map_err(|e| Error::Io {
        path: PathBuf::from("<stdout>"),
        source: e,
    })
}

/// `80`, `80/TCP`, `53/udp`.
pub fn parse_port(s: &str) -> Result<(u16, Protocol), Error> {
    let (num, proto) = match s.split_once('/') {
        Some((n, p)) => (n, Protocol::parse(p)),
        None => (s, Some(Protocol::Tcp)),
    };
    let proto = proto
        .ok_or_else(|| Error::Usage(format!("--port {s:?}: protocol must be TCP, UDP or SCTP")))?;
    let port =
        num.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            Error::Usage(format!("--port {s:?}: {num:?} is not a port (1-65535)"))
        })?;
    Ok((port, proto))
}

/// `ns/pod`, an IP, or a CIDR (its first address).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, Error> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Endpoint::Ip(ip));
    }
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(Endpoint::Ip(net.network()));
    }
    match s.split_once('/') {
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok(Endpoint::pod(ns, pod))
        }
        _ => Err(Error::Usage(format!(
            "{s:?} is neither NAMESPACE/POD nor an IP or CIDR"
        ))),
    }
}

/// `explain --format json`: the enforced decision's fields, then
/// `staged` (when a policy is staged) and `logged`.
#[derive(serde::Serialize)]
struct Explained<'a> {
    #[serde(flatten)]
    decision: &'a eval::Decision,
    #[serde(flatten)]
    audit: &'a FlowAudit,
}

fn describe_side(side: &SideVerdict, what: &str) -> String {
    format!("{what}: {}", report::describe_side(side))
}

pub fn explain(args: &ExplainArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let (cluster, skipped) = load_cluster(&args.input)?;
    let src = parse_endpoint(&args.from)?;
    let dst = parse_endpoint(&args.to)?;
    let (port, proto) = parse_port(&args.port)?;
    let family = match args.family {
        Some(f) => f.into(),
        None => eval::common_family(&cluster, &src, &dst)?,
    };
    let d = eval::allowed(&cluster, &src, &dst, family, proto, port)?;
    let opts = args.log.audit();
    let mut auditor = Auditor::new(&cluster, &opts);
    let audit = auditor.flow((&src, &dst), &d, proto, port)?;
    if args.live {
        return explain_live(
            args,
            &cluster,
            (&src, &dst),
            (&d, &audit),
            (proto, port),
            out,
            skipped,
        );
    }
    let text = if args.format == Format::Json {
        pretty_json(&Explained {
            decision: &d,
            audit: &audit,
        })?
    } else {
        format!(
            "{} {src} ({}) -> {dst} ({}) {port}/{}\n  {}\n  {}\n{}",
            if d.allowed { "ALLOWED" } else { "DENIED" },
            d.src_ip,
            d.dst_ip,
            proto.api(),
            describe_side(&d.egress, &format!("egress of {src}")),
            describe_side(&d.ingress, &format!("ingress of {dst}")),
            report::flowaudit::explain_lines(
                &audit,
                auditor.logs_anything(),
                &src.to_string(),
                &dst.to_string()
            ),
        )
    };
    write_out(out, &text)?;
    Ok(exit_status(skipped))
}

/// `explain --live`: the kernel's verdict next to the compiler's.
fn explain_live(
    args: &ExplainArgs,
    cluster: &Cluster,
    (src, dst): (&Endpoint, &Endpoint),
    (d, audit): (&eval::Decision, &FlowAudit),
    (proto, port): (Protocol, u16),
    out: &mut dyn Write,
    skipped: usize,
) -> Result<i32, Error> {
    let node = resolve_node(cluster, args.node_name.as_deref())?;
    let (kernel, counters) = match crate::netlink::read_table_counted() {
        Ok(Some((k, c))) => (Some(k), c),
        Ok(None) => (None, Default::default()),
        // Something in the table that nftpol never writes: the kernel
        // cannot be enforcing what the compiler intends.
        Err(e @ crate::netlink::NetlinkError::Decode { .. }) => {
            write_out(
                out,
                &format!(
                    "MISMATCH on node {node}: the kernel's table inet nftpol holds what nftpol \
                     never writes: {e}\n  `nftpol apply` replaces the table with the compiled one\n"
                ),
            )?;
            return Ok(EXIT_MISMATCH);
        }
        Err(e) => return Err(e.into()),
    };
    let live = report::live::LiveExplain::run(
        cluster,
        (&node, &args.log.audit()),
        kernel.as_ref(),
        (d.src_ip, d.dst_ip),
        proto,
        port,
    )
    .with_counters(&counters);
    let text = if args.format == Format::Json {
        let step = |t: &policy_compiler::interp::Trace| {
            t.deciding().map(|s| {
                serde_json::json!({
                    "chain": s.chain,
                    "index": s.index,
                    "rule": policy_compiler::render::render_rule(&s.rule),
                    "comment": s.rule.comment,
                })
            })
        };
        let v = serde_json::json!({
            "node": live.node,
            "agrees": live.agrees(),
            "table_present": live.table_present,
            "kernel": {
                "accepted": live.kernel.accepted,
                "deciding": step(&live.kernel),
                "hits": live.hits.as_ref().map(|h| serde_json::json!({"packets": h.packets, "bytes": h.bytes})),
                "logged": live.kernel_logs(),
            },
            "compiler": {
                "accepted": live.intended.accepted,
                "deciding": step(&live.intended),
                "logged": live.intended_logs(),
            },
            "policies": d,
            "staged": audit.staged,
        });
        pretty_json(&v)?
    } else {
        let staged = match &audit.staged {
            Some(st) => format!(
                "  staged policies (cluster-wide, if they were enforced): {}\n    {}\n    {}\n",
                report::flowaudit::staged_short(st),
                describe_side(&st.egress, &format!("egress of {src}")),
                describe_side(&st.ingress, &format!("ingress of {dst}")),
            ),
            None => String::new(),
        };
        format!(
            "{}  policies (cluster-wide): {}\n    {}\n    {}\n{staged}",
            report::live::render(&live, src, dst, proto),
            report::verdict_word(d),
            describe_side(&d.egress, &format!("egress of {src}")),
            describe_side(&d.ingress, &format!("ingress of {dst}")),
        )
    };
    write_out(out, &text)?;
    if !live.agrees() {
        return Ok(EXIT_MISMATCH);
    }
    Ok(exit_status(skipped))
}

/// `nftpol diff`: the table and flow changes from the kernel (or older
/// manifests) to these manifests.
pub fn diff(args: &DiffArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let (cluster, skipped) = load_cluster(&args.input)?;
    let node = resolve_node(&cluster, args.node_name.as_deref())?;
    let probes = probes(&args.port)?;
    let family: Family = match args.family {
        Some(f) => f.into(),
        None => pmatrix::default_family(&cluster),
    };
    let net = node_net(
        &args.source,
        &cluster,
        &node,
        args.against_manifests.is_empty(),
    )?;
    let audit = args.log.audit();
    let after = policy_compiler::compile_node_with(&cluster, &node, &net, &audit);
    let after_label = format!("manifests {} for node {node}", paths(&args.input.manifests));
    let mut text = String::new();
    let mut skipped = skipped;
    if args.against_manifests.is_empty() {
        let before = crate::netlink::read_table()?;
        text.push_str(&report::changes::ruleset_changes(
            before.as_ref(),
            &after,
            ("kernel table inet nftpol on this host", &after_label),
        ));
        text.push('\n');
        let pods: Vec<(Endpoint, IpAddr, bool)> = pmatrix::pods(&cluster, family, &[])
            .into_iter()
            .filter_map(|e| {
                let Endpoint::Pod { namespace, name } = &e else {
                    return None;
                };
                let pod = cluster.pod(namespace, name)?;
                let ip = pod
                    .ips
                    .iter()
                    .copied()
                    .find(|ip| Family::of(ip) == family)?;
                let local = pod.node_name.as_deref() == Some(node.as_str());
                Some((e, ip, local))
            })
            .collect();
        let changes = report::changes::kernel_flow_changes(before.as_ref(), &after, &pods, &probes);
        text.push_str(&report::changes::kernel_flow_lines(&changes, &node));
    } else {
        let old_input = Input {
            manifests: args.against_manifests.clone(),
            strict: args.input.strict,
        };
        let (old_cluster, old_skipped) = load_cluster(&old_input)?;
        skipped += old_skipped;
        let before = policy_compiler::compile_node_with(&old_cluster, &node, &net, &audit);
        text.push_str(&report::changes::ruleset_changes(
            Some(&before),
            &after,
            (
                &format!(
                    "manifests {} for node {node}",
                    paths(&args.against_manifests)
                ),
                &after_label,
            ),
        ));
        text.push('\n');
        let old_m = pmatrix::build(
            &old_cluster,
            family,
            pmatrix::pods(&old_cluster, family, &[]),
            &probes,
        )?;
        let new_m = pmatrix::build(
            &cluster,
            family,
            pmatrix::pods(&cluster, family, &[]),
            &probes,
        )?;
        text.push_str(&report::changes::flow_changes(
            &pmatrix::changed_flows(&old_m, &new_m),
            &probes,
            &format!(
                "cluster-wide, pods in both, {}",
                report::matrix::family_name(family)
            ),
        ));
    }
    write_out(out, &text)?;
    Ok(exit_status(skipped))
}

fn paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The probes of `--port` (default 80/TCP).
fn probes(ports: &[String]) -> Result<Vec<Probe>, Error> {
    if ports.is_empty() {
        return Ok(vec![Probe {
            port: 80,
            protocol: Protocol::Tcp,
        }]);
    }
    ports
        .iter()
        .map(|p| parse_port(p).map(|(port, protocol)| Probe { port, protocol }))
        .collect()
}

pub fn matrix(args: &MatrixArgs, out: &mut dyn Write) -> Result<i32, Error> {
    let (cluster, skipped) = load_cluster(&args.input)?;
    let probes = probes(&args.port)?;
    let family: Family = match args.family {
        Some(f) => f.into(),
        None => pmatrix::default_family(&cluster),
    };
    let pods = pmatrix::pods(&cluster, family, &args.namespace);
    let m =
        pmatrix::build(&cluster, family, pods, &probes)?.audited(&cluster, &args.log.audit())?;
    let text = match args.format {
        MatrixFormat::Text => report::matrix::text(&m, args.summary),
        MatrixFormat::Csv => report::matrix::csv(&m, args.summary)
            .map_err(|e| Error::Usage(format!("cannot write CSV: {e}")))?,
        MatrixFormat::Markdown => report::matrix::markdown(&m, args.summary),
        MatrixFormat::Svg => report::svg::render(&m),
    };
    write_out(out, &text)?;
    Ok(exit_status(skipped))
}

/// Sets up tracing on stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    init_logging(cli.log_format);
    let mut stdout = std::io::stdout().lock();
    let result = match &cli.command {
        Command::Compile(a) => compile(a, &mut stdout),
        Command::Explain(a) => explain(a, &mut stdout),
        Command::Matrix(a) => matrix(a, &mut stdout),
        Command::Diff(a) => diff(a, &mut stdout),
        Command::Apply(a) => apply(a, &mut stdout),
        Command::Cleanup => cleanup(&mut stdout),
        Command::Hits(a) => hits(a, &mut stdout),
        Command::Crds => write_out(&mut stdout, &nftpol_crds::all_yaml()).map(|()| 0),
        Command::Agent(a) => {
            drop(stdout);
            return match crate::agent::run(a) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!(error = %e, kind = e.metric_label(), "agent stopped");
                    eprintln!("error: {e}");
                    1
                }
            };
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `value` as pretty-printed JSON with a final newline.
fn pretty_json(value: &impl serde::Serialize) -> Result<String, Error> {
    let mut s = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Usage(format!("cannot encode JSON: {e}")))?;
    s.push('\n');
    Ok(s)
}
