# -*- test-case-name: tests.test_kubernetes -*-
"""deploy/kubernetes, checked offline: every object against the Kubernetes schemas (kubernetes-validate
--strict), the kustomize rendering, the INI files against voiceedge's own schemas, and the invariants
that tie the manifests to the code (probes, drain, ports, metrics).

What this does not test: nothing here runs a cluster (none can run on this machine). The pods'
behaviour on a real kubelet, the image (registry.example.com/voiceedge is a placeholder), the
pod and node CIDRs in config/, anycast or DNS for the relay VIP, and the custom-metrics adapter
the HPA needs are not tested.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from voiceedge import config as c
from voiceedge.relay.settings import RelayServiceSettings
from voiceedge.signaling.tap import FrontDoorSettings
from voiceedge.transceiver.settings import TransceiverServiceSettings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
ENVIRONMENT = {
    "VOICEEDGE_FLEET_SECRET": "x" * 43,
    "VOICEEDGE_ROUTE_KEYS": "1:Fj+fqFMF8XdTZ0F+RWrNNF6ID/eZ7bX8UP826UB5rR4=",
    "VOICEEDGE_REGION": "eu-west",
    "VOICEEDGE_CLUSTER": "1",
    "VOICEEDGE_RELAY_VIP": "203.0.113.10",
    "POD_IP": "10.244.1.7",
    "POD_NAME": "transceiver-7d9f8c5b6-x2k4q",
    "NODE_IP": "10.0.3.4",
    "NODE_NAME": "node-3",
}


def documents() -> list[dict[str, Any]]:
    """Every object in the manifest files (not the kustomization itself)."""
    objects = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return objects


def by_kind(kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` named ``name``."""
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def container(kind: str, name: str) -> dict[str, Any]:
    """The first container of a workload."""
    return by_kind(kind, name)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


