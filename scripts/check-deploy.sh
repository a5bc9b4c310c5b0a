#!/usr/bin/env bash
# Validates everything under deploy/ without a cluster, a Docker engine or any network but the
# package registries (Debian, PyPI, npm):
#
# - every YAML and JSON file parses;
# - deploy/.env.example lists every setting the binaries read (clap `env = "..."` and the
#   OPENAI_* constants in shared/, publisher/, worker/), with the source's defaults, and holds
#   only placeholder secrets;
# - docker-compose.yml has the services, mounts and replicas it promises, every ${VAR} it needs is
#   in .env.example, and `docker compose config` (or docker-compose v1) accepts it;
# - the Dockerfile builds the real package names with the features both crates have, stubs every
#   target the root manifest declares, and runs as non-root; .dockerignore keeps what it copies;
# - Kubernetes: Deployments have liveness (/healthz) and readiness (/readyz) probes, resources,
#   non-root security contexts and terminationGracePeriodSeconds above the drain grace
#   (RECALL_GRACE_SECONDS); Secrets are referenced, never embedded (a Secret with data only in
#   *.example.yaml, with placeholders); Services, PDBs, the ServiceMonitor, KEDA and the HPA point
#   at things that exist; the KEDA queue is the batch queue of rabbitmq.rs's topology;
#   kustomization.yaml lists existing files; every object validates against the Kubernetes
#   schemas (kubernetes-validate, PyPI) and the KEDA / Prometheus Operator CRD schemas
#   (@kubernetes-models, npm);
# - Prometheus: alert rules have expr, for, labels.severity and annotations.summary, a README
#   section and a unit test; `promtool check config`, `check rules` and `test rules` pass;
#   prometheusrule.yaml carries exactly the groups of alerts.yml;
# - Grafana: the dashboard's panels have queries, variables are defined, every expression parses
#   (promtool check rules on a generated rule file), the provisioning points where compose mounts;
# - every recall_* metric in the alerts, their tests, the PrometheusRule and the dashboard exists
#   in shared/src (metrics.rs), with its real labels and label values; every RabbitMQ queue name
#   exists in the topology.
#
# Usage: scripts/check-deploy.sh                        check; exit 1 and list what failed
#        scripts/check-deploy.sh --write-prometheusrule regenerate
#                                                       deploy/kubernetes/prometheusrule.yaml
#                                                       from deploy/prometheus/alerts.yml, then check
#
# Installs what it misses (needs root or sudo for apt): promtool unpacked from Debian's prometheus
# package into $CACHE (apt-get download, not installed: no server is enabled); Debian packages
# docker-compose (when there is no `docker compose` plugin), python3-venv, nodejs and npm when
# absent; PyPI packages into $CACHE/venv; npm packages into $CACHE/npm. CACHE is
# $RECALL_CHECK_DEPLOY_CACHE, default ~/.cache/recall-check-deploy.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly PY_PACKAGES=("PyYAML==6.0.3" "kubernetes-validate==1.37.0")
readonly NPM_PACKAGES=("@kubernetes-models/keda@2.0.0" "@kubernetes-models/prometheus-operator@6.0.0")
CACHE="${RECALL_CHECK_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recall-check-deploy}"

say() { echo "check-deploy: $*"; }
die() {
    echo "check-deploy: error: $*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

apt_updated=false
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need $* (no apt-get here: install them by hand)"
    say "installing Debian packages: $*"
    if [[ $apt_updated == false ]]; then
        as_root apt-get update -qq || die "apt-get update failed"
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null || die "apt-get install $* failed"
}

# --- tools ------------------------------------------------------------------------------------

command -v python3 >/dev/null 2>&1 || apt_install python3
mkdir -p "$CACHE"

# promtool: from PATH, else unpacked from Debian's prometheus package into $CACHE (not installed,
# so no Prometheus server gets enabled as a service).
promtool="$(command -v promtool || true)"
if [[ -z $promtool ]]; then
    promtool="$CACHE/prometheus/usr/bin/promtool"
    if [[ ! -x $promtool ]]; then
        command -v apt-get >/dev/null 2>&1 || die "need promtool (Debian package prometheus)"
        say "unpacking promtool from Debian's prometheus package into $CACHE/prometheus"
        rm -rf "$CACHE/deb" && mkdir -p "$CACHE/deb"
        if ! (cd "$CACHE/deb" && apt-get download prometheus >/dev/null 2>&1); then
            as_root apt-get update -qq || die "apt-get update failed"
            apt_updated=true
            (cd "$CACHE/deb" && apt-get download prometheus >/dev/null) || die "apt-get download prometheus failed"
        fi
        dpkg-deb -x "$CACHE"/deb/prometheus_*.deb "$CACHE/prometheus" || die "cannot unpack the prometheus package"
        rm -rf "$CACHE/deb"
    fi
fi
"$promtool" --version >/dev/null 2>&1 || die "$promtool does not run"

