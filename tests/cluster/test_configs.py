"""The cluster configs as given: cluster/gcp-*.yaml against Ray's own cluster schema, the
RayJob against the KubeRay CRD fields it uses, one list of placeholders, the image and the
[gcp] extra. Offline and fast: nothing here starts Ray or reaches a cloud."""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
GCP = sorted(CLUSTER.glob("gcp-*.yaml"))
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
PLACEHOLDER = re.compile(r"YOUR_[A-Z]+")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def listed_placeholders() -> set[str]:
    """The one list: the bullets of cluster/README.md's "Placeholders" section."""
    section = (CLUSTER / "README.md").read_text().split("## Placeholders", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `(YOUR_[A-Z]+)`", section, re.M))


def stray_placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text)) - listed_placeholders()


def test_gcp_configs_exist():
    assert [p.name for p in GCP] == ["gcp-gpu.yaml", "gcp-tpu.yaml"]


# --- placeholders: one short list, nothing else ------------------------------------------

def test_placeholders_are_one_short_list():
    assert listed_placeholders() == {"YOUR_PROJECT", "YOUR_BUCKET", "YOUR_REGISTRY"}
    assert stray_placeholders("email: YOUR_SA@YOUR_PROJECT.iam") == {"YOUR_SA"}  # the check bites


@pytest.mark.parametrize("path", sorted(p for d in ("cluster", "sweeps") for p in (ROOT / d).iterdir()),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_only_listed_placeholders(path):
    assert not stray_placeholders(path.read_text()), f"{path.name}: not in cluster/README.md's list"


def test_every_listed_placeholder_is_used():
    used = set()
    for d in ("cluster", "sweeps"):
        for p in (ROOT / d).iterdir():
            if p.name != "README.md":
                used |= set(PLACEHOLDER.findall(p.read_text()))
    assert used == listed_placeholders()


def test_top_readme_points_at_the_list():
    section = (ROOT / "README.md").read_text().split("### On a cluster", 1)[1].split("\n### ", 1)[0]
    assert "cluster/README.md" in section
    assert not stray_placeholders(section)


# --- GCP (Ray autoscaler) ----------------------------------------------------------------

@pytest.mark.parametrize("path", GCP, ids=lambda p: p.name)
def test_gcp_config_valid_for_ray(path):
    config = load(path)
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(config))  # `ray up`'s own check, after filling in defaults


