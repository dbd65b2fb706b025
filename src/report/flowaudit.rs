//! The staged verdict and the logs of one flow in words, for `explain`
//! (text) and the matrix formats. The facts come from
//! `policy_compiler::flowaudit`; this only words them.

use super::describe_side;
use policy_compiler::flowaudit::{FlowAudit, LogLine, Staged};

/// `ALLOWED`/`DENIED` of a staged verdict.
pub fn staged_word(s: &Staged) -> &'static str {
    if s.allowed {
        "ALLOWED"
    } else {
        "DENIED"
    }
}

/// The staged verdict in a few words, e.g. `DENIED by staged
/// shop/api-lockdown`.
pub fn staged_short(s: &Staged) -> String {
    if s.would_deny.is_empty() {
        staged_word(s).to_string()
    } else {
        format!("{} by staged {}", staged_word(s), s.would_deny.join(", "))
    }
}

/// The logs in a few words: their prefixes with the node, `;`-separated.
pub fn logged_short(logged: &[LogLine]) -> String {
    logged
        .iter()
        .map(|l| format!("{} ({})", l.prefix, l.node))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The lines `explain` adds under the enforced verdict: the staged
/// verdict with both sides (when a policy is staged) and where the packet
/// is logged (when anything logs: `logs_anything`).
pub fn explain_lines(a: &FlowAudit, logs_anything: bool, src: &str, dst: &str) -> String {
    let mut s = String::new();
    if let Some(st) = &a.staged {
        s.push_str(&format!(
            "  staged (if the staged policies were enforced): {}\n    egress of {src}: {}\n    ingress of {dst}: {}\n",
            staged_short(st),
            describe_side(&st.egress),
            describe_side(&st.ingress),
        ));
    }
    for l in &a.logged {
        s.push_str(&format!("  logged: {l}\n"));
    }
    if a.logged.is_empty() && logs_anything {
        s.push_str("  logged: no (no log rule on its path)\n");
    }
    s
}
