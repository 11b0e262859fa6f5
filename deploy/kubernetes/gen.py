#!/usr/bin/env python3
"""Write the Kubernetes manifests of one paymesh region.

    deploy/kubernetes/gen.py --region us-west --image registry.example/paymesh:0.1.0 \\
        --remote cn-east=paymesh-interregion.cn.example:9443 \\
        --remote ap-southeast=paymesh-interregion.sg.example:9443 \\
        --out deploy/kubernetes/out

writes deploy/kubernetes/out/us-west/: the namespace, the nodes'
configurations (a ConfigMap, and the same files as node-<i>.toml beside it
for review), the services, the StatefulSet, the PodDisruptionBudget and the
one-shot Job that initialises the region, validated by
deploy/kubernetes/validate.sh against the Kubernetes version it names. The
certificates are not generated here: docs/KUBERNETES.md says how to issue
them and load them as Secrets. Needs PyYAML (validate.sh installs it).
"""

import argparse
import pathlib
import sys

import yaml

RAFT_PORT = 7000
API_PORT = 8443
INTERREGION_PORT = 9443
METRICS_PORT = 9464
CONSOLE_PORT = 9465
DATA_DIR = "/var/lib/paymesh"
CONFIG_DIR = "/etc/paymesh/config"
TLS_DIR = "/etc/paymesh/tls"
REMOTE_CA_DIR = "/etc/paymesh/remote-cas"
OPERATOR_DIR = "/etc/paymesh/operator"
APP = "paymesh"
NODES_MAX = 7


def labels(region, component):
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/component": component,
        "paymesh.dev/region": region,
    }


def peer_host(index, namespace):
    """The stable DNS name of pod `index` through the headless service."""
    return f"{APP}-{index}.{APP}-peers.{namespace}.svc.cluster.local"


def node_config(args, index):
    """Node `index + 1`'s configuration file."""
    peers = ",\n".join(
        f'  {{ node_id = {i + 1}, raft_addr = "{peer_host(i, args.namespace)}:{RAFT_PORT}", '
        f'api_addr = "{peer_host(i, args.namespace)}:{API_PORT}" }}'
        for i in range(args.nodes)
    )
    lines = [
        f"# Node {index + 1} of region {args.region}; written by deploy/kubernetes/gen.py.",
        f"node_id = {index + 1}",
        f'region = "{args.region}"',
        f'raft_listen = "0.0.0.0:{RAFT_PORT}"',
        f'api_listen = "0.0.0.0:{API_PORT}"',
    ]
    if args.remote:
        lines.append(f'interregion_listen = "0.0.0.0:{INTERREGION_PORT}"')
    lines += [
        f'data_dir = "{DATA_DIR}"',
        f"peers = [\n{peers},\n]",
        "",
        "[tls]",
        f'ca_cert = "{TLS_DIR}/ca.pem"',
        f'cert = "{TLS_DIR}/node-{index + 1}.pem"',
        f'key = "{TLS_DIR}/node-{index + 1}.key"',
        "",
        "[metrics]",
        f'listen = "0.0.0.0:{METRICS_PORT}"',
        "",
        "[console]",
        f'listen = "0.0.0.0:{CONSOLE_PORT}"',
    ]
    for name, endpoint in args.remote:
        lines += [
            "",
            "[[remote_regions]]",
            f'region = "{name}"',
            f'endpoints = ["{endpoint}"]',
            f'ca_cert = "{REMOTE_CA_DIR}/{name}.pem"',
        ]
    return "\n".join(lines) + "\n"


def namespace(args):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace}}


def config_map(args, configs):
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{APP}-config", "namespace": args.namespace, "labels": labels(args.region, "node")},
        "data": {f"node-{i}.toml": text for i, text in enumerate(configs)},
    }


def service(args, name, component, ports, **spec):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": args.namespace, "labels": labels(args.region, component)},
        "spec": {
            "selector": labels(args.region, "node"),
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in ports],
            **spec,
        },
    }


