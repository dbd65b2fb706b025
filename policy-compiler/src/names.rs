//! Stable, readable nftables names for generated chains and sets, and rule
//! comments. Names are `<kind>_<namespace>_<name>...`: Kubernetes names
//! never contain `_`, so the parts stay unambiguous. Names that would be
//! too long (the kernel allows 255 bytes; we keep well below) or hold
//! characters nft cannot parse are cut and suffixed with a stable hash, so
//! they stay unique and identical across runs, versions and machines.

/// Longest generated name; leaves room under the kernel's 255.
const MAX_NAME: usize = 200;
/// Longest rule comment, in bytes. The kernel keeps 128 bytes of comment
/// userdata (NFTNL_UDATA_COMMENT_MAXLEN) including the terminating NUL,
/// and the nftnl encoder also spends 2 bytes of that buffer on the TLV
/// header: 125 is what netlink can carry.
pub const MAX_COMMENT: usize = 125;

/// FNV-1a 64: stable across Rust versions, unlike `DefaultHasher`.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'
}

/// `prefix_part1_part2...`, made safe for nft.
pub fn ident(prefix: &str, parts: &[&str]) -> String {
    let mut raw = prefix.to_string();
    for p in parts {
        raw.push('_');
        raw.push_str(p);
    }
    if raw.len() <= MAX_NAME && raw.chars().all(plain_char) {
        return raw;
    }
    let hash = format!("{:016x}", stable_hash(&raw));
    let mut cut: String = raw
        .chars()
        .map(|c| if plain_char(c) { c } else { '_' })
        .take(MAX_NAME - hash.len() - 1)
        .collect();
    cut.push('_');
    cut.push_str(&hash);
    cut
}

/// `prefix_<16 hex digits>`: the name of a set shared by everything whose
/// definition is `key` (a canonical text of the selectors or ranges it
/// holds), so equal definitions get one set whoever uses them.
pub fn keyed(prefix: &str, key: &str) -> String {
    format!("{prefix}_{:016x}", stable_hash(key))
}

/// A rule comment, cut to what the kernel keeps.
pub fn comment(text: String) -> String {
    if text.len() <= MAX_COMMENT {
        return text;
    }
    let mut end = MAX_COMMENT - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The comment of a rule serving several policy rules: all their names
/// when they fit the kernel's comment, else as many as fit and how many
/// more there are.
pub fn served(notes: &[String]) -> String {
    let all = notes.join(", ");
    if all.len() <= MAX_COMMENT {
        return all;
    }
    let mut out = String::new();
    for (i, note) in notes.iter().enumerate() {
        let rest = format!(" and {} more", notes.len() - i);
        let sep = if out.is_empty() { "" } else { ", " };
        if out.len() + sep.len() + note.len() + format!(" and {} more", notes.len() - i - 1).len()
            > MAX_COMMENT
        {
            if out.is_empty() {
                return comment(all);
            }
            out.push_str(&rest);
            return out;
        }
        out.push_str(sep);
        out.push_str(note);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_when_short() {
        assert_eq!(ident("ing", &["default", "web-1"]), "ing_default_web-1");
    }

    #[test]
    fn long_or_odd_names_are_cut_with_a_stable_hash() {
        let long = "a".repeat(300);
        let n = ident("ing", &["ns", &long]);
        assert!(n.len() <= MAX_NAME);
        assert_eq!(n, ident("ing", &["ns", &long]));
        assert_ne!(n, ident("ing", &["ns", &"a".repeat(301)]));
        let odd = ident("ing", &["ns", "we b"]);
        assert!(odd.chars().all(plain_char), "{odd}");
        assert_ne!(odd, ident("ing", &["ns", "we_b"]));
    }

    #[test]
    fn keyed_names_follow_the_definition_only() {
        assert_eq!(keyed("pod4", "a"), keyed("pod4", "a"));
        assert_ne!(keyed("pod4", "a"), keyed("pod4", "b"));
        assert!(keyed("pod4", "x").chars().all(plain_char));
    }

    #[test]
    fn a_served_comment_names_every_rule_that_fits_and_counts_the_rest() {
        let few: Vec<String> = (0..3).map(|i| format!("ns/p{i} ingress[0]")).collect();
        assert_eq!(
            served(&few),
            "ns/p0 ingress[0], ns/p1 ingress[0], ns/p2 ingress[0]"
        );
        let many: Vec<String> = (0..500)
            .map(|i| format!("ns/pol-{i:03} ingress[0]"))
            .collect();
        let c = served(&many);
        assert!(c.len() <= MAX_COMMENT, "{c}");
        let named = c.matches("ingress[0]").count();
        assert!(named >= 4, "{c}");
        assert!(c.ends_with(&format!(" and {} more", 500 - named)), "{c}");
        assert!(c.starts_with("ns/pol-000 ingress[0], ns/pol-001 ingress[0]"));
    }

    #[test]
    fn comments_fit_the_kernel() {
        let c = comment("x".repeat(500));
        assert!(c.len() <= MAX_COMMENT);
        assert!(c.ends_with("..."));
        assert_eq!(comment("short".into()), "short");
    }
}