@pytest.mark.parametrize("edit", [
    lambda c: c["available_node_types"]["head"].update(min_worker=0),    # a typo'd field
    lambda c: c["docker"].update(env={"RAY_AUTH_MODE": "token"}),        # not a docker field
    lambda c: c.update(max_workers="eight"),                             # a wrong type
], ids=["node-type-field", "docker-field", "type"])
def test_ray_schema_rejects_a_wrong_field(edit):
    config = copy.deepcopy(load(CLUSTER / "gcp-gpu.yaml"))
    edit(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def ray_starts(config: dict) -> list[list[str]]:
    cmds = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [shlex.split(c) for c in cmds if "ray start" in c]


def option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name:
            return argv[i + 1]
    return None


@pytest.mark.parametrize("path", GCP, ids=lambda p: p.name)
def test_gcp_dashboard_on_loopback(path):
    starts = ray_starts(load(path))
    heads = [argv for argv in starts if "--head" in argv]
    assert len(heads) == 1 and option(heads[0], "--dashboard-host") == "127.0.0.1"
    assert "0.0.0.0" not in path.read_text()
    assert f"ray dashboard cluster/{path.name}" in path.read_text()  # the port-forward, in the header
    assert "ray dashboard cluster/gcp-" in (CLUSTER / "README.md").read_text()


@pytest.mark.parametrize("path", GCP, ids=lambda p: p.name)
def test_gcp_token_auth(path):
    from ray._private.authentication.authentication_token_setup import (
        AUTH_MODE_ENV_VAR, _get_default_token_path)

    config = load(path)
    # every container (ray start, `ray exec` shells, job drivers) gets the mode ...
    argv = shlex.split(" ".join(config["docker"]["run_options"]))
    env = [argv[i + 1] for i, a in enumerate(argv) if a in ("--env", "-e")]
    assert f"{AUTH_MODE_ENV_VAR}=token" in env
    # ... and the token, at the path Ray reads by default, from the same path here
    default = "~/" + str(_get_default_token_path().relative_to(Path.home()))
    assert config["file_mounts"] == {default: default}
    assert "ray get-auth-token --generate" in path.read_text()


@pytest.mark.parametrize("path", GCP, ids=lambda p: p.name)
def test_gcp_plasma_preallocated_and_no_jax_memory_vars(path):
    for argv in ray_starts(load(path)):
        assert argv[0] == "RAY_preallocate_plasma_memory=1", argv
    assert "XLA_PYTHON_CLIENT" not in path.read_text()  # the trial sets its own fraction


@pytest.mark.parametrize("path", GCP, ids=lambda p: p.name)
def test_gcp_images_are_the_dockerfile_builds(path):
    docker = load(path)["docker"]
    builds = dockerfile_builds()
    want = {"gcp-gpu.yaml": "cuda12", "gcp-tpu.yaml": "tpu"}[path.name]
    assert builds[image_tag(docker["image"])] == "cpu"           # the head
    assert builds[image_tag(docker["worker_image"])] == want
    assert not any("docker" in t for t in load(path)["available_node_types"].values())  # no overrides


def test_gcp_extra_named_for_ray_up():
    for path in [*GCP, ROOT / "README.md", CLUSTER / "README.md"]:
        assert 'pip install "raysae[gcp]"' in path.read_text(), path.name


# --- KubeRay -----------------------------------------------------------------------------

# The fields of the ray.io/v1 RayJob CRD (KubeRay v1.6.2, ray-operator/config/crd/bases/
# ray.io_rayjobs.yaml) at the levels this config sets; authOptions.secretName needs >= 1.6.0.
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
               "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
               "jobId", "managedBy", "metadata", "preRunningDeadlineSeconds", "rayClusterSpec",
               "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
               "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
RAYCLUSTER_SPEC = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "headServiceAnnotations",
                   "managedBy", "rayVersion", "suspend", "upgradeStrategy", "workerGroupSpecs"}
HEAD_GROUP = {"enableIngress", "headService", "labels", "rayStartParams", "resources",
              "serviceType", "template"}
WORKER_GROUP = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas",
                "numOfHosts", "rayStartParams", "replicas", "resources", "scaleStrategy",
                "suspend", "template"}
WORKER_GROUP_REQUIRED = {"groupName", "maxReplicas", "minReplicas", "template"}
AUTH_OPTIONS = {"enableK8sTokenAuth", "mode", "secretName"}
AUTOSCALER_OPTIONS = {"env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy",
                      "resources", "securityContext", "upscalingMode", "version", "volumeMounts"}


