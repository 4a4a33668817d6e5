"""Offline checks of a rendered overlay that a schema cannot make (scripts/validate-kubernetes).

    check.py split RENDERED DIR     one file per object, for kubernetes-validate
    check.py references RENDERED    the objects fit together

`references` fails, naming each problem, when a pod reads a ConfigMap, Secret or Secret key
that the render does not have; a Service selects no pod, or names a port its pods lack; a
probe names a port its container lacks; a StatefulSet's serviceName is not a headless Service
of the render; or an image is not one the compose files build (docker-compose*.yml `image:`).
Needs PyYAML (in the validator's venv).
"""

import base64
import glob
import os
import re
import sys

import yaml


def load(path):
    return [doc for doc in yaml.safe_load_all(open(path)) if doc]


def split(rendered, directory):
    os.makedirs(directory, exist_ok=True)
    for i, doc in enumerate(load(rendered)):
        name = f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        with open(os.path.join(directory, name), "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)


def compose_images():
    """Image names (without tag) that the compose files build."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    names = set()
    for path in glob.glob(os.path.join(root, "docker-compose*.yml")):
        for match in re.finditer(r"^\s*image:\s*([^\s:]+)", open(path).read(), re.M):
            names.add(match.group(1))
    return names


def pods(docs):
    """(workload, pod template labels for each pod it runs, pod spec)."""
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = doc["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        if doc["kind"] == "StatefulSet":
            # Each pod also carries its own name as a label, which per-pod Services select.
            name = doc["metadata"]["name"]
            per_pod = [
                {**labels, "statefulset.kubernetes.io/pod-name": f"{name}-{n}"}
                for n in range(spec.get("replicas", 1))
            ]
        else:
            per_pod = [labels]
        yield doc, per_pod, spec["template"]["spec"]


def references(rendered):
    docs = load(rendered)
    problems = []
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config_maps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    services = by_kind.get("Service", {})
    images = compose_images()
    workloads = list(pods(docs))

    for doc, _, spec in workloads:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "StatefulSet":
            governing = services.get(doc["spec"]["serviceName"])
            if governing is None or governing["spec"].get("clusterIP") != "None":
                problems.append(f"{where}: serviceName {doc['spec']['serviceName']} is not a headless Service")
        for container in spec.get("initContainers", []) + spec["containers"]:
            cwhere = f"{where} container {container['name']}"
            image = container["image"].split(":")[0]
            if image not in images:
                problems.append(f"{cwhere}: image {image} is not built by the compose files ({sorted(images)})")
            for source in container.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                    problems.append(f"{cwhere}: no ConfigMap {source['configMapRef']['name']}")
                if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                    problems.append(f"{cwhere}: no Secret {source['secretRef']['name']}")
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret = secrets.get(ref["secretKeyRef"]["name"])
                    if secret is None or ref["secretKeyRef"]["key"] not in secret.get("data", {}):
                        problems.append(f"{cwhere}: env {var['name']} reads a missing Secret key {ref['secretKeyRef']}")
                if "configMapKeyRef" in ref:
                    config_map = config_maps.get(ref["configMapKeyRef"]["name"])
                    if config_map is None or ref["configMapKeyRef"]["key"] not in config_map.get("data", {}):
                        problems.append(f"{cwhere}: env {var['name']} reads a missing ConfigMap key {ref['configMapKeyRef']}")
            port_names = {p.get("name") for p in container.get("ports", [])}
            port_numbers = {p["containerPort"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in port_names | port_numbers:
                    problems.append(f"{cwhere}: {probe} names port {port}, which the container lacks")

    for name, service in services.items():
        selector = service["spec"].get("selector", {})
        matched = [
            spec
            for _, per_pod, spec in workloads
            if any(all(labels.get(k) == v for k, v in selector.items()) for labels in per_pod)
        ]
        if not matched:
            problems.append(f"Service/{name}: selector {selector} matches no pod")
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for spec in matched:
                have = {
                    p.get("name") if isinstance(target, str) else p["containerPort"]
                    for c in spec["containers"]
                    for p in c.get("ports", [])
                }
                if target not in have:
                    problems.append(f"Service/{name}: targetPort {target} is not a port of the pods it selects")

    for name, secret in secrets.items():
        for key, value in secret.get("data", {}).items():
            if b"REPLACE-ME" in base64.b64decode(value):
                print(f"check: note: Secret/{name} {key} is still the placeholder: replace it before deploying")

    if problems:
        for problem in problems:
            print(f"check: {rendered}: {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "split":
        split(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "references":
        references(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
