//! The apiserver's syntax rules for the strings a NetworkPolicy carries:
//! object names, namespace names, label keys and values, annotation keys,
//! port names and ipBlock CIDRs. Each check returns the reason a value is
//! refused, worded as the apiserver words it, so a policy nftpol accepts
//! is one the apiserver would have stored and the other way round.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS-1123 label (namespace names, label values, the name part
/// of a label key).
const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain (object names, label key prefixes).
const SUBDOMAIN_MAX: usize = 253;
/// The apiserver's limit on all annotation keys and values together.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, without the length limit.
fn dns_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && alnum_lower(b[0])
        && alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
}

/// A DNS-1123 label: namespace names.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !dns_label_shape(s) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain: object names and label key prefixes.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > SUBDOMAIN_MAX {
        return Err(format!("must be no more than {SUBDOMAIN_MAX} characters"));
    }
    if !s.split('.').all(dns_label_shape) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// An object name, or with `prefix` a `generateName` (which may end in
/// `-`, since random characters follow it). The apiserver masks a
/// trailing `-` by putting `a` in place of the last two characters, and
/// that decides which prefixes pass, so it is done the same way here.
pub fn object_name(s: &str, prefix: bool) -> Result<(), String> {
    if prefix && s.len() > 1 && s.ends_with('-') {
        let head = s.get(..s.len() - 2).ok_or_else(|| {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'".to_string()
        })?;
        return dns1123_subdomain(&format!("{head}a"));
    }
    dns1123_subdomain(s)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, without the length limit:
/// the name part of a label key, and a non-empty label value.
fn name_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

const NAME_SHAPE_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// A qualified name: label keys, selector keys, annotation keys (those
/// lowercased first) and finalizers. An optional DNS subdomain prefix and
/// `/`, then a name of at most 63 characters.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let name = match s.split('/').collect::<Vec<_>>()[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty".into());
            }
            dns1123_subdomain(prefix).map_err(|m| format!("prefix part {m}"))?;
            name
        }
        _ => {
            return Err(format!(
                "a qualified name {NAME_SHAPE_MSG}, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ))
        }
    };
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > LABEL_MAX {
        return Err(format!(
            "name part must be no more than {LABEL_MAX} characters"
        ));
    }
    if !name_shape(name) {
        return Err(format!("name part {NAME_SHAPE_MSG}"));
    }
    Ok(())
}

/// A label value: empty, or up to 63 characters of the name shape.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !s.is_empty() && !name_shape(s) {
        return Err(format!(
            "a valid label value must be empty or {NAME_SHAPE_MSG}"
        ));
    }
    Ok(())
}

/// An IANA service name, as named ports are: 1-15 characters of
/// `[-a-z0-9]` with at least one letter, no `--`, no `-` at either end.
pub fn port_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if s.len() > 15 {
        Err("must be no more than 15 characters".into())
    } else if b.is_empty() || !b.iter().all(|&c| alnum_lower(c) || c == b'-') {
        Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into())
    } else if !b.iter().any(u8::is_ascii_lowercase) {
        Err("must contain at least one letter (a-z)".into())
    } else if s.contains("--") {
        Err("must not contain consecutive hyphens".into())
    } else if b[0] == b'-' || b[b.len() - 1] == b'-' {
        Err("must not begin or end with a hyphen".into())
    } else {
        Ok(())
    }
}

/// Decimal digits only, no sign, at most `max`. Leading zeros are allowed
/// and read as decimal, as the apiserver reads them.
fn decimal(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 10 {
        return None;
    }
    let n: u64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    u32::try_from(n).ok().filter(|n| *n <= max)
}

