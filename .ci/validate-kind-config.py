#!/usr/bin/env python3
"""Validates kind cluster configs offline, as `kind create cluster --config`
would, plus what the nftpol e2e needs of them.

1. The JSON schema tests/e2e/kind/kind-config.schema.json (kind's v1alpha4
   fields and enums; unknown fields rejected, as kind's strict decoding
   does).
2. The checks kind makes beyond the schema: subnets parse, one CIDR per
   family for single-stack, one of each family for dual, at least one
   control-plane node.
3. nftpol's requirements: kindnet stays the CNI, kube-proxy runs in a mode
   nftpol supports (iptables, nftables), and there are at least two
   workers (the upstream suite spreads pods over nodes).

Usage: validate-kind-config.py FILE...   (exit 1 if any file fails)
"""

import ipaddress
import json
import pathlib
import sys

import jsonschema
import yaml

SCHEMA = pathlib.Path(__file__).resolve().parent.parent / "tests/e2e/kind/kind-config.schema.json"


def subnet_errors(field, value, family):
    nets = []
    for cidr in value.split(","):
        try:
            nets.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as e:
            return [f"networking.{field}: {e}"]
    versions = [n.version for n in nets]
    if family == "dual":
        if sorted(versions) != [4, 6]:
            return [f"networking.{field}: dual-stack needs one IPv4 and one IPv6 CIDR, got {value!r}"]
    elif len(nets) != 1:
        return [f"networking.{field}: single-stack takes one CIDR, got {value!r}"]
    elif versions[0] != (6 if family == "ipv6" else 4):
        return [f"networking.{field}: {value!r} is not of family {family}"]
    return []


def check(path, schema):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if len(docs) != 1:
        return [f"expected one YAML document, found {len(docs)}"]
    cfg = docs[0]
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(cfg)
    ]
    if errors:
        return errors
    net = cfg.get("networking", {})
    family = net.get("ipFamily", "ipv4")
    for field in ("podSubnet", "serviceSubnet"):
        if field in net:
            errors += subnet_errors(field, net[field], family)
    roles = [n.get("role", "control-plane") for n in cfg.get("nodes", [{}])]
    if "control-plane" not in roles:
        errors.append("nodes: at least one control-plane node is required")
    # nftpol's own requirements of the e2e clusters.
    if net.get("disableDefaultCNI"):
        errors.append("networking.disableDefaultCNI: the e2e keeps kindnet as the CNI")
    if net.get("kubeProxyMode", "iptables") not in ("iptables", "nftables"):
        errors.append(
            f"networking.kubeProxyMode: {net['kubeProxyMode']!r} is not supported by nftpol "
            "(iptables or nftables)"
        )
    if roles.count("worker") < 2:
        errors.append("nodes: the upstream suite needs at least two workers")
    return errors


def main(paths):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    failed = 0
    for path in paths:
        errors = check(path, schema)
        for e in errors:
            print(f"FAIL kind config {path}: {e}")
        failed |= bool(errors)
    if not paths:
        print("FAIL no kind config given")
        return 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