class SchemaTests(SynchronousTestCase):
    """kubernetes-validate --strict, on the files and on what kustomize renders."""

    def validate(self, objects: list[dict[str, Any]]) -> None:
        import kubernetes_validate

        for obj in objects:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                self.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e}")

    def test_every_manifest_is_valid(self) -> None:
        objects = documents()
        self.assertEqual(
            {d["kind"] for d in objects},
            {"Namespace", "Secret", "Service", "StatefulSet", "DaemonSet", "Deployment",
             "HorizontalPodAutoscaler", "PodDisruptionBudget"},
        )
        self.validate(objects)

    def test_the_kustomize_rendering_is_valid(self) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise SkipTest("kubectl (with its built-in kustomize) is not installed: the rendering is not checked")
        rendered = subprocess.run([kubectl, "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True)
        objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        self.validate(objects)
        kinds = sorted(f"{d['kind']}/{d['metadata']['name'].rsplit('-', 1)[0] if d['kind'] == 'ConfigMap' else d['metadata']['name']}" for d in objects)
        self.assertIn("ConfigMap/voiceedge-config", kinds)
        self.assertTrue(all(d["metadata"].get("namespace", "voiceedge") == "voiceedge" for d in objects))
        # The generated ConfigMap carries the INI files, and the workloads mount it by its hashed name.
        configmap = next(d for d in objects if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("voiceedge-config"))
        self.assertEqual(set(configmap["data"]), {"relay.ini", "transceiver.ini", "signaling.ini"})
        mounted = {v["configMap"]["name"] for d in objects if d["kind"] in ("Deployment", "DaemonSet")
                   for v in d["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
        self.assertEqual(mounted, {configmap["metadata"]["name"]})


class ConfigurationTests(SynchronousTestCase):
    """The INI files in deploy/kubernetes/config load, with the environment the pods give them."""

    def test_ini_files_load(self) -> None:
        keys = Path(self.mktemp())
        keys.write_text("k8s sha256:" + "ab" * 32 + "\n")
        environment = {**ENVIRONMENT, "VOICEEDGE_API_KEYS_FILE": str(keys)}
        relay, _ = c.load_settings(RelayServiceSettings, str(DEPLOY / "config/relay.ini"), environ=environment)
        self.assertEqual(relay.relay.ingress, ("203.0.113.10", 3478))
        self.assertTrue(relay.global_hop.directory)
        transceiver, _ = c.load_settings(
            TransceiverServiceSettings, str(DEPLOY / "config/transceiver.ini"), environ=ENVIRONMENT,
            extra={"agent.echo": {}},
        )
        self.assertEqual(transceiver.internal.reachable_at, ("10.244.1.7", 8081))
        self.assertEqual(transceiver.route.address, ("10.244.1.7", 3479))
        self.assertEqual(transceiver.registry.id, "transceiver-7d9f8c5b6-x2k4q")
        front, _ = c.load_settings(FrontDoorSettings, str(DEPLOY / "config/signaling.ini"), environ=environment)
        self.assertFalse(front.signaling.open)
        self.assertGreater(front.signaling.max_calls_per_key, 0)
        self.assertTrue(front.signaling.metrics_listen)
        self.assertEqual(front.fleet.secret, transceiver.internal.secret)
        self.assertEqual(front.redis.sentinels, transceiver.redis.sentinels)
        self.assertEqual(front.redis.sentinels, relay.redis.sentinels)
        self.assertEqual(front.regions[front.fleet.default_region].relay, relay.relay.ingress)

    def test_environment_variables_come_from_the_pods(self) -> None:
        """Every ${NAME} an INI file uses is set in the pods that read it."""
        for workload, kind, ini in (("relay", "DaemonSet", "relay.ini"), ("transceiver", "Deployment", "transceiver.ini"),
                                    ("signaling", "Deployment", "signaling.ini")):
            used = set(re.findall(r"\$\{([A-Z_]+)\}", (DEPLOY / "config" / ini).read_text()))
            spec = container(kind, workload)
            given = {e["name"] for e in spec.get("env", [])}
            if "VOICEEDGE_API_KEYS_FILE" in given:
                volumes = by_kind(kind, workload)["spec"]["template"]["spec"]["volumes"]
                self.assertIn({"name": "api-keys", "secret": {"secretName": "voiceedge-api-keys"}}, volumes)
            for source in spec.get("envFrom", []):
                if "secretRef" in source:
                    given |= set(by_kind("Secret", source["secretRef"]["name"])["stringData"])
                else:
                    given |= {"VOICEEDGE_REGION", "VOICEEDGE_CLUSTER", "VOICEEDGE_RELAY_VIP"}
            self.assertEqual(used - given, set(), workload)


class InvariantTests(SynchronousTestCase):
    """What the manifests promise about the code."""

    def test_transceiver_drain(self) -> None:
        transceiver, _ = c.load_settings(
            TransceiverServiceSettings, str(DEPLOY / "config/transceiver.ini"), environ=ENVIRONMENT,
            extra={"agent.echo": {}},
        )
        pod = by_kind("Deployment", "transceiver")["spec"]["template"]["spec"]
        self.assertGreater(pod["terminationGracePeriodSeconds"], transceiver.drain.grace_period)
        spec = pod["containers"][0]
        self.assertEqual(spec["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(spec["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertIn("voiceedge.fleet.drain_request", spec["lifecycle"]["preStop"]["exec"]["command"])
        ports = {p["containerPort"]: p["protocol"] for p in spec["ports"]}
        self.assertEqual(ports, {3479: "UDP", 8081: "TCP"})

    def test_scaling_on_sessions_not_cpu(self) -> None:
        hpa = by_kind("HorizontalPodAutoscaler", "transceiver")["spec"]
        self.assertEqual([m["type"] for m in hpa["metrics"]], ["Pods"])
        self.assertEqual(hpa["metrics"][0]["pods"]["metric"]["name"], "voiceedge_transceiver_sessions")
        from twisted.internet.task import Clock

        from voiceedge.agents.echo import EchoAgentFactory
        from voiceedge.transceiver.dtls import DtlsCertificate
        from voiceedge.transceiver.host import Transceiver

        transceiver = Transceiver(Clock(), DtlsCertificate.generate(), EchoAgentFactory())
        names = {name for _, name, _, _, _ in transceiver.metrics()}
        self.assertIn("voiceedge_transceiver_sessions", names)

    def test_relay_on_the_host_network(self) -> None:
        pod = by_kind("DaemonSet", "relay")["spec"]["template"]["spec"]
        self.assertTrue(pod["hostNetwork"])
        ports = {(p["containerPort"], p["protocol"]) for p in pod["containers"][0]["ports"]}
        self.assertIn((3478, "UDP"), ports)

    def test_front_door_replicas(self) -> None:
        """More than one front door, since they share their state in Redis; a disruption budget keeps one."""
        self.assertGreater(by_kind("Deployment", "signaling")["spec"]["replicas"], 1)
        self.assertEqual(by_kind("PodDisruptionBudget", "signaling")["spec"]["minAvailable"], 1)
        ports = {p["name"]: p["containerPort"] for p in container("Deployment", "signaling")["ports"]}
        self.assertEqual(ports, {"http": 8080, "metrics": 9464})

    def test_every_pod_is_scraped(self) -> None:
        for kind, name, port in (("DaemonSet", "relay", "9090"), ("Deployment", "transceiver", "8081"),
                                 ("Deployment", "signaling", "9464")):
            annotations = by_kind(kind, name)["spec"]["template"]["metadata"]["annotations"]
            self.assertEqual((annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]), ("true", port))