def services(args):
    out = [
        # Raft and forwarding between the region's nodes, by stable pod
        # names; not-ready pods are published so a region can bootstrap.
        service(
            args,
            f"{APP}-peers",
            "peers",
            [("raft", RAFT_PORT), ("api", API_PORT)],
            clusterIP="None",
            publishNotReadyAddresses=True,
        ),
        # Partners and operators (mutual TLS); any node forwards to the leader.
        service(args, f"{APP}-api", "api", [("api", API_PORT)], type=args.api_service_type),
        # Prometheus.
        service(args, f"{APP}-metrics", "metrics", [("metrics", METRICS_PORT)], clusterIP="None"),
        # The operator console (HTTPS, an operator's certificate); inside
        # the cluster only: reach it with kubectl port-forward.
        service(args, f"{APP}-console", "console", [("console", CONSOLE_PORT)]),
    ]
    if args.remote:
        # The other regions' nodes (mutual TLS, their CAs only).
        out.append(
            service(
                args,
                f"{APP}-interregion",
                "interregion",
                [("interregion", INTERREGION_PORT)],
                type=args.interregion_service_type,
            )
        )
    return out


def affinity(args):
    node = {"labelSelector": {"matchLabels": labels(args.region, "node")}}
    zone = {**node, "topologyKey": "topology.kubernetes.io/zone"}
    host = {**node, "topologyKey": "kubernetes.io/hostname"}
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [host]}
    if args.zone_spread == "required":
        anti["requiredDuringSchedulingIgnoredDuringExecution"].append(zone)
    else:
        anti["preferredDuringSchedulingIgnoredDuringExecution"] = [{"weight": 100, "podAffinityTerm": zone}]
    return {"podAntiAffinity": anti}


def stateful_set(args):
    secret_volume = lambda name, secret: {"name": name, "secret": {"secretName": secret, "defaultMode": 0o400}}
    volumes = [
        {"name": "config", "configMap": {"name": f"{APP}-config"}},
        secret_volume("tls", f"{APP}-tls"),
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
        {"name": "data", "mountPath": DATA_DIR},
    ]
    if args.remote:
        volumes.append(secret_volume("remote-cas", f"{APP}-remote-cas"))
        mounts.append({"name": "remote-cas", "mountPath": REMOTE_CA_DIR, "readOnly": True})
    ports = [
        {"name": "raft", "containerPort": RAFT_PORT},
        {"name": "api", "containerPort": API_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
        {"name": "console", "containerPort": CONSOLE_PORT},
    ]
    if args.remote:
        ports.append({"name": "interregion", "containerPort": INTERREGION_PORT})
    probe = lambda path, period, failures: {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }
    container = {
        "name": "node",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        # The pod's ordinal (0, 1, 2) picks its configuration file.
        "args": ["start", "--log-format", "json", "--config", f"{CONFIG_DIR}/node-$(POD_INDEX).toml"],
        "env": [
            {
                "name": "POD_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}},
            },
            {"name": "RUST_LOG", "value": "info,openraft=warn"},
        ],
        "ports": ports,
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": args.cpu, "memory": args.memory},
            "limits": {"memory": args.memory},
        },
        "startupProbe": probe("/healthz", 2, 60),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    claim = {
        "metadata": {"name": "data", "labels": labels(args.region, "node")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": args.storage}}},
    }
    if args.storage_class:
        claim["spec"]["storageClassName"] = args.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": APP, "namespace": args.namespace, "labels": labels(args.region, "node")},
        "spec": {
            "serviceName": f"{APP}-peers",
            "replicas": args.nodes,
            # Every node at once: a region's first start needs its quorum up.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": labels(args.region, "node")},
            "template": {
                "metadata": {
                    "labels": labels(args.region, "node"),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "affinity": affinity(args),
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }


def disruption_budget(args):
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": APP, "namespace": args.namespace, "labels": labels(args.region, "node")},
        # One node down at a time keeps a quorum of three (or more).
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(args.region, "node")}},
    }


def init_job(args):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{APP}-init", "namespace": args.namespace, "labels": labels(args.region, "init")},
        "spec": {
            # Retried until the nodes answer; harmless once done.
            "backoffLimit": 20,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels(args.region, "init")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "init",
                            "image": args.image,
                            "args": [
                                "init",
                                "--node",
                                f"{peer_host(0, args.namespace)}:{API_PORT}",
                                "--ca",
                                f"{OPERATOR_DIR}/ca.pem",
                                "--cert",
                                f"{OPERATOR_DIR}/operator.pem",
                                "--key",
                                f"{OPERATOR_DIR}/operator.key",
                            ],
                            "volumeMounts": [{"name": "operator", "mountPath": OPERATOR_DIR, "readOnly": True}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "runAsUser": 10001,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": [
                        {"name": "operator", "secret": {"secretName": f"{APP}-operator", "defaultMode": 0o400}}
                    ],
                },
            },
        },
    }


def remote(text):
    name, sep, endpoint = text.partition("=")
    if not sep or not name or ":" not in endpoint:
        raise argparse.ArgumentTypeError(f"--remote {text!r}: REGION=HOST:PORT")
    return name, endpoint


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--region", required=True, help="the region's id, e.g. us-west")
    parser.add_argument("--namespace", help="default: paymesh-<region>")
    parser.add_argument("--image", required=True, help="the paymesh image (deploy/build-image.sh builds one)")
    parser.add_argument("--nodes", type=int, default=3, help="voting nodes, odd, 3 to 7 (default 3)")
    parser.add_argument("--remote", type=remote, action="append", default=[], metavar="REGION=HOST:PORT",
                        help="another region and the address of its inter-region service; repeat per region")
    parser.add_argument("--storage", default="100Gi", help="each node's volume (default 100Gi)")
    parser.add_argument("--storage-class", default="", help="the volumes' storage class (default: the cluster's)")
    parser.add_argument("--cpu", default="2", help="each node's CPU request (default 2)")
    parser.add_argument("--memory", default="8Gi", help="each node's memory request and limit (default 8Gi)")
    parser.add_argument("--zone-spread", choices=["required", "preferred"], default="required",
                        help="nodes in distinct zones: required (default) or preferred")
    parser.add_argument("--api-service-type", choices=["ClusterIP", "LoadBalancer", "NodePort"], default="LoadBalancer")
    parser.add_argument("--interregion-service-type", choices=["ClusterIP", "LoadBalancer", "NodePort"],
                        default="LoadBalancer")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="the directory to write <region>/ under")
    args = parser.parse_args(argv)
    args.namespace = args.namespace or f"{APP}-{args.region}"
    if args.nodes % 2 == 0 or not 3 <= args.nodes <= NODES_MAX:
        parser.error(f"--nodes must be odd, 3 to {NODES_MAX}")
    if len({name for name, _ in args.remote}) != len(args.remote) or args.region in {n for n, _ in args.remote}:
        parser.error("each --remote names another region, once")

    out = args.out / args.region
    out.mkdir(parents=True, exist_ok=True)
    configs = [node_config(args, i) for i in range(args.nodes)]
    for i, text in enumerate(configs):
        (out / f"node-{i}.toml").write_text(text)
    documents = {
        "00-namespace.yaml": [namespace(args)],
        "10-config.yaml": [config_map(args, configs)],
        "20-services.yaml": services(args),
        "30-statefulset.yaml": [stateful_set(args)],
        "40-disruption-budget.yaml": [disruption_budget(args)],
        "50-init-job.yaml": [init_job(args)],
    }
    for name, docs in documents.items():
        text = "# Written by deploy/kubernetes/gen.py; regenerate rather than edit.\n" + yaml.safe_dump_all(
            docs, sort_keys=False, default_flow_style=False
        )
        (out / name).write_text(text)
    hosts = ",".join([peer_host(i, args.namespace) for i in range(args.nodes)]
                     + [f"{APP}-api.{args.namespace}.svc", f"{APP}-api.{args.namespace}.svc.cluster.local"])
    print(f"{out}: {len(documents)} manifests and {args.nodes} node configurations for region {args.region}")
    print(f"node certificates must name: {hosts}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