def check_rayjob(job: dict) -> None:
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"]
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC, set(cluster) - RAYCLUSTER_SPEC
    assert cluster["enableInTreeAutoscaling"] is True
    assert set(cluster.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS
    assert set(cluster["authOptions"]) <= AUTH_OPTIONS
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP and "template" in head
    groups = cluster["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert set(g) <= WORKER_GROUP and WORKER_GROUP_REQUIRED <= set(g), g["groupName"]
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert g["maxReplicas"] > 0, f"{g['groupName']}: no worker can ever start"


def containers(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    out = [("head", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for g in cluster["workerGroupSpecs"]:
        out += [(g["groupName"], c) for c in g["template"]["spec"]["containers"]]
    return out


def test_rayjob_fields():
    check_rayjob(load(RAYJOB))


@pytest.mark.parametrize("edit", [
    lambda s: s["rayClusterSpec"].pop("enableInTreeAutoscaling"),
    lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas=0),
    lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=99),
    lambda s: s.update(backofLimit=2),                                          # a typo'd field
    lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplica=8),  # a typo'd field
], ids=["no-autoscaling", "max-0", "replicas-above-max", "spec-field", "group-field"])
def test_rayjob_check_rejects(edit):
    job = copy.deepcopy(load(RAYJOB))
    edit(job["spec"])
    with pytest.raises((AssertionError, KeyError)):
        check_rayjob(job)


def test_rayjob_resumes_the_sweep_from_the_image():
    entry = shlex.split(load(RAYJOB)["spec"]["entrypoint"])
    assert entry[:2] == ["raysae", "sweep"] and "--resume-if-exists" in entry
    # the sweep file as the image holds it: the Dockerfile's WORKDIR + this repo's sweeps/
    workdir = dockerfile_instruction("WORKDIR")[0]
    assert "COPY --chown=1000:100 sweeps/ sweeps/" in DOCKERFILE.read_text()
    rel = Path(entry[2]).relative_to(workdir)
    assert rel.parts[0] == "sweeps" and (ROOT / rel).is_file(), rel


def test_rayjob_token_auth_and_dashboard():
    job = load(RAYJOB)
    cluster = job["spec"]["rayClusterSpec"]
    # KubeRay >= 1.5.1 sets RAY_AUTH_MODE/RAY_AUTH_TOKEN on every Ray container and the
    # submitter from authOptions; it needs rayVersion >= 2.52 to do so.
    assert cluster["authOptions"]["mode"] == "token"
    assert Version(cluster["rayVersion"]) >= Version("2.52")
    secret = cluster["authOptions"]["secretName"]
    assert f"kubectl create secret generic {secret} --from-literal=auth_token=" in RAYJOB.read_text()
    # Not loopback: the operator and the K8sJobMode submitter Pod call the dashboard through
    # the head Service (ray-operator/controllers/ray/common/job.go, utils.FetchHeadServiceURL).
    host = cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"]
    assert host not in ("127.0.0.1", "localhost")
    assert job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"
    # the port-forward: KubeRay names a RayJob's head Service <RayJob name>-head-svc
    forward = f"kubectl port-forward svc/{job['metadata']['name']}-head-svc 8265:8265"
    assert forward in RAYJOB.read_text() and forward in (CLUSTER / "README.md").read_text()


def test_rayjob_images_and_env():
    job = load(RAYJOB)
    builds = dockerfile_builds()
    for group, c in containers(job):
        limits = c.get("resources", {}).get("limits", {})
        want = "cuda12" if "nvidia.com/gpu" in limits else "tpu" if "google.com/tpu" in limits else "cpu"
        assert builds[image_tag(c["image"])] == want, (group, c["image"])
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("RAY_preallocate_plasma_memory") == "1", group
        assert not any(k.startswith("XLA_PYTHON_CLIENT") for k in env), group
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


# --- the image ---------------------------------------------------------------------------

def dockerfile_instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.read_text().splitlines()
            if line.startswith(name + " ")]


def dockerfile_builds() -> dict[str, str]:
    """tag -> the JAX build arg, from the build commands in the Dockerfile's header."""
    default = dict(a.split("=", 1) for a in dockerfile_instruction("ARG") if "=" in a)["JAX"]
    builds = {}
    for m in re.finditer(r"docker build -f cluster/Dockerfile (?:--build-arg JAX=(\S+) )?"
                         r"-t YOUR_REGISTRY/raysae:(\S+) \.", DOCKERFILE.read_text()):
        builds[m.group(2)] = m.group(1) or default
    return builds


def image_tag(image: str) -> str:
    repo, tag = image.rsplit(":", 1)
    assert repo == "YOUR_REGISTRY/raysae", image
    return tag


def test_dockerfile_builds_one_image_per_accelerator():
    assert dockerfile_builds() == {"latest": "cpu", "latest-cuda": "cuda12", "latest-tpu": "tpu"}
    jax_extras = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    assert set(dockerfile_builds().values()) <= jax_extras
    (pushed,) = re.findall(r"for t in ([\w -]+); do docker push YOUR_REGISTRY/raysae:\$t; done",
                           DOCKERFILE.read_text())
    assert set(pushed.split()) == set(dockerfile_builds())


def test_dockerfile_base_is_this_ray_and_python():
    args = dict(a.split("=", 1) for a in dockerfile_instruction("ARG") if "=" in a)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert args["RAY_IMAGE"] == f"rayproject/ray:{ray.__version__}-{py}"
    assert dockerfile_instruction("FROM") == ["${RAY_IMAGE}"]


def test_dockerfile_installs_existing_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (run,) = [r for r in dockerfile_instruction("RUN") if "pip install" in r]
    argv = shlex.split(run)
    local = [a for a in argv if a.startswith(".[")]
    assert len(local) == 1
    extras = set(local[0][2:-1].split(","))
    assert "gcp" in extras  # the head's autoscaler runs Ray's GCP node provider
    assert extras <= set(project["optional-dependencies"]), extras - set(project["optional-dependencies"])
    for src in dockerfile_instruction("COPY"):
        path = shlex.split(src)[-2]  # COPY --chown=... SRC DEST
        assert (ROOT / path).exists(), path


# --- the [gcp] extra: what Ray's GCP node provider imports -------------------------------

# Module -> the distribution that provides it. googleapiclient's is also the name Ray's own
# ImportError message gives (checked below); the others are checked against what is installed.
PROVIDES = {"googleapiclient": "google-api-python-client", "google_auth_httplib2": "google-auth-httplib2",
            "httplib2": "httplib2", "google.oauth2": "google-auth", "cryptography": "cryptography"}


def ray_gcp_imports() -> set[str]:
    from ray.autoscaler._private import util

    gcp = Path(ray.autoscaler.__file__).parent / "_private" / "gcp"
    sources = [p.read_text() for p in sorted(gcp.glob("*.py"))]
    sources.append(inspect.getsource(util.generate_rsa_key_pair))  # the SSH key `ray up` makes
    mods = set()
    for src in sources:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                mods |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods.add(node.module)
    out = set()
    for m in mods:
        top = m.split(".")[0]
        if top in sys.stdlib_module_names or top == "ray":
            continue
        out.add(".".join(m.split(".")[:2]) if top == "google" else top)
    return out


def test_gcp_extra_provides_rays_gcp_imports():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gcp"]
    names = {canonicalize_name(Requirement(r).name) for r in extra}
    imports = ray_gcp_imports()
    assert "googleapiclient" in imports
    missing = imports - set(PROVIDES)
    assert not missing, f"Ray's GCP provider imports {missing}: add its package to [gcp] and PROVIDES"
    for mod in imports:
        assert canonicalize_name(PROVIDES[mod]) in names, f"[gcp] lacks {PROVIDES[mod]} ({mod})"


def test_gcp_module_names_match_their_packages():
    from ray.autoscaler._private import providers

    assert "pip install google-api-python-client" in inspect.getsource(providers._import_gcp)
    installed = importlib.metadata.packages_distributions()
    for mod, dist in PROVIDES.items():
        top = mod.split(".")[0]
        if top in installed and mod != "googleapiclient":
            assert canonicalize_name(dist) in {canonicalize_name(d) for d in installed[top]}, mod


# --- how a client gets the token (README) ------------------------------------------------

def test_client_sends_the_token_with_auth_mode_token(tmp_path):
    """`ray job submit` (the dashboard SDK) adds the token only when RAY_AUTH_MODE=token,
    from RAY_AUTH_TOKEN or else ~/.ray/auth_token: what cluster/README.md says."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("filetoken" * 4)
    code = ("from ray._private.authentication.http_token_authentication import "
            "get_auth_headers_if_auth_enabled as h; print(h({}).get('authorization'))")

    def header(**env):
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        out = subprocess.run([sys.executable, "-c", code], env={**base, "HOME": str(tmp_path), **env},
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip().splitlines()[-1]

    assert header(RAY_AUTH_MODE="token") == "Bearer " + "filetoken" * 4
    assert header(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="envtoken" * 4) == "Bearer " + "envtoken" * 4
    assert header() == "None"
    readme = (CLUSTER / "README.md").read_text()
    assert "RAY_AUTH_MODE=token" in readme and "RAY_AUTH_TOKEN" in readme and "~/.ray/auth_token" in readme