/// A CIDR as the apiserver accepts one in `ipBlock` (its "legacy field"
/// rules, the default): IPv4 octets and the prefix length may carry
/// leading zeros (read as decimal), and bits set past the prefix are
/// dropped (`10.0.0.1/8` means `10.0.0.0/8`). A bare address is refused.
pub fn cidr(s: &str) -> Result<IpNet, String> {
    const MSG: &str = "want an address and a prefix length, e.g. 10.9.8.0/24 or 2001:db8::/64";
    let (addr, len) = s.split_once('/').ok_or(MSG)?;
    let addr: IpAddr = if addr.contains(':') {
        IpAddr::V6(addr.parse::<Ipv6Addr>().map_err(|_| MSG)?)
    } else {
        let octets: Vec<u8> = addr
            .split('.')
            .map(|o| decimal(o, 255).map(|n| n as u8))
            .collect::<Option<_>>()
            .ok_or(MSG)?;
        let octets: [u8; 4] = octets.try_into().map_err(|_| MSG)?;
        IpAddr::V4(Ipv4Addr::from(octets))
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = decimal(len, max).ok_or(MSG)?;
    let len = u8::try_from(len).map_err(|_| MSG)?;
    Ok(IpNet::new(addr, len).map_err(|_| MSG)?.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (value, accepted) rows for one rule.
    fn table(rule: fn(&str) -> Result<(), String>, rows: &[(&str, bool)]) {
        for (value, ok) in rows {
            assert_eq!(rule(value).is_ok(), *ok, "{value:?}: {:?}", rule(value));
        }
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        table(
            dns1123_label,
            &[
                ("default", true),
                ("kube-system", true),
                ("0abc", true),
                (&long, true),
                (&too_long, false),
                ("", false),
                ("Default", false),
                ("a.b", false),
                ("-a", false),
                ("a-", false),
                ("a_b", false),
            ],
        );
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(long.len(), 253);
        let too_long = format!("{long}e");
        table(
            |s| object_name(s, false),
            &[
                ("allow-dns", true),
                ("a.b.c", true),
                (&long, true),
                (&too_long, false),
                ("", false),
                ("Allow", false),
                ("a..b", false),
                (".a", false),
                ("a.", false),
                ("a_b", false),
                ("a-", false),
                ("a b", false),
            ],
        );
        table(
            |s| object_name(s, true),
            &[
                ("web-", true),
                ("web", true),
                ("a-", true),
                ("Web-", false),
                ("web.-", true),
                ("web--", true),
                ("-", false),
                ("é-", false),
            ],
        );
    }

    #[test]
    fn label_keys_are_qualified_names() {
        let name63 = "n".repeat(63);
        let name64 = "n".repeat(64);
        let prefix254 = format!("{}/x", "p".repeat(254));
        table(
            qualified_name,
            &[
                ("app", true),
                ("App.Name_x-1", true),
                ("example.com/app", true),
                ("kubernetes.io/metadata.name", true),
                (&name63, true),
                (&name64, false),
                (&prefix254, false),
                ("", false),
                ("/app", false),
                ("example.com/", false),
                ("a/b/c", false),
                ("Example.com/app", false),
                ("-app", false),
                ("app-", false),
                ("app name", false),
                ("app=x", false),
            ],
        );
    }

    #[test]
    fn label_values_may_be_empty_and_have_the_name_shape() {
        let v63 = "v".repeat(63);
        let v64 = "v".repeat(64);
        table(
            label_value,
            &[
                ("", true),
                ("Web_1.x-y", true),
                (&v63, true),
                (&v64, false),
                ("-web", false),
                ("web.", false),
                ("a/b", false),
                ("a b", false),
                ("é", false),
            ],
        );
    }

    #[test]
    fn port_names_follow_iana_service_names() {
        table(
            port_name,
            &[
                ("http", true),
                ("h2c", true),
                ("web-80", true),
                ("abcdefghijklmno", true),
                ("abcdefghijklmnop", false),
                ("", false),
                ("80", false),
                ("Http", false),
                ("a--b", false),
                ("-a", false),
                ("a-", false),
                ("a_b", false),
            ],
        );
    }

    #[test]
    fn cidrs_are_read_as_the_apiserver_reads_them() {
        let rows: &[(&str, Option<&str>)] = &[
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("010.001.0.0/16", Some("10.1.0.0/16")),
            ("10.0.0.0/08", Some("10.0.0.0/8")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("1.2.3.4/32", Some("1.2.3.4/32")),
            ("2001:db8::1/64", Some("2001:db8::/64")),
            ("::/0", Some("::/0")),
            ("::ffff:10.0.0.0/104", Some("::ffff:10.0.0.0/104")),
            ("", None),
            ("10.0.0.0", None),
            ("10.0.0.0/33", None),
            ("2001:db8::/129", None),
            ("10.0.0/8", None),
            ("10.0.0.0.0/8", None),
            ("256.0.0.0/8", None),
            ("10.0.0.0/-1", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.0/", None),
            ("/8", None),
            ("10.0.0.0/8/8", None),
            ("fe80::1%eth0/64", None),
            ("10.0.0.0/99999999999999999999", None),
            ("0000000000000000000010.0.0.0/8", Some("10.0.0.0/8")),
        ];
        for (s, want) in rows {
            let got = cidr(s).ok().map(|n| n.to_string());
            assert_eq!(got.as_deref(), *want, "{s:?}");
        }
    }
}
