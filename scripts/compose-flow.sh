#!/usr/bin/env bash
# The compose deployment run end to end on tiny data (docs/deployment.md, "Compose flow, proven"):
#
#   scripts/compose-flow.sh            (about 5 minutes on 2 cores once the serve and train images exist)
#
# 1. tiny assets on the host (a MovieLens-format data set, a tiny BERT encoder and a tiny causal LM, random
#    weights, written by models.tiny): nothing downloaded;
# 2. `compose up -d server` of deploy/compose.yaml over an empty repository (a host folder), then the one-off
#    `export` service (the train image) trains and exports both models into it, and the running server
#    loads them (RECSYS_POLL_SECONDS) and turns ready; one Recommend per model from the host;
# 3. Prometheus (Debian's package; its registry image cannot be pulled here) on the host scrapes the server
#    container's metrics port with deploy/prometheus/alerts.yml loaded; then the server is stopped and the
#    script waits for LlmrecDown to fire (its `for: 2m` included).
# Every step is timed into benchmarks/results/images.{json,md} ("compose"). Exits non-zero on any failure.
#
# Settings: COMPOSE (default podman-compose, else `docker compose`), LLMREC_GRPC_PORT / LLMREC_METRICS_PORT
# (50051 / 9095), PROMETHEUS_PORT (19090), PROMETHEUS (a prometheus binary; default the one scripts/setup.sh
# unpacked into .venv, else PATH, else unpacked from `apt-get download prometheus`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=.venv/bin/python
WORK=$ROOT/work/compose-flow
GRPC_PORT=${LLMREC_GRPC_PORT:-50051}
METRICS_PORT=${LLMREC_METRICS_PORT:-9095}
PROM_PORT=${PROMETHEUS_PORT:-19090}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)

say() { echo "[compose-flow] $*" >&2; }
server_container() {
  $ENGINE ps -aq --filter label=com.docker.compose.project=llmrec-flow --filter label=com.docker.compose.service=server | head -1
}
die() {
  say "FAILED: $*"
  local c; c=$(server_container 2>/dev/null || true)
  [[ -n $c ]] && { say "server log (last 30 lines):"; $ENGINE logs "$c" 2>&1 | tail -30 >&2; }
  exit 1
}
declare -A STEP=()
t0=$SECONDS
lap() { STEP[$1]=$((SECONDS - t0)); say "$1: ${STEP[$1]} s"; t0=$SECONDS; }

ENGINE=podman; [[ ${COMPOSE:-} == docker* ]] && ENGINE=docker
[[ -x $PY ]] || die "no .venv (make setup): the host writes the tiny assets and asks the server"
if [[ -z ${COMPOSE:-} ]]; then
  if command -v podman-compose >/dev/null; then COMPOSE=podman-compose
  elif docker compose version >/dev/null 2>&1; then COMPOSE="docker compose" ENGINE=docker
  else die "no podman-compose or docker compose (apt-get install podman-compose)"
  fi
fi
for image in "llmrec-serve:$VERSION" "llmrec-train:$VERSION"; do
  $ENGINE image inspect "$image" >/dev/null 2>&1 || die "image $image missing: scripts/build-images.sh serve train"
done
PROMETHEUS=${PROMETHEUS:-}
if [[ -z $PROMETHEUS ]]; then
  if [[ -x .venv/prometheus/usr/bin/prometheus ]]; then PROMETHEUS=.venv/prometheus/usr/bin/prometheus
  elif command -v prometheus >/dev/null; then PROMETHEUS=$(command -v prometheus)
  else
    mkdir -p "$WORK/deb" && (cd "$WORK/deb" && apt-get download -q prometheus >/dev/null) \
      && dpkg-deb -x "$WORK"/deb/prometheus_*.deb "$WORK/deb/root" || die "no prometheus binary (apt-get download prometheus failed)"
    PROMETHEUS=$WORK/deb/root/usr/bin/prometheus
  fi
fi

export COMPOSE_PROJECT_NAME=llmrec-flow LLMREC_REPOSITORY=$WORK/repository LLMREC_GRPC_PORT=$GRPC_PORT \
       LLMREC_METRICS_PORT=$METRICS_PORT
# The tiny assets reach the export service through an override file (podman-compose 1.0.3 ignores `run -v`).
compose() { $COMPOSE -p llmrec-flow -f deploy/compose.yaml -f "$WORK/compose.assets.yaml" "$@"; }
prom_pid=""
cleanup() {
  [[ -n $prom_pid ]] && kill "$prom_pid" 2>/dev/null
  compose down -v -t 15 >/dev/null 2>&1 || true
}
trap cleanup EXIT
assets_override() { mkdir -p "$WORK" && printf 'services:\n  export:\n    volumes: ["%s:/assets:ro"]\n' "$WORK/assets" > "$WORK/compose.assets.yaml"; }
assets_override && compose down -v -t 15 >/dev/null 2>&1 || true   # what an earlier, interrupted run left
rm -rf "$WORK" && mkdir -p "$WORK/repository" "$WORK/assets" && assets_override
chown 10001:10001 "$WORK/repository" 2>/dev/null || chmod 777 "$WORK/repository"  # the images' user writes it
lap setup

# 1. tiny assets, and the export service's script on them (the compose file's own script, tiny flags)
$PY - "$WORK/assets" > "$WORK/export.sh" <<'EOF'
import shlex, sys
from pathlib import Path
from models import tiny
host = Path(sys.argv[1]); inside = Path("/assets")
data = tiny.write_ml100k(host / "ml-100k"); enc = tiny.write_encoder(host / "encoder"); lm = tiny.write_causal_lm(host / "lm")
c = lambda p: inside / p.relative_to(host)  # noqa: E731
ck = Path("work/checkpoints")
lines = [["llmrec", "train", "tcf", *tiny.tcf_argv(c(enc), c(data), ck / "tcf")],
         ["llmrec", "export", "--checkpoint", str(ck / "tcf"), "--repository", "/models", "--name", "tiny-tcf", "--no-report", "--threads", "2"],
         ["llmrec", "train", "cllm4rec", *tiny.cllm4rec_argv(c(lm), c(data), ck / "cllm4rec")],
         ["llmrec", "export", "--checkpoint", str(ck / "cllm4rec"), "--repository", "/models", "--name", "tiny-cllm4rec", "--no-report", "--threads", "2"]]
print("\n".join(shlex.join(line) for line in lines))
EOF
chmod -R a+rX "$WORK/assets"
lap tiny_assets

# 2. server on the empty repository, then the one-off export into it
compose up -d --no-build server >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "compose up server"; }
code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT$1" || true; }
for _ in $(seq 300); do [[ $(code /healthz) == 200 ]] && break; sleep 0.2; done
[[ $(code /healthz) == 200 ]] || die "server /healthz never answered"
[[ $(code /readyz) == 503 ]] || die "server ready before any export: /readyz $(code /readyz)"
lap server_up_healthz

# (podman-compose 1.0.3 returns 0 whatever the container's exit code: the versions written are the check)
compose run --rm -T --no-deps export "$(cat "$WORK/export.sh")" >"$WORK/export.log" 2>&1 \
  || { tail -40 "$WORK/export.log"; die "export service"; }
for name in tiny-tcf tiny-cllm4rec; do
  [[ -f $WORK/repository/$name/1/manifest.json ]] || { tail -40 "$WORK/export.log"; die "the export wrote no $name/1"; }
done
lap export_train_and_export_both

serving() { $PY -m server.health_probe --target "127.0.0.1:$GRPC_PORT" --service "$1" >/dev/null 2>&1; }
for _ in $(seq 300); do serving tiny-tcf && serving tiny-cllm4rec && break; sleep 0.5; done
serving tiny-tcf && serving tiny-cllm4rec || die "the server did not load both exported models"
[[ $(code /readyz) == 200 ]] || die "both models SERVING but /readyz $(code /readyz)"
lap server_loaded_new_versions

$PY - "127.0.0.1:$GRPC_PORT" <<'EOF' || die "Recommend failed"
import sys
import grpc
from client import RecommenderClient
with RecommenderClient(sys.argv[1]) as c:
    names = sorted(m.name for m in c.list_models().models)
    assert names == ["tiny-cllm4rec", "tiny-tcf"], names
    for name in names:
        rec = c.recommend(name, user_id="1", top_k=5)
        assert len(rec.items) == 5, rec
        print(f"[compose-flow] {name}: user 1 -> {[i for i, _ in rec.items]}", file=sys.stderr)
    try:  # the compose file leaves admin off unless LLMREC_ADMIN_TOKEN is set
        c.upsert_items("tiny-tcf", [("x", "some text")])
        raise AssertionError("UpsertItems accepted without an admin token")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
