"""Render the deployment manifests and check what they promise.

Every kustomize overlay, and the Helm post-renderer applied to a chart-shaped
stand-in, is rendered with `kubectl kustomize`, validated against the Kubernetes
OpenAPI schemas bundled in `kubernetes-validate` (strict: unknown fields fail), and
checked for the security settings of the agent's pod. The agent's environment in
each rendered init container is passed to `portainer-key-agent check`, so a
renamed option or a wrong value fails here. Nothing is applied to a cluster.

Needs kubectl with built-in kustomize, docker (client only, for the stack file)
and the agent binary that `cargo build` writes to target/debug.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
POST_RENDERER = REPO / "deploy" / "helm" / "post-renderer" / "kustomize-post-renderer"
AGENT = Path(os.environ.get("PORTAINER_KEY_AGENT_BINARY", REPO / "target/debug/portainer-key-agent"))

# An older and the newest Kubernetes release whose schemas kubernetes-validate
# 1.37.0 bundles, so that fields new in 1.37 alone would fail.
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]

AGENT_ID = 65532
CE_KEY = "/run/secrets/portainer"
BE_KEY = "/run/portainer/portainer"
PASSWORD = "/run/portainer/admin-password"

# Kustomization directory, key file the agent writes, and whether the agent
# reads a projected token for Vault.
OVERLAYS = {
    "base": (KUBERNETES / "base", CE_KEY, True),
    "vault": (KUBERNETES / "overlays" / "vault", CE_KEY, True),
    "aws": (KUBERNETES / "overlays" / "aws", CE_KEY, False),
    "business-edition": (KUBERNETES / "overlays" / "business-edition", BE_KEY, True),
    "vault-sidecar": (KUBERNETES / "overlays" / "vault-sidecar", CE_KEY, True),
    "azure": (KUBERNETES / "overlays" / "azure", CE_KEY, False),
    "gcp": (KUBERNETES / "overlays" / "gcp", CE_KEY, False),
}
# Overlays that name a store, so the agent's configuration is complete.
COMPLETE_OVERLAYS = ["vault", "aws", "business-edition", "vault-sidecar"]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found; install kubectl (it includes kustomize)")
    return path


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stderr}"
    return result


def parse_documents(text: str) -> list:
    return [document for document in yaml.safe_load_all(text) if document]


def render(directory: Path) -> list:
    return parse_documents(run([kubectl(), "kustomize", str(directory)]).stdout)


def chart_stand_in() -> str:
    """Return the base's Portainer resources shaped like the chart's output.

    The chart is not rendered here (no Helm, no network), so this stand-in has the
    chart's names: Deployment, container and ServiceAccount "portainer", and the
    chart's --tunnel-port argument in place of the base's argument.
    """
    text = (KUBERNETES / "base" / "portainer.yaml").read_text()
    return text.replace(f"--admin-password-file={PASSWORD}", "--tunnel-port=30776")


def render_post_renderer() -> list:
    result = run([str(POST_RENDERER)], input=chart_stand_in())
    return parse_documents(result.stdout)


def find(documents: list, kind: str, name: str = "portainer") -> dict:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def by_name(items: list, name: str) -> dict:
    matches = [item for item in items or [] if item["name"] == name]
    assert len(matches) == 1, f"expected one entry named {name}, found {len(matches)}"
    return matches[0]


def agent_env(pod: dict) -> dict:
    agent = by_name(pod["initContainers"], "portainer-key-agent")
    return {variable["name"]: variable["value"] for variable in agent.get("env", [])}


def check_pod_security(documents: list, key_target: str, vault_token: bool) -> None:
    """Assert the security properties of the rendered pod; raise AssertionError."""
    account = find(documents, "ServiceAccount")
    assert account.get("automountServiceAccountToken") is False, "ServiceAccount automounts a token"

    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod.get("automountServiceAccountToken") is False, "pod automounts a token"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroup"] == AGENT_ID, "Portainer must share the agent's group"

    # The agent: non-root, read-only, nothing to escalate to.
    assert [c["name"] for c in pod["initContainers"]] == ["portainer-key-agent"]
    agent = pod["initContainers"][0]
    context = agent["securityContext"]
    assert context["runAsNonRoot"] is True, "agent runAsNonRoot"
    assert context["runAsUser"] == AGENT_ID, "agent runAsUser"
    assert context["readOnlyRootFilesystem"] is True, "agent readOnlyRootFilesystem"
    assert context["allowPrivilegeEscalation"] is False, "agent allowPrivilegeEscalation"
    assert context["capabilities"]["drop"] == ["ALL"], "agent capabilities drop"
    assert "add" not in context["capabilities"], "agent capabilities add"
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, "agent seccompProfile"

    portainer = by_name(pod["containers"], "portainer")
    assert portainer["securityContext"]["allowPrivilegeEscalation"] is False, "Portainer escalation"
    assert portainer["securityContext"]["capabilities"]["drop"] == ["ALL"], "Portainer capabilities"

    # The shared volumes: RAM, bounded, mounted as whole directories.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for name in ("portainer-secrets", "portainer-run"):
        assert volumes[name]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}, name
    for volume in pod["volumes"]:
        assert "secret" not in volume, f"Kubernetes Secret volume {volume['name']}"
    for container in pod["initContainers"] + pod["containers"]:
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount and "subPathExpr" not in mount, (
                f"{container['name']} mounts {mount['mountPath']} with subPath"
            )

    env = agent_env(pod)
    assert env["PORTAINER_KEY_AGENT_KEY_TARGET"] == key_target
    assert env["PORTAINER_KEY_AGENT_PASSWORD_TARGET"] == PASSWORD
    # Group-readable for Portainer through fsGroup, never world-readable.
    assert env["PORTAINER_KEY_AGENT_MODE"] == "0440"

    # Both containers see the directories of both files, Portainer read-only.
    for target in (key_target, PASSWORD):
        directory = str(Path(target).parent)
        agent_mount = [m for m in agent["volumeMounts"] if m["mountPath"] == directory]
        portainer_mount = [m for m in portainer["volumeMounts"] if m["mountPath"] == directory]
        assert len(agent_mount) == 1, f"agent does not mount {directory}"
        assert len(portainer_mount) == 1, f"Portainer does not mount {directory}"
        assert agent_mount[0]["name"] == portainer_mount[0]["name"], directory
        assert volumes[agent_mount[0]["name"]]["emptyDir"]["medium"] == "Memory"
        assert portainer_mount[0]["readOnly"] is True

    # Portainer reads what the agent writes.
    args = portainer["args"]
    assert f"--admin-password-file={PASSWORD}" in args
    if key_target == CE_KEY:
        assert not any(arg.startswith("--secret-key-name") for arg in args)
    else:
        assert f"--secret-key-name={key_target}" in args

    # The agent's store token, when it has one, is for the store only.
    tokens = [
        source["serviceAccountToken"]
        for volume in pod["volumes"]
        if volume["name"] == "agent-token"
        for source in volume["projected"]["sources"]
    ]
    if vault_token:
        assert tokens == [{"audience": "vault", "expirationSeconds": 600, "path": "token"}]
        token_mount = by_name(agent["volumeMounts"], "agent-token")
        assert token_mount["readOnly"] is True
        # The base names no store, so only the overlays set the token file.
        if "PORTAINER_KEY_AGENT_VAULT_JWT_FILE" in env:
            jwt_file = env["PORTAINER_KEY_AGENT_VAULT_JWT_FILE"]
            assert jwt_file == token_mount["mountPath"] + "/token"
    else:
        assert tokens == []
    # Portainer's API token is never mounted into the agent.
    assert all(m["name"] != "kube-api-access" for m in agent["volumeMounts"])


def validate_schemas(documents: list) -> None:
    for version in KUBERNETES_VERSIONS:
        for document in documents:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{document['kind']} {document['metadata']['name']} is invalid for "
                    f"Kubernetes {version}: {error.message} at {list(error.path)}"
                )


def check_agent_accepts(env: dict) -> subprocess.CompletedProcess:
    if not AGENT.is_file():
        pytest.fail(f"{AGENT} not found; run `cargo build --workspace --bins` first")
    clean_env = {"PATH": os.environ.get("PATH", ""), "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run(
        [str(AGENT), "check"], env={**clean_env, **env}, capture_output=True, text=True
    )


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders_and_validates(name):
    directory, _, _ = OVERLAYS[name]
    documents = render(directory)
    kinds = sorted(d["kind"] for d in documents)
    expected = ["Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"]
    if name in ("azure", "gcp"):
        # The agent's configuration file, generated from the overlay's agent.toml.
        expected = ["ConfigMap", *expected]
    assert kinds == expected
    validate_schemas(documents)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_pod_is_hardened(name):
    directory, key_target, vault_token = OVERLAYS[name]
    check_pod_security(render(directory), key_target, vault_token)


@pytest.mark.parametrize("name", COMPLETE_OVERLAYS)
def test_overlay_agent_env_passes_check(name):
    directory, _, _ = OVERLAYS[name]
    pod = find(render(directory), "Deployment")["spec"]["template"]["spec"]
    result = check_agent_accepts(agent_env(pod))
    assert result.returncode == 0, f"portainer-key-agent check rejected {name}:\n{result.stderr}"
    assert "configuration valid" in result.stdout


def test_base_agent_env_is_incomplete():
    pod = find(render(KUBERNETES / "base"), "Deployment")["spec"]["template"]["spec"]
    result = check_agent_accepts(agent_env(pod))
    assert result.returncode == 78, f"base names no store, check returned {result.returncode}"


def test_aws_overlay_uses_irsa_only_for_agent():
    documents = render(KUBERNETES / "overlays" / "aws")
    annotations = find(documents, "ServiceAccount")["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    template = find(documents, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] == "portainer"
    assert agent_env(template["spec"])["PORTAINER_KEY_AGENT_STORE"] == "aws"


def mount_key_with_subpath(pod):
    portainer = by_name(pod["containers"], "portainer")
    mount = [m for m in portainer["volumeMounts"] if m["mountPath"] == "/run/secrets"][0]
    mount["mountPath"] = CE_KEY
    mount["subPath"] = "portainer"


def agent_context(pod):
    return by_name(pod["initContainers"], "portainer-key-agent")["securityContext"]


@pytest.mark.parametrize(
    "mutation, message",
    [
        (mount_key_with_subpath, "subPath"),
        (lambda pod: by_name(pod["volumes"], "portainer-secrets")["emptyDir"].pop("medium"),
         "portainer-secrets"),
        (lambda pod: by_name(pod["volumes"], "portainer-run")["emptyDir"].pop("sizeLimit"),
         "portainer-run"),
        (lambda pod: agent_context(pod).update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda pod: agent_context(pod).update(readOnlyRootFilesystem=False),
         "readOnlyRootFilesystem"),
        (lambda pod: agent_context(pod).update(allowPrivilegeEscalation=True),
         "allowPrivilegeEscalation"),
        (lambda pod: agent_context(pod)["capabilities"].update(drop=["NET_RAW"]), "drop"),
        (
            lambda pod: pod["volumes"].append(
                {"name": "portainer-key", "secret": {"secretName": "portainer-key"}}
            ),
            "Secret volume",
        ),
    ],
    ids=[
        "subPath",
        "disk emptyDir",
        "unbounded emptyDir",
        "root",
        "writable root",
        "escalation",
        "capabilities",
        "Secret volume",
    ],
)
def test_security_check_catches(mutation, message):
    broken = render(KUBERNETES / "overlays" / "vault")
    check_pod_security(broken, CE_KEY, True)
    mutation(find(broken, "Deployment")["spec"]["template"]["spec"])
    with pytest.raises(AssertionError, match=message):
        check_pod_security(broken, CE_KEY, True)


def test_helm_post_renderer_adds_agent():
    documents = render_post_renderer()
    validate_schemas(documents)
    check_pod_security(documents, CE_KEY, True)
    portainer = by_name(find(documents, "Deployment")["spec"]["template"]["spec"]["containers"], "portainer")
    # The chart's own arguments are kept, the password file appended.
    assert portainer["args"] == ["--tunnel-port=30776", f"--admin-password-file={PASSWORD}"]


def test_helm_values_keep_chart_secrets_off():
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values-portainer-key-agent.yaml").read_text())
    assert values["serviceAccount"]["name"] == "portainer"
    assert values["dbEncryption"]["existingSecret"] == ""
    assert values["adminPassword"]["existingSecret"] == ""


def swarm_stack_config(env):
    if shutil.which("docker") is None:
        pytest.fail("docker not found; the stack file is checked with `docker stack config`")
    stack = REPO / "deploy" / "swarm" / "stack.yml"
    rendered = run(["docker", "stack", "config", "-c", str(stack)], env=env).stdout
    return yaml.safe_load(rendered)["services"]["portainer"]


def test_swarm_stack_starts_without_replicas_until_synced():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAINER_")}

    portainer = swarm_stack_config(env)

    assert portainer["deploy"]["replicas"] == 0
    assert "secrets" not in portainer, "swarm sync attaches the secrets; the stack must not"


def test_swarm_stack_reads_synced_paths():
    env = {**os.environ, "PORTAINER_REPLICAS": "1"}

    portainer = swarm_stack_config(env)

    command = portainer["command"]
    if isinstance(command, str):
        command = command.split()
    flag = command.index("--admin-password-file")
    assert command[flag + 1] == "/run/secrets/portainer-admin-password"
    assert not any(arg.startswith("--secret-key-name") for arg in command), (
        "the key is synced to /run/secrets/portainer, Portainer's default name"
    )
    assert portainer["deploy"]["replicas"] == 1


def test_sidecar_overlay_watches_with_startup_probe():
    pod = find(render(KUBERNETES / "overlays" / "vault-sidecar"), "Deployment")["spec"]["template"]["spec"]
    agent = by_name(pod["initContainers"], "portainer-key-agent")

    assert agent["args"] == ["watch"]
    assert agent["restartPolicy"] == "Always", "a native sidecar is an init container that restarts"
    assert agent["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert agent_env(pod)["PORTAINER_KEY_AGENT_DATA_DIR"] == "/data"
    data = by_name(agent["volumeMounts"], "data")
    assert data["mountPath"] == "/data"
    assert data["readOnly"] is True, "the rotation guard only reads the database"


@pytest.mark.parametrize("name", ["azure", "gcp"])
def test_cloud_overlay_config_passes_check(name, tmp_path):
    directory = KUBERNETES / "overlays" / name
    config = (directory / "agent.toml").read_text()
    if name == "gcp":
        credentials = tmp_path / "credential-config.json"
        credentials.write_text((directory / "credential-config.json").read_text())
        config = config.replace("/etc/portainer-key-agent/credential-config.json", str(credentials))
    (tmp_path / "agent.toml").write_text(config)
    env = {"AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000000", "AZURE_TENANT_ID": "tenant",
           "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "token")}

    result = check_agent_accepts({"PORTAINER_KEY_AGENT_CONFIG": str(tmp_path / "agent.toml"), **env})

    assert result.returncode == 0, result.stderr


def test_swarm_in_task_stack_keeps_key_on_tmpfs():
    if shutil.which("docker") is None:
        pytest.fail("docker not found; the stack file is checked with `docker stack config`")
    stack = REPO / "deploy" / "swarm" / "stack-in-task.yml"
    portainer = yaml.safe_load(run(["docker", "stack", "config", "-c", str(stack)]).stdout)["services"]["portainer"]

    mounts = {volume["target"]: volume for volume in portainer["volumes"]}
    env = portainer["environment"]
    key_directory = str(Path(env["PORTAINER_KEY_AGENT_KEY_TARGET"]).parent)
    assert env["PORTAINER_KEY_AGENT_KEY_TARGET"] == "/run/secrets/portainer"
    assert mounts[key_directory]["type"] == "tmpfs", "the key directory must be RAM-backed"
    assert mounts["/run/portainer"]["type"] == "tmpfs"
    assert "portainer" not in [secret["source"] for secret in portainer["secrets"]]


def test_iam_policy_grants_read_and_decrypt_only():
    policy = json.loads((KUBERNETES / "overlays" / "aws" / "iam-policy.json").read_text())
    actions = []
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "*" not in json.dumps(statement["Resource"]), "wildcard resource"
        granted = statement["Action"]
        actions.extend(granted if isinstance(granted, list) else [granted])
    assert sorted(actions) == [
        "kms:Decrypt",
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    ]


def test_vault_policy_reads_one_path(tmp_path):
    bao = REPO / ".venv" / "bin" / "bao"
    policy = KUBERNETES / "overlays" / "vault" / "policy.hcl"
    copy_path = tmp_path / "policy.hcl"
    shutil.copy(policy, copy_path)
    # `bao policy fmt` parses the policy offline and fails on a syntax error.
    run([str(bao), "policy", "fmt", str(copy_path)])
    text = policy.read_text()
    assert 'path "secret/data/portainer"' in text
    assert 'capabilities = ["read"]' in text
    assert len(re.findall(r"^path ", text, flags=re.MULTILINE)) == 1
