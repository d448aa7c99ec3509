"""What can be checked of infra/ without Docker or Kubernetes: YAML, object schemas, entrypoints, install steps.

- every YAML file parses;
- core Kubernetes objects and every pod template validate against the Kubernetes 1.37 OpenAPI schemas bundled
  with ``kubernetes-validate`` (strict: unknown fields fail);
- KubeRay objects have the fields their CRDs require (checked here by hand: the CRD schemas are not packaged);
- every job entrypoint names a real job whose argument parser accepts its flags;
- the Dockerfile installs with the same script as the README quickstart.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_VERSION = "1.37.0"
KUBERAY_API = "ray.io/v1"


def k8s_objects():
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                yield path.name, doc


def settings_env() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / "k8s" / "settings.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_entrypoint(entrypoint: str) -> tuple[str, list[str]]:
    """``python jobs/x.py --a ${VAR}`` -> ("x", argv) with variables from settings.env substituted."""
    env = settings_env()
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], entrypoint)
    words = shlex.split(expanded)
    assert words[0] == "python" and words[1].startswith("jobs/"), entrypoint
    return Path(words[1]).stem, words[2:]


def pod_templates(spec: dict):
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def test_every_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert files
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_kustomization_lists_existing_files():
    kustomization = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (INFRA / "k8s" / resource).exists(), resource
    for generator in kustomization.get("configMapGenerator", []):
        for env_file in generator["envs"]:
            assert (INFRA / "k8s" / env_file).exists(), env_file
    assert (INFRA / "k8s" / "s3-credentials.env.example").exists()
    secrets = {generator["name"]: generator["envs"] for generator in kustomization["secretGenerator"]}
    assert set(secrets) == {"dcm-s3-credentials", "dcm-ray-auth"}
    for env_file in ["s3-credentials.env", "ray-auth.env"]:
        assert (INFRA / "k8s" / f"{env_file}.example").exists(), f"{env_file}.example shows what {env_file} holds"


def test_ray_token_authentication_is_on():
    assert settings_env()["RAY_AUTH_MODE"] == "token"
    example = (INFRA / "k8s" / "ray-auth.env.example").read_text()
    assert re.search(r"^RAY_AUTH_TOKEN=", example, re.M)
    ignored = (INFRA / "k8s" / ".gitignore").read_text().split()
    assert "ray-auth.env" in ignored, "the real token file must never be committed"
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for name in ["ray-head", "ray-worker"]:
        environment = compose["services"][name]["environment"]
        settings = environment if isinstance(environment, dict) else dict(e.split("=", 1) for e in environment)
        assert settings["RAY_AUTH_MODE"] == "token", name
        assert "RAY_AUTH_TOKEN" in settings, f"{name}: the token comes from the shell"


def test_core_objects_and_pod_templates_validate_against_kubernetes_schemas():
    checked = 0
    for _name, obj in k8s_objects():
        if obj["apiVersion"] == KUBERAY_API:
            for group, template in pod_templates(obj["spec"]):
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": group},
                    "template": template,
                }
                kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
                checked += 1
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 4


def test_kuberay_objects_have_required_fields():
    kinds = {}
    for name, obj in k8s_objects():
        if obj["apiVersion"] != KUBERAY_API:
            continue
        kinds[obj["kind"]] = obj
        spec = obj["spec"]
        cluster = spec["rayClusterSpec"] if obj["kind"] == "RayJob" else spec["rayClusterConfig"]
        assert cluster["rayVersion"] == "2.60.0", name
        assert "template" in cluster["headGroupSpec"], name
        for group in cluster["workerGroupSpecs"]:
            assert {"groupName", "replicas", "template"} <= set(group), (name, group.get("groupName"))
            assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])
        for _, template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                assert container["image"] == "dcm-platform"  # set in one place: kustomization images
                assert container["resources"]["limits"], name
                secrets = [ref["secretRef"]["name"] for ref in container.get("envFrom", []) if "secretRef" in ref]
                assert "dcm-s3-credentials" in secrets, f"{name}: S3 credentials come from their Secret"
                assert "dcm-ray-auth" in secrets, f"{name}: every Ray node needs the cluster's auth token"
        if obj["kind"] == "RayJob":
            assert spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
            assert spec["ttlSecondsAfterFinished"] >= 0
    assert set(kinds) >= {"RayJob"}


def test_no_inline_credentials():
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != "s3-credentials.env.example":
            text = path.read_text()
            assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*[A-Za-z0-9/+]{16,}", text), path


def test_rayjob_entrypoints_are_accepted_by_the_jobs_parsers():
    seen = []
    for _name, obj in k8s_objects():
        if obj["kind"] == "RayJob":
            job, argv = parse_entrypoint(obj["spec"]["entrypoint"])
            load_job(job).parse_args(argv)  # raises SystemExit on an unknown or malformed flag
            seen.append(job)
    assert sorted(seen) == ["batch_generate", "distill"]


def test_compose_stack():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"minio", "minio-init", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    build = services["ray-head"]["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).resolve().exists()
    assert "mc mb" in " ".join(services["minio-init"]["command"])


def test_dockerfile_installs_like_the_readme():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh" in readme
    run_lines = [line for line in dockerfile.splitlines() if line.startswith("RUN")]
    assert any("bash scripts/setup.sh" in line for line in run_lines)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "the image runs as a non-root user"
    assert (ROOT / ".dockerignore").exists()


def test_serve_config_is_a_valid_serve_schema_and_matches_the_rayservice():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((INFRA / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert [a.import_path for a in schema.applications] == ["serve.app:app_builder"]
    service = next(obj for _, obj in k8s_objects() if obj["kind"] == "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded["applications"] == config["applications"]


def test_serve_config_args_build_the_application():
    from serve.app import app_builder

    config = yaml.safe_load((INFRA / "serve_config.yaml").read_text())
    app = app_builder(config["applications"][0]["args"])  # raises on unknown or malformed settings
    assert type(app).__name__ == "Application"
