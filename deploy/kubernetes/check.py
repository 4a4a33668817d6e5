"""Offline checks of a rendered overlay that a schema cannot make (scripts/validate-kubernetes).

    check.py split RENDERED DIR     one file per object, for kubernetes-validate; custom
                                    resources (cert-manager's) go to DIR/custom/, which it has
                                    no schemas for
    check.py references RENDERED    the objects fit together

`references` fails, naming each problem, when
- a pod reads a ConfigMap, Secret or key (env, envFrom, volume) that the render does not have,
  mounts a volume it does not define, or has a setting that names a file (TLS_CERT, UPSTREAM_CA,
  any value inside a Secret's or ConfigMap's mount) that its mounts do not have;
- a Secret of type kubernetes.io/tls lacks tls.crt or tls.key;
- a Service selects no pod, or names a port its pods lack; a probe names a port its container
  lacks, or speaks HTTP to a node that serves HTTPS (PUBLIC_TLS=true), or the reverse;
- an address a pod dials (MASTER, SECONDARIES, PEERS, ETCD_ENDPOINTS, nginx's *_ADDR) is no
  Service of the render and no <pod>.<headless Service>, or has a port they lack;
- a certificate does not name a host it is reached by: every host a pod dials a node with a
  TLS_CERT by, every ClusterIP Service in front of a node serving HTTPS, and nginx's
  UPSTREAM_ANY_NAME must be among the subject alternative names of that node's TLS_CERT (from
  the Secret's PEM, or the dnsNames and ipAddresses of the cert-manager Certificate that
  writes the Secret);
- a cert-manager Certificate a node uses is not for both server auth and client auth (mutual
  TLS), or is issued by an Issuer the render lacks, or an Issuer's CA Secret is not there;
- a StatefulSet's serviceName is not a headless Service of the render; or an image is not one
  the compose files build (docker-compose*.yml `image:`).
Needs PyYAML (in the validator's venv).
"""

import base64
import glob
import ipaddress
import os
import posixpath
import re
import sys
from urllib.parse import urlsplit

import yaml

# Settings whose value is a file the container must have (its mounts provide it).
FILE_SETTINGS = ("TLS_CERT", "TLS_KEY", "TLS_CA", "UPSTREAM_CA", "ETCD_CA", "ETCD_CERT", "ETCD_KEY")
# The keys cert-manager writes into a Certificate's Secret.
ISSUED_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# The DER encoding of the subjectAltName extension's OID, 2.5.29.17.
SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])


def load(path):
    return [doc for doc in yaml.safe_load_all(open(path)) if doc]


