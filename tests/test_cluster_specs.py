"""The cluster specs under cluster/: every YAML parses; the Ray autoscaler spec passes Ray's own schema (as `ray up`
checks it); the KubeRay manifests pass the KubeRay CRD schemas vendored in tests/fixtures/kuberay (see its README)
plus a pruning check for fields Kubernetes would silently drop; the specs agree with the config they run and with
cluster/submit.sh. Offline, no cluster, a few seconds."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kuberay"
AUTOSCALER = CLUSTER / "autoscaler.yaml"
CONFIG = "pipelines/configs/alfworld_qwen2.5_7b.yaml"
CRD_SCHEMAS = {"RayCluster": "raycluster.schema.json", "RayJob": "rayjob.schema.json"}
PRUNED = "x-skill1-pruned"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently; kubectl refuses)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_docs(path: Path) -> list:
    return [d for d in yaml.load_all(path.read_text(), Loader=_StrictLoader) if d is not None]


def load_one(path: Path) -> dict:
    (doc,) = load_docs(path)
    return doc


def crd_schema(kind: str) -> dict:
    return json.loads((FIXTURES / CRD_SCHEMAS[kind]).read_text())


def schema_errors(doc, schema) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc))


def pruning_errors(value, schema: dict, path: str = "") -> list[str]:
    """What Kubernetes' structural pruning would drop from `value`, plus what the vendored schema cannot judge.

    A CRD schema does not forbid unknown fields; the API server removes them without a word, so a misspelt field
    passes validation and is simply gone. Reported here: every field not declared by `properties` (unless
    `additionalProperties` or `x-kubernetes-preserve-unknown-fields` admits it), every field set under a subschema
    that was not vendored (`x-skill1-pruned`), and duplicate keys in `x-kubernetes-list-type: map` lists."""
    if schema.get(PRUNED):
        return [f"{path}: set, but its schema was not vendored (tests/fixtures/kuberay/README.md)"]
    out = []
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, sub in value.items():
            where = f"{path}.{key}" if path else key
            if not path and key == "metadata":
                continue  # ObjectMeta: the API server's own type (checked in test_manifest_metadata)
            if key in props:
                out += pruning_errors(sub, props[key], where)
            elif isinstance(extra, dict):
                out += pruning_errors(sub, extra, where)
            elif not (extra is True or schema.get("x-kubernetes-preserve-unknown-fields")):
                out.append(f"{where}: unknown field, Kubernetes would drop it")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            defaults = {k: items.get("properties", {}).get(k, {}).get("default") for k in keys}
            seen = set()
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    ident = tuple(item.get(k, defaults[k]) for k in keys)
                    if ident in seen:
                        out.append(f"{path}[{i}]: duplicate {dict(zip(keys, ident))} in a list keyed by {keys}")
                    seen.add(ident)
        for i, item in enumerate(value):
            out += pruning_errors(item, items, f"{path}[{i}]")
    return out


def manifest_problems(doc: dict) -> list[str]:
    schema = crd_schema(doc["kind"])
    return schema_errors(doc, schema) + pruning_errors(doc, schema)


def ray_cluster_specs() -> list[dict]:
    """raycluster.yaml's spec, rayjob.yaml's rayClusterSpec."""
    return [load_one(KUBERAY / "raycluster.yaml")["spec"], load_one(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"]]


def pods(spec: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) of the head and each worker group of a RayClusterSpec."""
    return [("head", spec["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]


def cpus(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def train_command(entrypoint: str) -> tuple[str, list[str]]:
    """`python pipelines/train.py --config PATH k=v ...` → (PATH, overrides)."""
    argv = [a for a in shlex.split(entrypoint) if a != "--auto-resume"]  # a retried job resumes its run
    assert argv[:3] == ["python", "pipelines/train.py", "--config"], argv
    return argv[3], argv[4:]


def submit_sh_runtime_env() -> dict:
    """The runtime_env cluster/submit.sh ships with the job: cluster/runtime_env.yaml."""
    assert "--runtime-env cluster/runtime_env.yaml" in (CLUSTER / "submit.sh").read_text()
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


def placement_need() -> tuple[float, float]:
    """(GPUs, CPUs) of the config's placement group: samplers + learner ranks, all on the GPU node."""
    from skill1.config import load_config

    r, lc = (cfg := load_config(ROOT / CONFIG)).rollout, cfg.learner
    return (r.num_samplers * r.num_gpus_per_sampler + lc.num_ranks * lc.num_gpus,
            r.num_samplers * r.num_cpus_per_sampler + lc.num_ranks * lc.num_cpus)


# --- (a) every YAML under cluster/ parses ------------------------------------------------------------------------

ALL_YAML = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])


def test_cluster_specs_present():
    names = {str(p.relative_to(CLUSTER)) for p in ALL_YAML}
    assert {"autoscaler.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/pvc.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: expected one or more mappings"


def test_strict_loader_rejects_duplicate_keys():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'replicas'"):
        yaml.load("replicas: 1\nreplicas: 2\n", Loader=_StrictLoader)


# --- (b) the Ray autoscaler spec against Ray's schema -------------------------------------------------------------


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_autoscaler_yaml_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_one(AUTOSCALER)
    assert schema_errors(config, ray_schema()) == []  # the file as written (the schema forbids unknown keys)
    # what `ray up` does before it contacts AWS: merge the provider's defaults, then Ray's own validation
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(max_worker=c.pop("max_workers")), "Additional properties are not allowed ('max_worker'"),
    (lambda c: c["available_node_types"]["gpu"].update(resources={"GPU": "8"}), "'8' is not of type 'integer'"),
    (lambda c: c["available_node_types"]["cpu"].update(min_worker=0), "Additional properties are not allowed"),
], ids=["misspelt-top-level-key", "string-resource", "misspelt-node-type-key"])
def test_ray_schema_catches_mistakes(mutate, expected):
    config = load_one(AUTOSCALER)
    mutate(config)
    assert any(expected in e for e in schema_errors(config, ray_schema()))


