#!/usr/bin/env python3
"""Writes the manifests of one busy node: 1,000 pods on node-1 in 50
namespaces, 500 NetworkPolicies (10 per namespace) of five common kinds,
IPv4 only. Namespace-selector peers repeat across policies, as they do in
real clusters (every namespace of an environment or team admits the same
others). Deterministic: the same file every run.

Usage: benches/node/fixture.py OUT.yaml
"""
import sys

NAMESPACES = 50
PODS = 1000
POLICIES = 500
ENVS = ["prod", "staging", "dev", "test", "qa"]
TIERS = ["web", "api", "db"]


def ns_name(n):
    return f"ns-{n:02d}"


def main(out):
    docs = []
    for n in range(NAMESPACES):
        docs.append(f"""apiVersion: v1
kind: Namespace
metadata:
  name: {ns_name(n)}
  labels: {{kubernetes.io/metadata.name: {ns_name(n)}, team: team-{n % 10}, env: {ENVS[n % 5]}}}""")
    for k in range(PODS):
        role = "monitoring" if k % 20 == 0 else TIERS[k % 3]
        docs.append(f"""apiVersion: v1
kind: Pod
metadata:
  name: pod-{k:04d}
  namespace: {ns_name(k % NAMESPACES)}
  labels: {{app: app-{(k // NAMESPACES) % 5}, tier: {role}}}
spec:
  nodeName: node-1
  containers:
  - name: main
    ports: [{{name: http, containerPort: {8080 + k % 3}}}]
status:
  podIPs: [{{ip: 10.244.{k // 250}.{k % 250 + 1}}}]""")
    for i in range(POLICIES):
        ns = i % NAMESPACES
        app = f"app-{(i // NAMESPACES) % 5}"
        monitoring = """  - from: [{podSelector: {matchLabels: {tier: monitoring}}}]
    ports: [{port: 9090}, {port: 9091}]"""
        kind = i % 5
        if kind == 0:
            spec = f"""  podSelector: {{matchLabels: {{app: {app}}}}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{env: {ENVS[i % 5]}}}}}}}]
    ports: [{{port: 80}}, {{port: 443}}]
{monitoring}"""
        elif kind == 1:
            spec = f"""  podSelector: {{matchLabels: {{app: {app}, tier: api}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{tier: web}}}}}}]
    ports: [{{port: http}}]
  - from: [{{namespaceSelector: {{matchLabels: {{env: {ENVS[(i + 1) % 5]}}}}}}}]
    ports: [{{port: 8080}}, {{port: 8081}}]
{monitoring}"""
        elif kind == 2:
            spec = f"""  podSelector: {{matchLabels: {{tier: db}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{namespaceSelector: {{matchExpressions: [{{key: team, operator: In, values: [team-{i % 10}, team-{(i + 3) % 10}]}}]}}}}]
    ports: [{{port: 5432}}]
{monitoring}
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{env: {ENVS[i % 5]}}}}}}}]
    ports: [{{port: 5432}}]"""
        elif kind == 3:
            spec = f"""  podSelector: {{matchLabels: {{app: {app}}}}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{team: team-{i % 10}}}}}, podSelector: {{matchLabels: {{tier: web}}}}}}]
    ports: [{{port: 8000, endPort: 8999}}]
{monitoring}"""
        else:
            spec = f"""  podSelector: {{matchLabels: {{app: {app}}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]
    ports: [{{port: 443}}]
  - to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{tier: api}}}}}}]
    ports: [{{port: http}}]"""
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: pol-{i:03d}
  namespace: {ns_name(ns)}
spec:
{spec}""")
    with open(out, "w") as f:
        f.write("\n---\n".join(docs) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