def custom(doc):
    """Whether the object is a custom resource: its API group is not Kubernetes' own."""
    group = doc["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def split(rendered, directory):
    os.makedirs(directory, exist_ok=True)
    for i, doc in enumerate(load(rendered)):
        where = os.path.join(directory, "custom") if custom(doc) else directory
        os.makedirs(where, exist_ok=True)
        name = f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        with open(os.path.join(where, name), "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)


def compose_images():
    """Image names (without tag) that the compose files build."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    names = set()
    for path in glob.glob(os.path.join(root, "docker-compose*.yml")):
        for match in re.finditer(r"^\s*image:\s*([^\s:]+)", open(path).read(), re.M):
            names.add(match.group(1))
    return names


def der_element(der, at):
    """(tag, start, end) of the DER element at `at`: its contents are der[start:end]."""
    tag, length, start = der[at], der[at + 1], at + 2
    if length & 0x80:
        size = length & 0x7F
        length, start = int.from_bytes(der[start : start + size], "big"), start + size
    return tag, start, start + length


def der_elements(der, start, end):
    while start < end:
        element = der_element(der, start)
        yield element
        start = element[2]


def subject_alt_names(pem):
    """The DNS names and IP addresses the first certificate of a PEM text is for."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if match is None:
        return set()
    der = base64.b64decode(b"".join(match.group(1).split()))
    _, start, end = der_element(der, 0)  # Certificate
    _, start, end = der_element(der, start)  # tbsCertificate
    names = set()
    for tag, start, end in der_elements(der, start, end):
        if tag != 0xA3:  # [3] extensions
            continue
        _, start, end = der_element(der, start)
        for _, ext_start, ext_end in der_elements(der, start, end):
            parts = list(der_elements(der, ext_start, ext_end))
            oid, value = parts[0], parts[-1]  # extnID, (critical,) extnValue
            if der[oid[1] : oid[2]] != SUBJECT_ALT_NAME:
                continue
            _, start, end = der_element(der, value[1])  # GeneralNames
            for name_tag, name_start, name_end in der_elements(der, start, end):
                if name_tag == 0x82:  # dNSName
                    names.add(der[name_start:name_end].decode("ascii"))
                elif name_tag == 0x87:  # iPAddress
                    names.add(str(ipaddress.ip_address(der[name_start:name_end])))
    return names


def names_host(names, host):
    """Whether a certificate for `names` is valid for `host` (a wildcard covers one label)."""
    return host in names or any(
        name.startswith("*.") and host.partition(".")[2] == name[2:] for name in names
    )


def volume_source(volume):
    """(kind, name, source) of a Secret or ConfigMap volume; None for other volumes."""
    if "secret" in volume:
        return "Secret", volume["secret"]["secretName"], volume["secret"]
    if "configMap" in volume:
        return "ConfigMap", volume["configMap"]["name"], volume["configMap"]
    return None


def address(value):
    """(host, port) of host:port."""
    host, _, port = value.rpartition(":")
    return host, int(port)


def dialled(env):
    """(setting, host, port) of each address the settings make a container dial."""
    for name, value in env.items():
        if name == "MASTER" or name.endswith("_ADDR"):
            yield (name, *address(value))
        elif name == "SECONDARIES":
            for secondary in filter(None, value.split(",")):
                yield (name, *address(secondary))
        elif name == "PEERS":
            for peer in filter(None, value.split(",")):
                host, http, grpc = peer.partition("=")[2].rsplit(":", 2)
                yield name, host, int(http)
                yield name, host, int(grpc)
        elif name == "ETCD_ENDPOINTS":
            for endpoint in filter(None, value.split(",")):
                url = urlsplit(endpoint)
                yield name, url.hostname, url.port


class Render:
    """The objects of a rendered overlay, and what its pods see of them."""

    def __init__(self, docs):
        self.docs = docs
        self.by_kind = {}
        for doc in docs:
            self.by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
        # Secrets that a cert-manager Certificate of the render writes.
        self.issued = {c["spec"]["secretName"]: c for c in self.kind("Certificate").values()}

    def kind(self, kind):
        return self.by_kind.get(kind, {})

    def keys(self, kind, name):
        """The keys of a ConfigMap or Secret of the render (or that a Certificate writes), or
        None when there is none of that name."""
        doc = self.kind(kind).get(name)
        if doc is not None:
            return set(doc.get("data", {})) | set(doc.get("stringData", {}))
        if kind == "Secret" and name in self.issued:
            return ISSUED_KEYS
        return None

    def workloads(self):
        """(workload, pod spec) of each Deployment and StatefulSet."""
        for doc in self.docs:
            if doc["kind"] in ("Deployment", "StatefulSet"):
                yield doc, doc["spec"]["template"]["spec"]

    def pods(self):
        """(pod name, labels, pod spec) of each pod the workloads run; a Deployment's pod has
        no stable name (None)."""
        for doc, spec in self.workloads():
            labels = doc["spec"]["template"]["metadata"].get("labels", {})
            if doc["kind"] == "StatefulSet":
                # Each pod also carries its own name as a label, which per-pod Services select.
                name = doc["metadata"]["name"]
                for n in range(doc["spec"].get("replicas", 1)):
                    pod = f"{name}-{n}"
                    yield pod, {**labels, "statefulset.kubernetes.io/pod-name": pod}, spec
            else:
                yield None, labels, spec

    def selected(self, service):
        """(pod name, pod spec) of each pod a Service selects."""
        selector = service["spec"].get("selector", {})
        return [
            (name, spec)
            for name, labels, spec in self.pods()
            if selector and all(labels.get(k) == v for k, v in selector.items())
        ]

    def reached(self, host):
        """(pod specs, ports) that a host name leads to: a Service's pods and its ports (a
        headless one's pods and their container ports), or one StatefulSet pod by
        <pod>.<headless Service> and its container ports; None when the render has no such
        name."""
        service = self.kind("Service").get(host)
        pod, _, governing = host.partition(".")
        if service is not None:
            specs = [spec for _, spec in self.selected(service)]
            if service["spec"].get("clusterIP") != "None":
                return specs, {p["port"] for p in service["spec"]["ports"]}
        else:
            service = self.kind("Service").get(governing)
            if service is None or service["spec"].get("clusterIP") != "None":
                return None
            specs = [spec for name, spec in self.selected(service) if name == pod]
            if not specs:
                return None
        ports = {p["containerPort"] for s in specs for c in s["containers"] for p in c.get("ports", [])}
        return specs, ports

    def environment(self, container):
        """The container's settings as far as the render says: its ConfigMaps (envFrom), then
        its env values."""
        env = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                config_map = self.kind("ConfigMap").get(source["configMapRef"]["name"], {})
                env.update(config_map.get("data", {}))
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
        return env

    def mounts(self, spec, container):
        """{mount path: {file path: (kind, name, key)}} of the container's Secret and
        ConfigMap volumes."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None or volume_source(volume) is None or "subPath" in mount:
                continue
            kind, name, source = volume_source(volume)
            keys = sorted(self.keys(kind, name) or ())
            items = source.get("items") or [{"key": key, "path": key} for key in keys]
            mounts[mount["mountPath"]] = {
                posixpath.join(mount["mountPath"], item["path"]): (kind, name, item["key"])
                for item in items
            }
        return mounts

    def files(self, spec, container):
        """{file path: (kind, name, key)} of the container's Secret and ConfigMap volumes."""
        mounts = self.mounts(spec, container).values()
        return {path: source for files in mounts for path, source in files.items()}

    def certificate_names(self, secret, key):
        """The names the certificate in a Secret's key is for: its PEM's, or those of the
        cert-manager Certificate that writes the Secret."""
        doc = self.kind("Secret").get(secret)
        if doc is not None:
            data = doc.get("data", {}).get(key)
            return subject_alt_names(base64.b64decode(data)) if data else set()
        spec = self.issued[secret]["spec"]
        return set(spec.get("dnsNames", [])) | set(spec.get("ipAddresses", []))

    def tls(self, spec):
        """(Secret, names its certificate is for, serves HTTPS) of each container of a pod
        with a TLS_CERT in a Secret it mounts."""
        for container in spec["containers"]:
            env = self.environment(container)
            source = self.files(spec, container).get(env.get("TLS_CERT"))
            if source is not None and source[0] == "Secret":
                _, secret, key = source
                yield secret, self.certificate_names(secret, key), env.get("PUBLIC_TLS") == "true"


def check_container(render, doc, spec, container, images):
    """The problems of one container of a workload."""
    problems = []
    config_maps, secrets = render.kind("ConfigMap"), render.kind("Secret")
    where = f"{doc['kind']}/{doc['metadata']['name']} container {container['name']}"
    image = container["image"].split(":")[0]
    if image not in images:
        problems.append(f"{where}: image {image} is not built by the compose files ({sorted(images)})")
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
            problems.append(f"{where}: no ConfigMap {source['configMapRef']['name']}")
        if "secretRef" in source and source["secretRef"]["name"] not in secrets:
            problems.append(f"{where}: no Secret {source['secretRef']['name']}")
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if field in ref and ref[field]["key"] not in (render.keys(kind, ref[field]["name"]) or ()):
                problems.append(f"{where}: env {var['name']} reads a missing {kind} key {ref[field]}")

    volumes = {v["name"] for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])}
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes | claims:
            problems.append(f"{where}: mounts volume {mount['name']}, which the pod lacks")
    env = render.environment(container)
    mounts = render.mounts(spec, container)
    files = render.files(spec, container)
    for name, value in env.items():
        inside = [m for m in mounts if value.startswith(m + "/")]
        if (name in FILE_SETTINGS or inside) and value not in files:
            have = sorted(files) or "none"
            problems.append(f"{where}: {name}={value} is not a file of its Secret and ConfigMap mounts ({have})")

    port_names = {p.get("name") for p in container.get("ports", [])}
    port_numbers = {p["containerPort"] for p in container.get("ports", [])}
    scheme = "HTTPS" if env.get("PUBLIC_TLS") == "true" else "HTTP"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            continue
        if get["port"] not in port_names | port_numbers:
            problems.append(f"{where}: {probe} names port {get['port']}, which the container lacks")
        if get.get("scheme", "HTTP") != scheme:
            problems.append(f"{where}: {probe} uses {get.get('scheme', 'HTTP')}, the container serves {scheme} (PUBLIC_TLS)")

    for setting, host, port in dialled(env):
        reached = render.reached(host)
        if reached is None:
            problems.append(f"{where}: {setting} dials {host}, which is no Service or <pod>.<headless Service> of the render")
            continue
        specs, ports = reached
        if port not in ports:
            problems.append(f"{where}: {setting} dials {host}:{port}; {host} has ports {sorted(ports)}")
        # The names this container checks the certificates there for: nginx also checks every
        # node for the one name of "any node".
        names = [host]
        if setting.endswith("_ADDR") and "UPSTREAM_ANY_NAME" in env:
            names.append(env["UPSTREAM_ANY_NAME"])
        for target in specs:
            for _, certificate, _ in render.tls(target):
                for name in names:
                    if not names_host(certificate, name):
                        problems.append(f"{where}: {setting} reaches {host}, whose certificate does not name {name} ({sorted(certificate)})")
    return problems


def check_certificates(render, used):
    """The problems of the cert-manager Certificates and Issuers; `used`: the Secrets nodes
    take their TLS_CERT from."""
    problems = []
    issuers = render.kind("Issuer")
    for name, certificate in render.kind("Certificate").items():
        spec = certificate["spec"]
        issuer = spec["issuerRef"]
        if issuer.get("kind", "Issuer") == "Issuer" and issuer["name"] not in issuers:
            problems.append(f"Certificate/{name}: issued by Issuer {issuer['name']}, which the render lacks")
        missing = {"server auth", "client auth"} - set(spec.get("usages", []))
        if spec["secretName"] in used and missing:
            problems.append(f"Certificate/{name}: nodes present it in mutual TLS, so its usages need {sorted(missing)}")
    for name, issuer in issuers.items():
        ca = issuer["spec"].get("ca")
        if ca is not None and render.keys("Secret", ca["secretName"]) is None:
            problems.append(f"Issuer/{name}: its CA Secret {ca['secretName']} is not in the render")
    return problems


def references(rendered):
    render = Render(load(rendered))
    problems = []
    services = render.kind("Service")
    images = compose_images()

    for doc, spec in render.workloads():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "StatefulSet":
            governing = services.get(doc["spec"]["serviceName"])
            if governing is None or governing["spec"].get("clusterIP") != "None":
                problems.append(f"{where}: serviceName {doc['spec']['serviceName']} is not a headless Service")
        for volume in spec.get("volumes", []):
            if volume_source(volume) is None:
                continue
            kind, name, source = volume_source(volume)
            keys = render.keys(kind, name)
            if keys is None:
                if not source.get("optional"):
                    problems.append(f"{where}: volume {volume['name']} needs {kind} {name}, which the render lacks")
                continue
            for item in source.get("items", []):
                if item["key"] not in keys:
                    problems.append(f"{where}: volume {volume['name']} needs key {item['key']} of {kind} {name} ({sorted(keys)})")
        for container in spec.get("initContainers", []) + spec["containers"]:
            problems += check_container(render, doc, spec, container, images)

    for name, service in services.items():
        selected = render.selected(service)
        if not selected:
            problems.append(f"Service/{name}: selector {service['spec'].get('selector', {})} matches no pod")
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for _, spec in selected:
                have = {
                    p.get("name") if isinstance(target, str) else p["containerPort"]
                    for c in spec["containers"]
                    for p in c.get("ports", [])
                }
                if target not in have:
                    problems.append(f"Service/{name}: targetPort {target} is not a port of the pods it selects")
        if service["spec"].get("clusterIP") == "None":
            continue
        # Clients reach the pods behind a ClusterIP Service by its name.
        for _, spec in selected:
            for _, certificate, public in render.tls(spec):
                if public and not names_host(certificate, name):
                    problems.append(f"Service/{name}: its pods serve HTTPS with a certificate that does not name {name} ({sorted(certificate)})")

    for name, secret in render.kind("Secret").items():
        if secret.get("type") == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in secret.get("data", {}):
                    problems.append(f"Secret/{name}: of type kubernetes.io/tls without {key}")
        for key, value in secret.get("data", {}).items():
            if b"REPLACE-ME" in base64.b64decode(value):
                print(f"check: note: Secret/{name} {key} is still the placeholder: replace it before deploying")

    used = {secret for _, spec in render.workloads() for secret, _, _ in render.tls(spec)}
    problems += check_certificates(render, used)

    if problems:
        # Each once, though several pods or ports may show it.
        for problem in dict.fromkeys(problems):
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