def test_autoscaler_yaml_fits_the_config():
    gpus, pg_cpus = placement_need()
    config = load_one(AUTOSCALER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head runs the driver and the dashboard only"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert any(t["resources"]["GPU"] >= gpus and t["resources"]["CPU"] >= pg_cpus and t.get("min_workers", 0) >= 1
               for t in gpu_types), f"no always-on node type with {gpus} GPUs and {pg_cpus} CPUs"
    cpu_types = [t for t in types.values() if t is not head and not t["resources"].get("GPU")]
    assert cpu_types and all(t.get("min_workers", 0) == 0 and t["max_workers"] >= 1 for t in cpu_types)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    assert any('scripts/setup_gpu.sh' in c for c in config["setup_commands"])  # constraints-gpu.txt's pins
    assert config["rsync_exclude"] == submit_sh_runtime_env()["excludes"]
    assert any("/mnt/skill1:/mnt/skill1" in o for o in config["docker"]["run_options"])
    import ray  # the cluster's Ray must be the one pinned here (cluster/submit.sh talks to it from this venv)

    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")


# --- (c) the KubeRay manifests against the CRD schemas ------------------------------------------------------------


@pytest.mark.parametrize("name", ["raycluster.schema.json", "rayjob.schema.json"])
def test_vendored_crd_schemas_are_valid_json_schema(name):
    schema = json.loads((FIXTURES / name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert "ray.io_ray" in schema["$comment"] and re.search(r"@ [0-9a-f]{40}", schema["$comment"])


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest_passes_crd_schema(name, kind):
    doc = load_one(KUBERAY / name)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", kind)
    assert manifest_problems(doc) == []


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_manifest_metadata(name):
    meta = load_one(KUBERAY / name)["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}
    # KubeRay derives Service names from it: a DNS-1035 label, with room for "-head-svc" and a suffix
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 40


def _head(doc):
    return doc["spec"]["headGroupSpec"]


def _head_container(doc):
    return _head(doc)["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("mutate, expected", [
    # unknown fields: valid to the schema, dropped by Kubernetes; only the pruning check sees them
    (lambda d: _head(d).update(rayStartParam=_head(d).pop("rayStartParams")),
     "spec.headGroupSpec.rayStartParam: unknown field"),
    (lambda d: _head_container(d).update(volumeMount=_head_container(d).pop("volumeMounts")),
     "spec.headGroupSpec.template.spec.containers[0].volumeMount: unknown field"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplica=1),
     "spec.workerGroupSpecs[0].minReplica: unknown field"),
    # wrong types, missing required fields: the schema itself
    (lambda d: _head(d)["rayStartParams"].update({"num-cpus": 0}),
     "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="1"),
     "spec.workerGroupSpecs.0.replicas: '1' is not of type 'integer'"),
    (lambda d: d["spec"]["workerGroupSpecs"][1].pop("groupName"),
     "spec.workerGroupSpecs.1: 'groupName' is a required property"),
    (lambda d: _head_container(d)["resources"]["limits"].update(memory="32 GiB"),
     "spec.headGroupSpec.template.spec.containers.0.resources.limits.memory: '32 GiB' does not match"),
    (lambda d: d["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),
     "spec.autoscalerOptions.upscalingMode: 'Fast' is not one of"),
    # list-map keys and fields whose schema was not vendored
    (lambda d: _head_container(d)["env"].append({"name": "ALFWORLD_DATA", "value": "/elsewhere"}),
     "spec.headGroupSpec.template.spec.containers[0].env[2]: duplicate {'name': 'ALFWORLD_DATA'}"),
    (lambda d: _head(d)["template"]["spec"].update(affinity={"nodeAffinity": {}}),
     "spec.headGroupSpec.template.spec.affinity: set, but its schema was not vendored"),
], ids=["rayStartParam", "volumeMount", "minReplica", "int-rayStartParam", "string-replicas", "no-groupName",
        "bad-quantity", "bad-enum", "duplicate-env", "unvendored-affinity"])
def test_crd_checks_catch_mistakes_in_raycluster(mutate, expected):
    doc = load_one(KUBERAY / "raycluster.yaml")
    mutate(doc)
    problems = manifest_problems(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_unknown_field_passes_plain_schema_validation():
    """Why the pruning check exists: OpenAPI CRD schemas allow unknown fields, Kubernetes drops them."""
    doc = load_one(KUBERAY / "raycluster.yaml")
    _head(doc)["rayStartParam"] = _head(doc).pop("rayStartParams")
    assert schema_errors(doc, crd_schema("RayCluster")) == []
    assert pruning_errors(doc, crd_schema("RayCluster")) != []


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s.update(shutdownAfterJobFinish=s.pop("shutdownAfterJobFinishes")),
     "spec.shutdownAfterJobFinish: unknown field"),
    (lambda s: s.update(runtimeEnv=s.pop("runtimeEnvYAML")), "spec.runtimeEnv: unknown field"),
    (lambda s: s.update(ttlSecondsAfterFinished="300"), "spec.ttlSecondsAfterFinished: '300' is not of type"),
    (lambda s: s["rayClusterSpec"]["headGroupSpec"].pop("template"),
     "spec.rayClusterSpec.headGroupSpec: 'template' is a required property"),
], ids=["shutdownAfterJobFinish", "runtimeEnv", "string-ttl", "no-head-template"])
def test_crd_checks_catch_mistakes_in_rayjob(mutate, expected):
    doc = load_one(KUBERAY / "rayjob.yaml")
    mutate(doc["spec"])
    problems = manifest_problems(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_rayjob_runs_the_raycluster_spec():
    cluster, job = ray_cluster_specs()
    assert job == cluster, "rayjob.yaml's rayClusterSpec must stay a copy of raycluster.yaml's spec"


@pytest.mark.parametrize("which", [0, 1], ids=["raycluster.yaml", "rayjob.yaml"])
def test_ray_cluster_spec_fits_the_config(which):
    spec = ray_cluster_specs()[which]
    gpus, pg_cpus = placement_need()
    head = spec["headGroupSpec"]
    # 0.0.0.0 inside the pod is acceptable only because the head Service stays inside the cluster
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0" and head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_limits = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"] for name, g in groups.items()}
    gpu_groups = [n for n, lim in gpu_limits.items() if int(lim.get("nvidia.com/gpu", 0)) > 0]
    assert len(gpu_groups) == 1
    g = groups[gpu_groups[0]]
    assert int(gpu_limits[g["groupName"]]["nvidia.com/gpu"]) == gpus == 8
    assert cpus(gpu_limits[g["groupName"]]["cpu"]) >= pg_cpus
    assert g["minReplicas"] == g["replicas"] == g["maxReplicas"] == 1
    cpu_groups = [groups[n] for n in groups if n not in gpu_groups]
    assert cpu_groups and all(c["minReplicas"] == 0 < c["maxReplicas"] for c in cpu_groups)
    assert spec["enableInTreeAutoscaling"] is True
    import ray

    assert spec["rayVersion"] == ray.__version__
    # one image everywhere (Ray needs matching versions), the shared volume on every pod at one path
    images, mounts = set(), set()
    claim = load_one(KUBERAY / "pvc.yaml")["metadata"]["name"]
    for name, pod in pods(spec):
        (container,) = pod["containers"]
        images.add(container["image"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        shared = [v for v in volumes.values() if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        assert len(shared) == 1, f"{name}: no volume from PVC {claim}"
        mounts |= {m["mountPath"] for m in container["volumeMounts"] if m["name"] == shared[0]["name"]}
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", f"{name}: no /dev/shm"
        assert {v["name"] for v in pod["volumes"]} >= {m["name"] for m in container["volumeMounts"]}
    assert len(images) == 1 and mounts == {"/mnt/skill1"}


def test_pvc_is_shared_storage():
    pvc = load_one(KUBERAY / "pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]


# --- (d) the RayJob runs a config that exists, with overrides that load -------------------------------------------


def test_rayjob_entrypoint_runs_an_existing_config():
    from skill1.config import load_config

    spec = load_one(KUBERAY / "rayjob.yaml")["spec"]
    path, overrides = train_command(spec["entrypoint"])
    assert path == CONFIG
    assert (ROOT / path).is_file(), f"the RayJob's config {path} is not in the repo"
    cfg = load_config(ROOT / path, overrides)  # every override names a real key with a valid value
    assert cfg.output_dir == "/mnt/skill1/runs"
    assert cfg.model.path == "/mnt/skill1/models/Qwen2.5-7B-Instruct"


def test_rayjob_runtime_env_matches_submit_sh():
    spec = load_one(KUBERAY / "rayjob.yaml")["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    submit = submit_sh_runtime_env()
    assert runtime_env["env_vars"] == submit["env_vars"]
    assert submit["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert int(submit["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60  # time to checkpoint on SIGTERM
    assert runtime_env["excludes"] == submit["excludes"]
    assert runtime_env["working_dir"].startswith("/")  # the repo's copy in the image, shipped by the submitter
    # retries are safe: the entry point resumes the run from its checkpoint
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert "--auto-resume" in spec["entrypoint"]


# --- (e) nothing listens unauthenticated, no secret in plain text ------------------------------------------------

SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.I)  # not TOKENIZERS_
RAY_AUTH_VARS = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}


def container_envs(spec: dict) -> list[tuple[str, dict]]:
    """(where, env entry) for every container of a RayClusterSpec, and the autoscaler sidecar's env."""
    out = [(f"{name}/{c['name']}", e) for name, pod in pods(spec) for c in pod["containers"] for e in c.get("env", [])]
    return out + [("autoscaler", e) for e in spec.get("autoscalerOptions", {}).get("env", [])]


def secret_problems(spec: dict) -> list[str]:
    """A RayClusterSpec's token auth is off, or hand-set (the operator owns RAY_AUTH_*: a plain value would put the
    token, or `disabled`, in the manifest), or a secret-looking variable has a plain value instead of a Secret."""
    out = [] if spec.get("authOptions", {}).get("mode") == "token" else ["authOptions.mode is not 'token'"]
    for where, env in container_envs(spec):
        if env["name"] in RAY_AUTH_VARS:
            out.append(f"{where}: sets {env['name']} by hand")
        elif SECRET_NAME.search(env["name"]) and "secretKeyRef" not in env.get("valueFrom", {}):
            out.append(f"{where}: {env['name']} is not from a Secret (secretKeyRef)")
    return out


def test_kuberay_specs_keep_token_auth_on_and_secrets_in_secrets():
    for spec in ray_cluster_specs():
        assert secret_problems(spec) == []
    assert any(e["name"] == "WANDB_API_KEY" for _, e in container_envs(ray_cluster_specs()[0]))  # the one we pass
    # a job's runtime_env is shown by the dashboard and stored with the job: no secret may ride in it
    for env_vars in (yaml.safe_load(load_one(KUBERAY / "rayjob.yaml")["spec"]["runtimeEnvYAML"])["env_vars"],
                     submit_sh_runtime_env()["env_vars"]):
        assert not [k for k in env_vars if SECRET_NAME.search(k) or k in RAY_AUTH_VARS], env_vars


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["authOptions"].update(mode="disabled"), "authOptions.mode is not 'token'"),
    (lambda s: s.pop("authOptions"), "authOptions.mode is not 'token'"),
    (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_AUTH_MODE", "value": "disabled"}), "head/ray-head: sets RAY_AUTH_MODE by hand"),
    (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "OPENAI_API_KEY", "value": "sk-..."}), "head/ray-head: OPENAI_API_KEY is not from a Secret"),
    (lambda s: s["autoscalerOptions"].setdefault("env", []).append({"name": "RAY_AUTH_TOKEN", "value": "x"}),
     "autoscaler: sets RAY_AUTH_TOKEN by hand"),
], ids=["auth-disabled", "no-authOptions", "hand-set-mode", "plain-api-key", "plain-token-in-autoscaler"])
def test_secret_checks_catch_mistakes(mutate, expected):
    spec = copy.deepcopy(ray_cluster_specs()[0])
    mutate(spec)
    assert any(p.startswith(expected) for p in secret_problems(spec)), secret_problems(spec)


def test_crd_schema_knows_the_auth_modes():
    doc = load_one(KUBERAY / "raycluster.yaml")
    doc["spec"]["authOptions"]["mode"] = "tokens"
    assert any(p.startswith("spec.authOptions.mode: 'tokens' is not one of") for p in manifest_problems(doc))


def test_autoscaler_yaml_keeps_token_auth_on_with_the_token_from_a_file():
    config = load_one(AUTOSCALER)
    run_options = config["docker"]["run_options"]
    assert "-e RAY_AUTH_MODE=token" in run_options  # every Ray process of every node's container
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # Ray's default token path
    text = AUTOSCALER.read_text()
    assert "RAY_AUTH_MODE=disabled" not in text and "RAY_AUTH_TOKEN" not in text
    plain = [o for o in run_options if o.startswith("-e ") and SECRET_NAME.search(o.split("=")[0])]
    assert plain == [], plain


def test_cluster_docs_never_turn_auth_off():
    """No command we give starts Ray with token auth off (naming the setting in `code`, to warn, is fine)."""
    for path in [*CLUSTER.rglob("*.md"), *ALL_YAML, CLUSTER / "submit.sh"]:
        assert not re.search(r"RAY_AUTH_MODE=disabled(?!`)", path.read_text()), path