EOF
lap recommend_both

# 3. Prometheus on the host, scraping the container's published metrics port, with the alert rules
cat > "$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: ["$ROOT/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: llmrec   # the job LlmrecDown watches
    static_configs: [{targets: ["127.0.0.1:$METRICS_PORT"]}]
EOF
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
prom_pid=$!
api() { curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/$1"; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin)['data']; print($1)"; }
for _ in $(seq 150); do
  [[ $(api 'query?query=recsys_model_serving%7Bmodel%3D%22%22%7D' 2>/dev/null | jq_py "d['result'][0]['value'][1] if d['result'] else ''" 2>/dev/null) == 1 ]] && break
  sleep 0.2
done
rules=$(api rules | jq_py "sum(len(g['rules']) for g in d['groups'])")
expected=$(grep -c '^ *- alert:' deploy/prometheus/alerts.yml)
[[ $rules == "$expected" ]] || die "Prometheus loaded $rules alert rules, alerts.yml has $expected"
health=$(api targets | jq_py "d['activeTargets'][0]['health']")
[[ $health == up ]] || die "scrape target health $health"
say "Prometheus $("$PROMETHEUS" --version 2>&1 | head -1 | cut -d' ' -f3): target up, $rules alert rules loaded, recsys_model_serving{model=\"\"} = 1"
lap prometheus_scraping

container=$(server_container)
[[ -n $container ]] || die "no server container found"
compose stop -t 30 server >/dev/null 2>&1
exit_code=$($ENGINE inspect --format '{{.State.ExitCode}}' "$container")
[[ $exit_code == 0 ]] || die "server exited $exit_code on stop"
lap server_stop_exit_0
stopped=$SECONDS

alert_for=$(python3 - <<'EOF'
import re
text = open("deploy/prometheus/alerts.yml").read()
print(re.search(r"alert: LlmrecDown\n(?:.*\n)*?\s+for: (\S+)", text).group(1))
EOF
)
state=""
for _ in $(seq 200); do
  state=$(api alerts | jq_py "next((a['state'] for a in d['alerts'] if a['labels']['alertname'] == 'LlmrecDown'), '')")
  [[ $state == pending && -z ${pending_s:-} ]] && pending_s=$((SECONDS - stopped)) && say "LlmrecDown pending after $pending_s s"
  [[ $state == firing ]] && break
  sleep 2
done
[[ $state == firing ]] || die "LlmrecDown not firing $((SECONDS - stopped)) s after the stop (state '$state')"
firing_s=$((SECONDS - stopped))
say "LlmrecDown firing $firing_s s after the server stopped (for: $alert_for)"
lap alert_firing

mkdir -p benchmarks/results
python3 - benchmarks/results/images.json "$COMPOSE" "${pending_s:-}" "$firing_s" "$alert_for" \
  "$("$PROMETHEUS" --version 2>&1 | head -1)" "${!STEP[@]}" -- "${STEP[@]}" <<'EOF'
import datetime, json, sys
from pathlib import Path
path, compose, pending, firing, alert_for, prom, *rest = sys.argv[1:]
cut = rest.index("--"); names, values = rest[:cut], rest[cut + 1:]
order = ["setup", "tiny_assets", "server_up_healthz", "export_train_and_export_both", "server_loaded_new_versions",
         "recommend_both", "prometheus_scraping", "server_stop_exit_0", "alert_firing"]
steps = dict(zip(names, map(int, values)))
out = Path(path)
data = json.loads(out.read_text()) if out.exists() else {}
data["compose"] = {"tool": compose, "prometheus": prom, "steps_s": {k: steps[k] for k in order if k in steps},
                   "alert": "LlmrecDown", "alert_for": alert_for, "alert_pending_after_stop_s": int(pending) if pending else None,
                   "alert_after_stop_s": int(firing),
                   "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
out.write_text(json.dumps(data, indent=1) + "\n")
EOF
python3 scripts/images_report.py benchmarks/results/images.json
say "done: benchmarks/results/images.md"