venv="$CACHE/venv"
py_stamp="$venv/.recall-packages"
if [[ ! -x "$venv/bin/python" || "$(cat "$py_stamp" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv" || die "python3 -m venv failed"
    fi
    say "installing PyPI packages into $venv: ${PY_PACKAGES[*]}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" \
        || die "pip install ${PY_PACKAGES[*]} failed (is PyPI reachable?)"
    echo "${PY_PACKAGES[*]}" >"$py_stamp"
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
npm_dir="$CACHE/npm"
npm_stamp="$npm_dir/.recall-packages"
if [[ "$(cat "$npm_stamp" 2>/dev/null)" != "${NPM_PACKAGES[*]}" ]]; then
    rm -rf "$npm_dir"
    mkdir -p "$npm_dir"
    echo '{"name": "recall-check-deploy", "private": true}' >"$npm_dir/package.json"
    say "installing npm packages into $npm_dir: ${NPM_PACKAGES[*]}"
    npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}" \
        >/dev/null || die "npm install ${NPM_PACKAGES[*]} failed (is the npm registry reachable?)"
    echo "${NPM_PACKAGES[*]}" >"$npm_stamp"
fi
# Validates custom resources (JSON array on stdin) with the CRD schemas compiled into
# @kubernetes-models; prints one line per object, exits 1 when one does not validate.
cat >"$npm_dir/validate-crds.mjs" <<'JS'
import { readFileSync } from "node:fs";
const models = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  "keda.sh/v1alpha1/TriggerAuthentication":
    "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
};
let failed = 0;
for (const { file, doc } of JSON.parse(readFileSync(0, "utf8"))) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const name = `${file}: ${doc.kind}/${doc.metadata?.name}`;
  if (!models[key]) {
    console.log(`NOSCHEMA ${name} (${key})`);
    failed++;
    continue;
  }
  const mod = await import(models[key]);
  try {
    new mod[doc.kind](doc).validate();
    console.log(`OK ${name}`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
JS

if docker compose version >/dev/null 2>&1; then
    compose="docker compose"
else
    command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
    compose="docker-compose"
fi

# --- checks -----------------------------------------------------------------------------------

export CHECK_ROOT="$PWD"
export CHECK_PROMTOOL="$promtool"
export CHECK_KUBE_VALIDATE="$venv/bin/kubernetes-validate"
export CHECK_CRD_VALIDATOR="$npm_dir/validate-crds.mjs"
export CHECK_COMPOSE="$compose"

exec "$venv/bin/python" - "$@" <<'PY'
"""The structural checks of scripts/check-deploy.sh (see its header)."""

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(os.environ["CHECK_ROOT"])
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
SOURCE_DIRS = [ROOT / "shared" / "src", ROOT / "publisher" / "src", ROOT / "worker" / "src"]

passed = 0
failures: list[str] = []


def rel(p: Path) -> str:
    return str(Path(p).relative_to(ROOT))


def check(cond: bool, where: str, what: str) -> bool:
    """Counts one check; records `where: what` when it fails."""
    global passed
    if cond:
        passed += 1
    else:
        failures.append(f"{where}: {what}")
        print(f"  FAIL {where}: {what}")
    return bool(cond)


def section(title: str) -> None:
    print(f"== {title}")


@contextmanager
def guard(what: str):
    """Turns a crash of one group of checks (malformed input) into a failure, then goes on."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - reported, never swallowed
        check(False, what, f"could not be checked: {type(e).__name__}: {e}")


def to_int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


docs: dict[Path, list] = {}  # every YAML / JSON file under deploy/ that parsed: its documents


def one(path: Path):
    """The single document of a file that parsed, or None."""
    d = docs.get(path)
    return d[0] if d else None


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def literal_block(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class BlockDumper(yaml.SafeDumper):
    pass


BlockDumper.add_representer(str, literal_block)

# --- regenerate the PrometheusRule on request --------------------------------------------------

PROMETHEUSRULE_HEADER = """\
# Prometheus Operator: the alert rules of deploy/prometheus/alerts.yml, as a PrometheusRule.
# GENERATED from alerts.yml: edit alerts.yml, then run scripts/check-deploy.sh --write-prometheusrule;
# scripts/check-deploy.sh fails when the two differ. A Prometheus installed by
# kube-prometheus-stack only loads rules carrying its release label (ruleSelector).
"""

if "--write-prometheusrule" in sys.argv[1:]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "recall",
            "namespace": "recall",
            "labels": {"app.kubernetes.io/part-of": "recall"},
        },
        "spec": {"groups": groups},
    }
    text = yaml.dump(doc, Dumper=BlockDumper, sort_keys=False, width=100)
    (K8S / "prometheusrule.yaml").write_text(PROMETHEUSRULE_HEADER + text)
    print("check-deploy: wrote deploy/kubernetes/prometheusrule.yaml from alerts.yml")

# --- 1. every YAML and JSON file parses --------------------------------------------------------

section("parse every YAML and JSON file under deploy/")
with guard("parse every YAML and JSON file under deploy/"):
    SKIP_DIRS = {"node_modules", "__pycache__", "target", ".venv", "venv", "dist", "lib"}
    for path in sorted(DEPLOY.rglob("*")):
        parts = set(path.relative_to(DEPLOY).parts[:-1])
        if not path.is_file() or parts & SKIP_DIRS or any(p.startswith(".") for p in parts):
            continue
        if path.suffix in (".yml", ".yaml"):
            try:
                docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
                check(True, rel(path), "")
            except yaml.YAMLError as e:
                check(False, rel(path), f"YAML does not parse: {e}")
        elif path.suffix == ".json":
            try:
                docs[path] = [json.loads(path.read_text())]
                check(True, rel(path), "")
            except ValueError as e:
                check(False, rel(path), f"JSON does not parse: {e}")
    print(f"  parsed {len(docs)} files")

# --- 2. what the source says ---------------------------------------------------------------------

section("facts from the source")
with guard("facts from the source"):
    rust_files = [p for d in SOURCE_DIRS for p in sorted(d.rglob("*.rs"))]
    rust = {p: p.read_text() for p in rust_files}
    all_rust = "\n".join(rust.values())

    # Settings: clap attributes (env + default) and the OPENAI_* constants.
    settings: dict[str, str | None] = {}
    for text in rust.values():
        for m in re.finditer(r"#\[arg\((.*?)\)\]", text, re.S):
            body = m.group(1)
            env = re.search(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', body)
            if not env:
                continue
            d = re.search(r'default_value_t\s*=\s*([^,\s)]+)', body) or re.search(
                r'default_value\s*=\s*"([^"]*)"', body
            )
            default = d.group(1) if d else None
            ident = re.search(r"default_value(?:_t)?\s*=\s*([A-Z_][A-Z0-9_]*)\b", body)
            if ident:  # a constant: look its value up
                c = re.search(rf"const {ident.group(1)}: [^=]+=\s*\"?([^\";]*)\"?;", all_rust)
                default = c.group(1) if c else f"<{ident.group(1)}>"
            settings[env.group(1)] = default
    clap_defaults = dict(settings)
    for text in rust.values():
        for m in re.finditer(r'pub const ENV_[A-Z0-9_]+: &str = "([A-Z][A-Z0-9_]*)"', text):
            settings.setdefault(m.group(1), None)
    # Read by the stores that are landing (Firestore, Qdrant server) and by tracing.
    EXPECTED_EXTRA = {
        "FIRESTORE_PROJECT_ID": None,
        "FIRESTORE_EMULATOR_HOST": None,
        "GOOGLE_APPLICATION_CREDENTIALS": None,
        "QDRANT_URL": None,
        "QDRANT_API_KEY": None,
        "QDRANT_COLLECTION_NAME": "chat_memory",
        "QDRANT_VECTOR_SIZE": None,
        "QDRANT_CONNECTION_TIMEOUT": "30",
        "RUST_LOG": "info",
    }
    for name in EXPECTED_EXTRA:
        settings.setdefault(name, None)
    check("RECALL_GRACE_SECONDS" in clap_defaults, "shared/src/config.rs", "RECALL_GRACE_SECONDS not found")
    DRAIN_GRACE = int(clap_defaults.get("RECALL_GRACE_SECONDS") or 0)
    PREFIX = clap_defaults.get("RECALL_AMQP_PREFIX") or "recall"
    SHARDS = int(clap_defaults.get("RECALL_SHARDS") or 8)
    RETRY_TIERS = len((clap_defaults.get("RECALL_RETRY_DELAYS") or "5,30,300").split(","))
    print(
        f"  {len(settings)} settings; drain grace RECALL_GRACE_SECONDS={DRAIN_GRACE}s; "
        f"queue prefix {PREFIX!r}, {SHARDS} shards, {RETRY_TIERS} retry tiers"
    )

    # Metrics: every "recall_*" literal registered in shared/src, its labels and kind.
    metrics_rs = (ROOT / "shared" / "src" / "metrics.rs").read_text()
    metrics: dict[str, dict] = {}
    for text in [metrics_rs] + [t for p, t in rust.items() if p.name != "metrics.rs"]:
        for m in re.finditer(r'"(recall_[a-z0-9_]+)"', text):
            name = m.group(1)
            after = text[m.end() : m.end() + 400]
            labels = re.match(r'\s*,\s*"(?:[^"\\]|\\.)*"\s*,?\s*(?:\)\s*,)?\s*&\[([^\]]*)\]', after)
            before = text[max(0, m.start() - 60) : m.start()]
            if not re.search(r"(Opts::new|::new|_vec|counter|gauge)\(\s*$", before):
                continue  # a mention (a test assertion), not a registration
            metrics[name] = {
                "labels": set(re.findall(r'"([a-z_]+)"', labels.group(1))) if labels else set(),
                "histogram": bool(re.search(r"(histogram_vec|HistogramOpts::new|Histogram::new)\(\s*$", before)),
            }
    check(len(metrics) >= 10, "shared/src/metrics.rs", f"found only {len(metrics)} recall_* metrics")
    print(f"  {len(metrics)} metrics: " + ", ".join(
        n + ("{" + ",".join(sorted(m["labels"])) + "}" if m["labels"] else "") + (" (histogram)" if m["histogram"] else "")
        for n, m in sorted(metrics.items())))
    string_literals = set(re.findall(r'"((?:[^"\\\n]|\\.)*)"', all_rust))
    # Label values each metric is emitted with: `.<field>.with_label_values(&["a", x])` calls, where
    # <field> is the struct field or variable the metric was registered as. A non-literal argument
    # makes that label dynamic (checked against every string literal of the source instead).
    field_metric: dict[str, str] = {}
    for m in re.finditer(r'(\w+):\s*(?:counter_vec|counter|histogram_vec)\(\s*"(recall_[a-z0-9_]+)"', all_rust):
        field_metric[m.group(1)] = m.group(2)
    for m in re.finditer(r'let (\w+) = \w+::new\(\s*(?:prometheus::)?(?:Histogram)?Opts::new\(\s*"(recall_[a-z0-9_]+)"', all_rust):
        field_metric[m.group(1)] = m.group(2)
    emitted: dict[str, list[set | None]] = {}
    for m in re.finditer(r'\.(\w+)\s*\.with_label_values\(\s*&\[([^\]]*)\]', all_rust):
        name = field_metric.get(m.group(1))
        if not name:
            continue
        args = [a.strip() for a in m.group(2).split(",") if a.strip()]
        slots = emitted.setdefault(name, [set() for _ in args])
        for i, a in enumerate(args[: len(slots)]):
            lit = re.fullmatch(r'"([^"]*)"', a)
            if slots[i] is not None:
                if lit:
                    slots[i].add(lit.group(1))
                else:
                    slots[i] = None
    label_order: dict[str, list[str]] = {}
    for m in re.finditer(r'"(recall_[a-z0-9_]+)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,?\s*(?:\)\s*,)?\s*&\[([^\]]*)\]', all_rust):
        label_order[m.group(1)] = re.findall(r'"([a-z_]+)"', m.group(2))


    def emitted_values(metric: str, label: str) -> set | None:
        """The literal values `metric` is emitted with for `label`, or None when not all literal."""
        order = label_order.get(metric, [])
        if metric not in emitted or label not in order:
            return None
        return emitted[metric][order.index(label)]

    routes = set(re.findall(r'\.route\(\s*"([^"]+)"', all_rust))
    # The route table of shared/src/http/mod.rs: `routes![GET "/path" => handler, ...]`.
    routes |= set(re.findall(r'\b(?:GET|POST|PUT|PATCH|DELETE)\s+"(/[^"]*)"\s*=>', all_rust))

    # RabbitMQ topology (shared/src/adapters/rabbitmq.rs).
    rabbitmq_rs = (ROOT / "shared" / "src" / "adapters" / "rabbitmq.rs").read_text()
    for pattern in ("{p}.batches", "{p}.parking", "{p}.events.{i}", "{p}.batches.retry.{n}"):
        check(f'"{pattern}"' in rabbitmq_rs, "shared/src/adapters/rabbitmq.rs",
              f"queue name pattern {pattern} not found: the topology changed, update deploy/")
    BATCH_QUEUE = f"{PREFIX}.batches"
    QUEUES = {BATCH_QUEUE, f"{PREFIX}.parking"}
    QUEUES |= {f"{PREFIX}.events.{i}" for i in range(SHARDS)}
    QUEUES |= {f"{PREFIX}.batches.retry.{n}" for n in range(RETRY_TIERS)}

alerts_doc = one(PROM / "alerts.yml") or {}

# --- 3. .env.example ------------------------------------------------------------------------------

section("deploy/.env.example")
with guard("deploy/.env.example"):
    env_path = DEPLOY / ".env.example"
    env_entries: dict[str, dict] = {}
    if check(env_path.is_file(), "deploy/.env.example", "missing"):
        comment: list[str] = []
        for n, line in enumerate(env_path.read_text().splitlines(), 1):
            m = re.match(r"^(#)?([A-Z][A-Z0-9_]*)=(.*)$", line)
            if m:
                name = m.group(2)
                check(name not in env_entries, f"deploy/.env.example:{n}", f"{name} listed twice")
                default = next((c.split("Default:", 1)[1].strip() for c in comment if "Default:" in c), None)
                env_entries[name] = {"active": not m.group(1), "value": m.group(3), "line": n, "default": default}
                comment = []
            elif line.startswith("#"):
                comment.append(line)
            else:
                comment = []
        for name, src_default in sorted(settings.items()):
            e = env_entries.get(name)
            if not check(e is not None, "deploy/.env.example", f"setting {name} is not listed"):
                continue
            documented = e["default"]
            if not check(documented is not None, f"deploy/.env.example:{e['line']}", f"{name} has no 'Default:' line"):
                continue
            expected = src_default if name in clap_defaults else EXPECTED_EXTRA.get(name)
            if name in clap_defaults and expected is not None:
                check(documented == expected, f"deploy/.env.example:{e['line']}",
                      f"{name}: Default: {documented!r} but the source says {expected!r}")
            elif name in clap_defaults:
                check(documented.startswith("unset"), f"deploy/.env.example:{e['line']}",
                      f"{name} has no default in the source, so 'Default:' should say unset")
            if not e["active"] and expected is not None and e["value"]:
                check(e["value"] == expected, f"deploy/.env.example:{e['line']}",
                      f"commented {name}={e['value']} differs from its default {expected}")
        print(f"  {len(env_entries)} settings listed, {len(settings)} read by the binaries")
        secret_like = re.compile(r"(KEY|SECRET|PASS|PASSWORD|TOKEN|CREDENTIALS)$|^AMQP_URL$")
        placeholder = re.compile(r"change[-_]?me|placeholder|example", re.I)
        for name, e in env_entries.items():
            if e["active"] and secret_like.search(name) and e["value"]:
                check(bool(placeholder.search(e["value"])), f"deploy/.env.example:{e['line']}",
                      f"{name} holds a value that is not an obvious placeholder")

# --- 4. docker compose ---------------------------------------------------------------------------

section("deploy/docker-compose.yml")
with guard("deploy/docker-compose.yml"):
    compose_path = DEPLOY / "docker-compose.yml"
    compose = one(compose_path) or {}
    services = compose.get("services", {})
    for svc in ("rabbitmq", "qdrant", "firestore", "publisher", "worker", "prometheus", "grafana"):
        check(svc in services, "docker-compose.yml", f"service {svc} missing")
    worker_svc = services.get("worker", {})
    replicas = (worker_svc.get("deploy") or {}).get("replicas")
    worker_like = [s for s in services if s.startswith("worker")]
    check(replicas == 3 or len(worker_like) >= 3, "docker-compose.yml", "three worker replicas expected")


    def mounts(svc: dict) -> list[tuple[str, str]]:
        out = []
        for v in svc.get("volumes", []) or []:
            if isinstance(v, str):
                parts = v.split(":")
                out.append((parts[0], parts[1] if len(parts) > 1 else ""))
            elif isinstance(v, dict):
                out.append((v.get("source", ""), v.get("target", "")))
        return out


    for name, svc in services.items():
        for src, _ in mounts(svc):
            if src.startswith((".", "/")):
                check((DEPLOY / src).exists(), f"docker-compose.yml service {name}", f"mounted {src} does not exist")
    rabbit = services.get("rabbitmq", {})
    plugins = [(s, t) for s, t in mounts(rabbit) if t == "/etc/rabbitmq/enabled_plugins"]
    if check(bool(plugins), "docker-compose.yml rabbitmq", "no enabled_plugins file mounted"):
        text = (DEPLOY / plugins[0][0]).read_text()
        for plugin in ("rabbitmq_management", "rabbitmq_prometheus"):
            check(plugin in text, rel(DEPLOY / plugins[0][0]), f"{plugin} not enabled")
    check("qdrant/qdrant" in str(services.get("qdrant", {}).get("image", "")), "docker-compose.yml qdrant", "not the qdrant/qdrant image")
    fs_cmd = " ".join(map(str, services.get("firestore", {}).get("command", []) or []))
    check("emulators firestore start" in fs_cmd and "0.0.0.0" in fs_cmd, "docker-compose.yml firestore",
          "should run `gcloud emulators firestore start --host-port=0.0.0.0:...`")


    def duration_s(v) -> float:
        m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(v or ""))
        return (int(m.group(1) or 0) * 60 + int(m.group(2) or 0)) if m else 0


    for name in ("publisher", "worker"):
        svc = services.get(name, {})
        env = svc.get("environment", {}) or {}
        build = svc.get("build") or {}
        if build:
            check((ROOT / "deploy" / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
                  == (DEPLOY / "Dockerfile").resolve(), f"docker-compose.yml {name}", "does not build deploy/Dockerfile")
        for key in ("AMQP_URL", "RECALL_API_KEY"):
            check(key in env, f"docker-compose.yml {name}", f"{key} not set")
        check(duration_s(svc.get("stop_grace_period")) > DRAIN_GRACE, f"docker-compose.yml {name}",
              f"stop_grace_period must exceed RECALL_GRACE_SECONDS ({DRAIN_GRACE}s)")
        listen = env.get("RECALL_WORKER_LISTEN" if name == "worker" else "RECALL_LISTEN", "")
        check(str(listen).startswith("0.0.0.0:"), f"docker-compose.yml {name}", "must listen on 0.0.0.0 inside the container")
    check("RECALL_WEBHOOK_SECRET" in (services.get("publisher", {}).get("environment") or {}),
          "docker-compose.yml publisher", "RECALL_WEBHOOK_SECRET not set")
    compose_text = compose_path.read_text() if compose_path.is_file() else ""
    for m in re.finditer(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?][^}]*)?\}", compose_text):
        var, op = m.group(1), m.group(2) or ""
        if op.lstrip(":").startswith("-"):
            continue
        e = env_entries.get(var)
        check(e is not None and e["active"], "docker-compose.yml", f"${{{var}}} needs an active {var}= line in .env.example")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_deploy = Path(tmp) / "deploy"
        subprocess.run(["cp", "-r", str(DEPLOY), str(tmp_deploy)], check=True)
        subprocess.run(["cp", str(env_path), str(tmp_deploy / ".env")], check=True)
        cmd = shlex.split(os.environ["CHECK_COMPOSE"]) + ["-f", str(tmp_deploy / "docker-compose.yml"), "config", "-q"]
        r = run(cmd, cwd=tmp_deploy)
        check(r.returncode == 0, "docker-compose.yml", f"`{os.environ['CHECK_COMPOSE']} config` rejects it: {r.stderr.strip()}")
        print(f"  {os.environ['CHECK_COMPOSE']} config: {'ok' if r.returncode == 0 else 'FAILED'}")

# --- 5. Dockerfile and .dockerignore -------------------------------------------------------------

section("deploy/Dockerfile and .dockerignore")
with guard("deploy/Dockerfile and .dockerignore"):
    dockerfile = (DEPLOY / "Dockerfile").read_text() if (DEPLOY / "Dockerfile").is_file() else ""
    check(bool(dockerfile), "deploy/Dockerfile", "missing")
    root_manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    crate_features = {}
    for crate in ("worker", "publisher"):
        manifest = tomllib.loads((ROOT / crate / "Cargo.toml").read_text())
        pkg = manifest["package"]["name"]
        crate_features[pkg] = set(manifest.get("features", {}))
        check(f"-p {pkg}" in dockerfile, "deploy/Dockerfile", f"does not build -p {pkg}")
        check(f"/out/{pkg}" in dockerfile or f"release/{pkg}" in dockerfile, "deploy/Dockerfile", f"does not ship {pkg}")
    m = re.search(r'^ARG FEATURES="([^"]*)"', dockerfile, re.M)
    if check(m is not None, "deploy/Dockerfile", 'no `ARG FEATURES="..."` build argument'):
        for feature in re.split(r"[\s,]+", m.group(1).strip()):
            for pkg, feats in crate_features.items():
                check(not feature or feature in feats, "deploy/Dockerfile", f"feature {feature} missing from {pkg}'s [features]")
    check('--features "${FEATURES}"' in dockerfile, "deploy/Dockerfile", "cargo build does not pass --features \"${FEATURES}\"")
    check(dockerfile.count("--release") >= 2, "deploy/Dockerfile", "both cargo builds should be --release")
    stubs = [root_manifest.get("lib", {}).get("path")] + [
        f"benches/{b['name']}.rs" if "path" not in b else b["path"] for b in root_manifest.get("bench", [])
    ]
    for stub in filter(None, stubs):
        check(stub in dockerfile, "deploy/Dockerfile", f"dependency layer lacks a stub for the root target {stub}")
    for member in root_manifest.get("workspace", {}).get("members", []):
        check(f"COPY {member}/Cargo.toml" in dockerfile, "deploy/Dockerfile", f"dependency layer lacks {member}/Cargo.toml")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "deploy/Dockerfile", "final image must run as non-root")
    exposed = set(re.findall(r"\d+", " ".join(re.findall(r"^EXPOSE\s+(.*)$", dockerfile, re.M))))
    for port in ("8080", "9090"):
        check(port in exposed, "deploy/Dockerfile", f"EXPOSE {port} missing")
    check("ca-certificates" in dockerfile, "deploy/Dockerfile", "runtime image lacks ca-certificates")
    ignore_path = ROOT / ".dockerignore"
    ignores = [l.strip() for l in ignore_path.read_text().splitlines() if l.strip() and not l.startswith("#")] if ignore_path.is_file() else []
    check(ignore_path.is_file(), ".dockerignore", "missing")
    for must in ("target", ".git", "models", "recall-data"):
        check(any(i.rstrip("/") == must for i in ignores), ".dockerignore", f"{must} not ignored")
    for src in re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.M):
        for item in src.split()[:-1]:
            item = item.rstrip("/")
            check((ROOT / item).exists(), "deploy/Dockerfile", f"COPY source {item} does not exist")
            excluded = False
            for pat in ignores:
                neg = pat.startswith("!")
                p = pat.lstrip("!").rstrip("/")
                if fnmatch.fnmatch(item, p) or item.startswith(p + "/") or fnmatch.fnmatch(item.split("/")[0], p):
                    excluded = not neg
            check(not excluded, ".dockerignore", f"excludes {item}, which the Dockerfile copies")

# --- 6. Kubernetes -------------------------------------------------------------------------------

section("deploy/kubernetes")
with guard("deploy/kubernetes"):
    k8s_objects: list[tuple[Path, dict]] = []
    for path, ds in docs.items():
        if path.parent == K8S and path.name != "kustomization.yaml":
            for d in ds:
                if check(isinstance(d, dict) and "kind" in d and "apiVersion" in d, rel(path), "object without kind/apiVersion"):
                    k8s_objects.append((path, d))


    def objs(kind: str, include_examples: bool = False):
        return [(p, d) for p, d in k8s_objects if d["kind"] == kind and (include_examples or not p.name.endswith(".example.yaml"))]


    def by_name(kind: str) -> dict[str, dict]:
        return {d["metadata"]["name"]: d for _, d in objs(kind)}


    def labels_match(selector: dict, labels: dict) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


    kinds: dict[str, int] = {}
    for _, d in k8s_objects:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    print("  " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    configmaps = by_name("ConfigMap")
    cm_env: dict[str, str] = {}
    for cm in configmaps.values():
        cm_env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
    secret_keys: dict[str, set] = {}
    for path, d in objs("Secret", include_examples=True):
        payload = {**(d.get("data") or {}), **(d.get("stringData") or {})}
        where = f"{rel(path)} Secret/{d['metadata']['name']}"
        if path.name.endswith(".example.yaml"):
            secret_keys[d["metadata"]["name"]] = set(payload)
            for k, v in payload.items():
                check(not v or "CHANGE_ME" in str(v), where, f"{k} is not a CHANGE_ME placeholder")
        else:
            check(not payload, where, "a Secret with data outside *.example.yaml: reference secrets, never embed them")
    for name in cm_env:
        check(name in settings, "deploy/kubernetes ConfigMap", f"{name} is not a setting the binaries read")
        check(not re.search(r"(KEY|SECRET|PASS|TOKEN)$|^AMQP_URL$", name), "deploy/kubernetes ConfigMap", f"{name} is a secret: use recall-secrets")
    grace_setting = to_int(cm_env.get("RECALL_GRACE_SECONDS", DRAIN_GRACE))
    check(grace_setting is not None, "deploy/kubernetes ConfigMap", "RECALL_GRACE_SECONDS is not a number")
    grace_setting = grace_setting if grace_setting is not None else DRAIN_GRACE

    deployments = objs("Deployment")
    check(len(deployments) >= 2, "deploy/kubernetes", "Deployments for the publisher and the worker expected")
    commands = set()
    for path, d in deployments:
        name = d["metadata"]["name"]
        where = f"{rel(path)} Deployment/{name}"
        spec = d["spec"]["template"]["spec"]
        pod_labels = d["spec"]["template"]["metadata"].get("labels", {})
        check(labels_match(d["spec"]["selector"].get("matchLabels", {}), pod_labels), where, "selector does not match the pod labels")
        psc = spec.get("securityContext") or {}
        check(psc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot must be true")
        for c in spec.get("containers", []):
            cw = f"{where} container {c['name']}"
            commands.update(c.get("command") or [])
            env = {e["name"]: e for e in c.get("env", [])}
            for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                p = c.get(probe) or {}
                check(p.get("httpGet", {}).get("path") == path_, cw, f"{probe} must GET {path_}")
                port = p.get("httpGet", {}).get("port")
                check(port in [pp.get("name") for pp in c.get("ports", [])] + [pp.get("containerPort") for pp in c.get("ports", [])],
                      cw, f"{probe} port {port} is not a container port")
            res = c.get("resources") or {}
            for k in ("cpu", "memory"):
                check(k in (res.get("requests") or {}), cw, f"resources.requests.{k} missing")
            check("memory" in (res.get("limits") or {}), cw, "resources.limits.memory missing")
            csc = c.get("securityContext") or {}
            check(csc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
            check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), cw, "capabilities must drop ALL")
            grace = grace_setting
            if "RECALL_GRACE_SECONDS" in env and "value" in env["RECALL_GRACE_SECONDS"]:
                grace = to_int(env["RECALL_GRACE_SECONDS"]["value"], grace)
            pre = ((c.get("lifecycle") or {}).get("preStop") or {})
            pre_cmd = (pre.get("exec") or {}).get("command") or []
            pause = int(pre_cmd[1]) if len(pre_cmd) == 2 and pre_cmd[0] == "sleep" and pre_cmd[1].isdigit() else 0
            pause += to_int((pre.get("sleep") or {}).get("seconds"), 0)
            tgps = spec.get("terminationGracePeriodSeconds")
            check(isinstance(tgps, int) and tgps > grace + pause, where,
                  f"terminationGracePeriodSeconds={tgps} must exceed the drain grace RECALL_GRACE_SECONDS={grace}"
                  + (f" plus the preStop pause {pause}s" if pause else ""))
            for e in c.get("env", []):
                if re.search(r"(KEY|SECRET|PASS|TOKEN)$|^AMQP_URL$", e["name"]):
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if check(ref is not None, cw, f"{e['name']} must come from a secretKeyRef"):
                        check(ref["key"] in secret_keys.get(ref["name"], set()), cw,
                              f"secretKeyRef {ref['name']}/{ref['key']} is not in secret.example.yaml")
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    check(ref["name"] in configmaps, cw, f"configMapKeyRef to unknown ConfigMap {ref['name']}")
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    check(ef["configMapRef"]["name"] in configmaps, cw, f"envFrom unknown ConfigMap {ef['configMapRef']['name']}")
                check("secretRef" not in ef or ef["secretRef"]["name"] in secret_keys, cw, "envFrom unknown Secret")
            listen = (env.get("RECALL_WORKER_LISTEN") or env.get("RECALL_LISTEN") or {}).get("value", "")
            check(listen.startswith("0.0.0.0:"), cw, "must listen on 0.0.0.0 (RECALL_LISTEN / RECALL_WORKER_LISTEN)")
            check("RECALL_API_KEY" in env, cw, "RECALL_API_KEY is required off loopback")
    for binary in ("recall-worker", "recall-publisher"):
        check(binary in commands, "deploy/kubernetes", f"no Deployment runs {binary}")
    dep_by_name = {d["metadata"]["name"]: d for _, d in deployments}
    services_k8s = by_name("Service")
    for name, svc in services_k8s.items():
        targets = [d for d in dep_by_name.values() if labels_match(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"]["labels"])]
        if check(bool(targets), f"Service/{name}", "selects no Deployment's pods"):
            port_names = {p.get("name") for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for p in svc["spec"].get("ports", []):
                check(p.get("targetPort") in port_names or isinstance(p.get("targetPort"), int), f"Service/{name}", f"targetPort {p.get('targetPort')} unknown")
    for name, pdb in by_name("PodDisruptionBudget").items():
        check(any(labels_match(pdb["spec"]["selector"].get("matchLabels", {}), d["spec"]["template"]["metadata"]["labels"]) for d in dep_by_name.values()),
              f"PodDisruptionBudget/{name}", "selects no Deployment's pods")
    for dep in dep_by_name:
        check(any(labels_match(p["spec"]["selector"].get("matchLabels", {}), dep_by_name[dep]["spec"]["template"]["metadata"]["labels"])
                  for p in by_name("PodDisruptionBudget").values()), f"Deployment/{dep}", "has no PodDisruptionBudget")

    scaled = by_name("ScaledObject")
    auths = by_name("TriggerAuthentication")
    check(bool(scaled), "deploy/kubernetes", "no KEDA ScaledObject")
    SO_KEYS = {"scaleTargetRef", "pollingInterval", "initialCooldownPeriod", "cooldownPeriod", "idleReplicaCount",
               "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
    RABBIT_META = {"host", "protocol", "mode", "value", "activationValue", "queueName", "vhostName", "hostFromEnv",
                   "usernameFromEnv", "passwordFromEnv", "useRegex", "excludeUnacknowledged", "pageSize", "operation",
                   "timeout", "unsafeSsl"}
    for name, so in scaled.items():
        where = f"ScaledObject/{name}"
        check(set(so["spec"]) <= SO_KEYS, where, f"unknown spec keys {sorted(set(so['spec']) - SO_KEYS)}")
        check(so["spec"]["scaleTargetRef"]["name"] in dep_by_name, where, "scaleTargetRef is not a Deployment here")
        check((to_int(so["spec"].get("minReplicaCount")) or 0) >= 1, where, "minReplicaCount must be >= 1: workers also count the events that create batch jobs")
        for t in so["spec"].get("triggers", []):
            if t.get("type") != "rabbitmq":
                continue
            meta = t.get("metadata", {})
            check(set(meta) <= RABBIT_META, where, f"unknown rabbitmq trigger metadata {sorted(set(meta) - RABBIT_META)}")
            check(meta.get("queueName") == BATCH_QUEUE, where, f"queueName must be the batch queue {BATCH_QUEUE}")
            check(meta.get("mode") in ("QueueLength", "MessageRate"), where, "mode must be QueueLength or MessageRate")
            check(str(meta.get("value", "")).replace(".", "", 1).isdigit(), where, "value must be a number in a string")
            ref = (t.get("authenticationRef") or {}).get("name")
            if check(ref in auths or "host" in meta or "hostFromEnv" in meta, where, "no broker URL (authenticationRef, host or hostFromEnv)"):
                for tr in (auths.get(ref, {}).get("spec", {}).get("secretTargetRef") or []):
                    check(tr["key"] in secret_keys.get(tr["name"], set()), f"TriggerAuthentication/{ref}",
                          f"secret {tr['name']}/{tr['key']} is not in secret.example.yaml")
    hpas = by_name("HorizontalPodAutoscaler")
    check(bool(hpas), "deploy/kubernetes", "no HPA alternative")
    for name, hpa in hpas.items():
        check(hpa["spec"]["scaleTargetRef"]["name"] in dep_by_name, f"HorizontalPodAutoscaler/{name}", "scaleTargetRef is not a Deployment here")
        check((to_int(hpa["spec"].get("minReplicas", 1)) or 0) >= 1, f"HorizontalPodAutoscaler/{name}", "minReplicas must be >= 1")
        for m_ in hpa["spec"].get("metrics", []):
            sel = (((m_.get("external") or {}).get("metric") or {}).get("selector") or {}).get("matchLabels", {})
            if "queue" in sel:
                check(sel["queue"] == BATCH_QUEUE, f"HorizontalPodAutoscaler/{name}", f"queue must be {BATCH_QUEUE}")
    for name, sm in by_name("ServiceMonitor").items():
        sel = sm["spec"]["selector"].get("matchLabels", {})
        chosen = [s for s in services_k8s.values() if labels_match(sel, s["metadata"].get("labels", {}))]
        check(len(chosen) >= 2, f"ServiceMonitor/{name}", "should select the publisher's and the worker's Services")
        for ep in sm["spec"].get("endpoints", []):
            check(ep.get("path", "/metrics") == "/metrics", f"ServiceMonitor/{name}", "path must be /metrics")
            for s in chosen:
                check(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]}, f"ServiceMonitor/{name}",
                      f"port {ep.get('port')} is not a port name of Service/{s['metadata']['name']}")
    check(set(by_name("ServiceMonitor")) != set(), "deploy/kubernetes", "no ServiceMonitor")
    rules_objs = by_name("PrometheusRule")
    if check(bool(rules_objs), "deploy/kubernetes", "no PrometheusRule"):
        for name, pr in rules_objs.items():
            check(pr["spec"]["groups"] == alerts_doc.get("groups"), f"PrometheusRule/{name}",
                  "groups differ from deploy/prometheus/alerts.yml: run scripts/check-deploy.sh --write-prometheusrule")

    kustomization = one(K8S / "kustomization.yaml") or {}
    listed = kustomization.get("resources", [])
    for r_ in listed:
        check((K8S / r_).is_file(), "kustomization.yaml", f"resource {r_} does not exist")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for f in sorted(files - set(listed)):
        check(f.endswith(".example.yaml") or f == "hpa.yaml", "kustomization.yaml", f"{f} is not listed")
    check(not any(f.endswith(".example.yaml") for f in listed), "kustomization.yaml", "lists an example file")
    check(not ("hpa.yaml" in listed and "keda.yaml" in listed), "kustomization.yaml", "lists both keda.yaml and hpa.yaml")

# --- 6b. Kubernetes schemas ------------------------------------------------------------------------

section("deploy/kubernetes schemas")
with guard("deploy/kubernetes schemas"):
    k8s_files = sorted({str(p) for p, d in k8s_objects if "." not in d["apiVersion"].split("/")[0] or d["apiVersion"].startswith(("apps/", "policy/", "autoscaling/", "batch/"))})
    r = run([os.environ["CHECK_KUBE_VALIDATE"], "--strict", "--quiet", "--no-warn", *k8s_files])
    check(r.returncode == 0, "kubernetes-validate", (r.stdout + r.stderr).strip())
    print(f"  kubernetes-validate --strict on {len(k8s_files)} files: {'ok' if r.returncode == 0 else 'FAILED'}")
    crds = [{"file": rel(p), "doc": d} for p, d in k8s_objects if d["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))]
    r = run(["node", os.environ["CHECK_CRD_VALIDATOR"]], input=json.dumps(crds))
    for line in r.stdout.splitlines():
        check(line.startswith("OK "), "CRD schema", line)
    check(r.returncode == 0 and len(r.stdout.splitlines()) == len(crds), "CRD schema", (r.stderr.strip() or "validator failed"))
    print(f"  CRD schemas (@kubernetes-models) on {len(crds)} custom resources: {'ok' if r.returncode == 0 else 'FAILED'}")

# --- 7. Prometheus ---------------------------------------------------------------------------------

section("deploy/prometheus")
with guard("deploy/prometheus"):
    promtool = os.environ["CHECK_PROMTOOL"]
    readme = (DEPLOY / "README.md").read_text() if (DEPLOY / "README.md").is_file() else ""
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    tests_doc = one(PROM / "alerts.test.yml") or {}
    tested = {t.get("alertname") for case in tests_doc.get("tests", []) for t in case.get("alert_rule_test", [])}
    alert_names = []
    for g in alerts_doc.get("groups", []):
        for rule in g.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            where = f"alerts.yml {name}"
            if "record" in rule:
                continue
            alert_names.append(name)
            check(bool(rule.get("expr")), where, "expr missing")
            check(bool(rule.get("for")), where, "for missing")
            check((rule.get("labels") or {}).get("severity") in ("info", "warning", "critical"), where, "labels.severity must be info, warning or critical")
            check(bool((rule.get("annotations") or {}).get("summary")), where, "annotations.summary missing")
            check(re.search(rf"^#+ .*\b{re.escape(name)}\b", readme, re.M) is not None, where, "no section in deploy/README.md")
            check(name in tested, where, "no unit test in alerts.test.yml")
            runbook = (rule.get("annotations") or {}).get("runbook", "")
            if runbook.startswith("deploy/README.md#"):
                check(runbook.split("#", 1)[1] in anchors, where, f"runbook {runbook}: no such heading")
    check(len(alert_names) == len(set(alert_names)), "alerts.yml", "duplicate alert names")
    scrape = one(PROM / "prometheus.yml") or {}
    jobs = {j["job_name"]: j for j in scrape.get("scrape_configs", [])}
    for job in ("recall-publisher", "recall-worker", "rabbitmq"):
        check(job in jobs, "prometheus.yml", f"scrape job {job} missing")
    check("alerts.yml" in scrape.get("rule_files", []), "prometheus.yml", "alerts.yml not in rule_files")
    for job, cfg in jobs.items():
        hosts = [t.split(":")[0] for sc in cfg.get("static_configs", []) for t in sc.get("targets", [])]
        hosts += [n for sd in cfg.get("dns_sd_configs", []) for n in sd.get("names", [])]
        for h in hosts:
            check(h in services or h == "localhost", "prometheus.yml", f"job {job} scrapes {h}, which is no compose service")
    for cmd, what in (
        ([promtool, "check", "config", str(PROM / "prometheus.yml")], "promtool check config"),
        ([promtool, "check", "rules", str(PROM / "alerts.yml")], "promtool check rules"),
        ([promtool, "test", "rules", str(PROM / "alerts.test.yml")], "promtool test rules"),
    ):
        r = run(cmd, cwd=PROM)
        check(r.returncode == 0, what, (r.stdout + r.stderr).strip())
        print(f"  {what}: {'ok' if r.returncode == 0 else 'FAILED'}")

# --- 8. Grafana --------------------------------------------------------------------------------------

section("deploy/grafana")
with guard("deploy/grafana"):
    dash_files = sorted((GRAFANA / "dashboards").glob("*.json"))
    check(bool(dash_files), "deploy/grafana/dashboards", "no dashboard")
    dash_exprs: list[tuple[str, str]] = []
    GRAFANA_SUBST = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    for path in dash_files:
        d = one(path) or {}
        where = rel(path)
        check(bool(d.get("uid")) and bool(d.get("title")), where, "uid and title required")
        variables = {v["name"]: v for v in (d.get("templating") or {}).get("list", [])}
        ids = []
        for panel in d.get("panels", []):
            ids.append(panel.get("id"))
            check("gridPos" in panel, where, f"panel {panel.get('title')} has no gridPos")
            if panel.get("type") == "row":
                continue
            ds = panel.get("datasource") or {}
            check(ds.get("uid") in ("${datasource}", "$datasource", "prometheus"), where, f"panel {panel.get('title')}: data source must be ${{datasource}}")
            targets = panel.get("targets") or []
            check(bool(targets) and all(t.get("expr") for t in targets), where, f"panel {panel.get('title')} has no query")
            for t in targets:
                expr = t.get("expr", "")
                for var in re.findall(r"\$\{?(\w+)", expr):
                    check(var.startswith("__") or var in variables, where, f"panel {panel.get('title')}: ${var} is not a dashboard variable")
                dash_exprs.append((f"{where} panel {panel.get('title')!r}", expr))
        check(len(ids) == len(set(ids)), where, "panel ids are not unique")
        for v in variables.values():
            if v.get("type") == "query":
                q = v.get("query")
                dash_exprs.append((f"{where} variable {v['name']}", q.get("query") if isinstance(q, dict) else str(q)))


    def grafana_to_promql(expr: str) -> str:
        for k, v in GRAFANA_SUBST.items():
            expr = expr.replace(k, v)
        expr = re.sub(r"\$\{prefix\}|\$prefix", PREFIX, expr)
        return re.sub(r"\$\{?\w+\}?", ".*", expr)


    rules_file = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)}
        for i, (_, e) in enumerate(dash_exprs) if not e.startswith("label_values(")
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules_file, f)
    r = run([promtool, "check", "rules", f.name])
    os.unlink(f.name)
    check(r.returncode == 0, "dashboard expressions", (r.stdout + r.stderr).strip())
    print(f"  promtool parses the {len(rules_file['groups'][0]['rules'])} dashboard expressions: {'ok' if r.returncode == 0 else 'FAILED'}")
    ds_doc = one(GRAFANA / "provisioning" / "datasources" / "prometheus.yml") or {}
    check(any(x.get("type") == "prometheus" and x.get("url") for x in ds_doc.get("datasources", [])),
          "grafana datasource provisioning", "no prometheus data source with a url")
    prov = one(GRAFANA / "provisioning" / "dashboards" / "recall.yml") or {}
    paths = [p_.get("options", {}).get("path") for p_ in prov.get("providers", [])]
    gmounts = dict((t, s) for s, t in mounts(services.get("grafana", {})))
    for p_ in paths:
        check(p_ in gmounts and (DEPLOY / gmounts[p_]).resolve() == (GRAFANA / "dashboards").resolve(),
              "grafana dashboard provisioning", f"path {p_} is not where compose mounts deploy/grafana/dashboards")
    check("/etc/grafana/provisioning" in gmounts, "docker-compose.yml grafana", "provisioning not mounted")

# --- 9. metric names, labels and queues --------------------------------------------------------------

section("recall_* metrics, labels and queue names")
with guard("recall_* metrics, labels and queue names"):
    TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
    FREE_VALUES = {"status": re.compile(r"^[1-5][0-9][0-9]$"), "method": re.compile(r"^[A-Z]+$")}
    # Texts to scan: the YAML files as written, the dashboards' decoded expressions (no JSON escapes).
    texts: list[tuple[Path, str]] = [
        (p_, p_.read_text())
        for p_ in (PROM / "alerts.yml", PROM / "alerts.test.yml", PROM / "prometheus.yml",
                   K8S / "prometheusrule.yaml", K8S / "hpa.yaml", K8S / "keda.yaml")
        if p_.is_file()
    ]
    for path in dash_files:
        texts.append((path, "\n".join(e for w, e in dash_exprs if w.startswith(rel(path)))))
    used = 0
    for path, text in texts:
        for m in re.finditer(r"\b(recall_[a-z0-9_]+)(\{([^}]*)\})?", text):
            name, matchers = m.group(1), m.group(3)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            known = metrics.get(name) or (metrics.get(base) if metrics.get(base, {}).get("histogram") else None)
            used += 1
            if not check(known is not None, rel(path), f"metric {name} does not exist in shared/src/metrics.rs"):
                continue
            if not matchers:
                continue
            allowed = known["labels"] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            for lm in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', matchers):
                label, op, value = lm.groups()
                check(label in allowed, rel(path), f"{name} has no label {label} (labels: {sorted(known['labels'])})")
                if label in TARGET_LABELS or "$" in value or op.startswith("!"):
                    continue
                if op == "=~":
                    if not re.fullmatch(r"[\w/{}-]+(\|[\w/{}-]+)*", value):
                        continue
                    values = value.split("|")
                else:
                    values = [value]
                for v in values:
                    if label in FREE_VALUES:
                        check(bool(FREE_VALUES[label].match(v)), rel(path), f"{name}{{{label}={v!r}}} is not a valid {label}")
                    elif label == "route":
                        check(v in routes or v == "unmatched", rel(path), f"{name}{{route={v!r}}}: no such route in shared/src/http")
                    elif (values_ := emitted_values(base, label)) is not None:
                        check(v in values_, rel(path), f"{name}{{{label}={v!r}}}: the source only emits {sorted(values_)}")
                    else:
                        check(v in string_literals, rel(path), f"{name}{{{label}={v!r}}}: the source never emits {v!r}")
    print(f"  {used} uses of recall_* metrics checked; literal label values: " + "; ".join(
        f"{n}{{{l}}}={sorted(emitted_values(n, l))}" for n in sorted(emitted) for l in label_order.get(n, [])
        if emitted_values(n, l) is not None))
    queue_uses = 0
    for path, text in texts:
        text = re.sub(r"\$\{prefix\}|\$prefix", PREFIX, text)
        for m in re.finditer(r'queue(=~|=)"((?:[^"\\]|\\.)*)"', text):
            op, value = m.groups()
            queue_uses += 1
            if op == "=":
                check(value in QUEUES, rel(path), f"queue {value!r} is not in the topology ({PREFIX}.batches, .parking, .events.N, .batches.retry.N)")
            else:
                try:
                    rx = re.compile(value.replace("\\\\", "\\"))
                    check(any(rx.fullmatch(q) for q in QUEUES), rel(path), f"queue regex {value!r} matches no queue of the topology")
                except re.error as e:
                    check(False, rel(path), f"queue regex {value!r}: {e}")
        for m in re.finditer(r"^\s*(?:queueName|queue):\s*(\S+)\s*$", text, re.M):
            queue_uses += 1
            check(m.group(1) in QUEUES, rel(path), f"queue {m.group(1)} is not in the topology")
    print(f"  {queue_uses} queue names checked against the topology")

# --- summary ---------------------------------------------------------------------------------------

print()
if failures:
    print(f"check-deploy: {len(failures)} problem(s):")
    for f_ in failures:
        print(f"  - {f_}")
print(f"check-deploy: {passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY
