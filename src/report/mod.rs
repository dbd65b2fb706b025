//! What the audit commands print: the reachability matrix in its formats
//! (text, CSV, Markdown, SVG heat map), readable ruleset diffs with the
//! flows that change verdict, and the live explanation of a flow in the
//! kernel, per-policy hit counts, and each flow's staged verdict and
//! logs. Everything here turns data
//! computed elsewhere (evaluator, compiler, interpreter, read-back) into
//! text; nothing here decides a verdict.

pub mod changes;
pub mod flowaudit;
pub mod hits;
pub mod live;
pub mod matrix;
pub mod svg;

use policy_compiler::eval::{Decision, SideVerdict};

/// One side of a decision in words, e.g. `allowed by prod/web ingress[0]`.
pub fn describe_side(side: &SideVerdict) -> String {
    match side {
        SideVerdict::NotAPod => "not a pod policies select: unrestricted".into(),
        SideVerdict::NotIsolated => "no policy isolates it: allowed".into(),
        SideVerdict::SamePod => "same pod, never leaves it: allowed".into(),
        SideVerdict::Allowed { rules } => format!(
            "allowed by {}",
            rules
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        SideVerdict::Denied { isolated_by } => format!(
            "denied: isolated by {} and no rule admits this flow",
            isolated_by.join(", ")
        ),
        SideVerdict::SharedAddress { claimed_by } => format!(
            "denied: the address is shared by {} (one of them is isolated; no single pod's \
             policies can apply)",
            claimed_by.join(", ")
        ),
        SideVerdict::SharedPeer { claimed_by, rule } => format!(
            "denied: the peer's address is shared by {}, which {rule} tells apart \
             (the packet may come from either)",
            claimed_by.join(", ")
        ),
        SideVerdict::Tier { rule } => {
            let outcome = match rule.action {
                policy_compiler::admin::Action::Deny => "denied",
                // A baseline Pass hands the flow to the default allow.
                _ => "allowed",
            };
            format!("{outcome} by {rule}")
        }
    }
}

/// `ALLOWED` or `DENIED`.
pub fn verdict_word(d: &Decision) -> &'static str {
    if d.allowed {
        "ALLOWED"
    } else {
        "DENIED"
    }
}
