#!/usr/bin/env bash
# Builds the container images (docs/deployment.md, "Building without registry access") with podman or docker,
# whichever runs here, also on a machine that reaches only the package registries:
#
#   scripts/build-images.sh [--setup] [--setup-only] [--fresh] [serve] [train] [gpu]   (no target: all three)
#   make images                                                                         (the same, all three)
#
# --fresh: no layer cache (`build --no-cache`), so the build seconds it records are a whole build's. Without
#   it, unchanged layers are reused, and a recorded build time from an earlier --fresh build is kept.
#
# --setup (root, apt): installs podman, buildah, runc and mmdebstrap when no engine runs, and gives podman
#   what this kind of VM needs (/etc/containers/containers.conf.d/50-llmrec.conf: runc, since crun refuses
#   a cgroup v1 layout, and default ulimits within the hard limits). Idempotent; --setup-only stops there.
#
# Settings (environment), each with a default that works here and on a laptop with registry access:
#   ENGINE=podman|docker      default: podman if it answers, else docker if its daemon answers
#   PYTHON_IMAGE=ref          base of ./Dockerfile; default python:3.11-slim-bookworm if present or pullable,
#                             else a local Debian 12 base (Python 3.11) made with mmdebstrap, tagged
#                             localhost/llmrec-python:3.11-bookworm (LLMREC_DEBIAN_MIRROR to pick a mirror)
#   CUDA_IMAGE=ref            base of Dockerfile.gpu; default nvidia/cuda:... if present or pullable, else the
#                             Python base above as a stand-in (the image then serves on CPU only)
#   LLMREC_CA_BUNDLE=file     CA bundle for pip inside the build (a TLS-intercepting proxy); default: the
#                             host's PIP_CERT / REQUESTS_CA_BUNDLE / SSL_CERT_FILE / pip's `cert`, if a file.
#                             Passed as a build secret: mounted for the pip steps, never stored in a layer.
#                             LLMREC_CA_BUNDLE=none passes none.
#   LLMREC_WHEELS=dir         local wheel folder for the train image (the CPU torch wheel); default: the
#                             host's PIP_FIND_LINKS / pip's `find-links` if it is a folder holding
#                             torch-2.13.0*.whl. Passed as a build context, bind-mounted, never copied.
#                             Without one, the train image takes torch from PyTorch's CPU index.
#
# Writes benchmarks/results/images.{json,md}: per image its size, build seconds, engine and base (the
# container test suite adds start-up times to the same file).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[images] $*" >&2; }
die() { say "$*"; exit 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
LOCAL_BASE=localhost/llmrec-python:3.11-bookworm
DEFAULT_PYTHON_IMAGE=python:3.11-slim-bookworm
DEFAULT_CUDA_IMAGE=$(sed -n 's/^ARG CUDA_IMAGE=//p' Dockerfile.gpu)
RESULTS=benchmarks/results/images.json

setup=0 setup_only=0 fresh=0 targets=()
for arg in "$@"; do
  case $arg in
    --setup) setup=1 ;;
    --setup-only) setup=1 setup_only=1 ;;
    --fresh) fresh=1 ;;
    serve|train|gpu) targets+=("$arg") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (targets: serve train gpu; options: --setup --setup-only)" ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(serve train gpu)

engine_runs() { # engine name -> 0 if it can build and run here
  case $1 in
    podman) command -v podman >/dev/null && podman info >/dev/null 2>&1 ;;
    docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

hard_limit() { # ulimit flag, cap -> the hard limit, capped (podman's defaults exceed some VMs' limits)
  local v; v=$(ulimit -H "$1")
  if [[ $v == unlimited || $v -gt $2 ]]; then echo "$2"; else echo "$v"; fi
}

do_setup() {
  if ! engine_runs podman && ! engine_runs docker; then
    [[ $(id -u) == 0 ]] || die "no container engine, and installing one needs root (apt-get install podman)"
    command -v apt-get >/dev/null || die "no container engine, and no apt-get to install podman with"
    say "installing podman, buildah, runc, mmdebstrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends podman buildah runc mmdebstrap uidmap >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman buildah runc mmdebstrap uidmap >/dev/null; } \
      || die "apt-get could not install podman"
  fi
  if command -v podman >/dev/null && [[ $(id -u) == 0 ]]; then
    local conf=/etc/containers/containers.conf.d/50-llmrec.conf
    if [[ ! -f $conf ]]; then
      mkdir -p "$(dirname "$conf")"
      {
        echo "# Written by llmrec's scripts/build-images.sh --setup (docs/deployment.md)."
        echo "[containers]"
        echo "# podman's default nofile (1048576) is above this machine's hard limit: containers would not start"
        echo "default_ulimits = [\"nofile=$(hard_limit -n 1048576):$(hard_limit -n 1048576)\", \"nproc=$(hard_limit -u 32768):$(hard_limit -u 32768)\"]"
        if command -v runc >/dev/null; then
          echo "[engine]"
          echo "# crun refuses a cgroup v1 layout like this VM's; runc runs on both"
          echo "runtime = \"runc\""
        fi
      } > "$conf"
      say "wrote $conf"
    fi
  fi
  if ! command -v mmdebstrap >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null 2>&1 || true
  fi
}

[[ $setup == 1 ]] && do_setup
[[ $setup_only == 1 ]] && { engine_runs podman || engine_runs docker || die "no container engine runs"; exit 0; }

ENGINE=${ENGINE:-}
if [[ -z $ENGINE ]]; then
  if engine_runs podman; then ENGINE=podman
  elif engine_runs docker; then ENGINE=docker
  else die "neither podman nor a docker daemon answers here (scripts/build-images.sh --setup installs podman, as root with apt)"
  fi
fi
engine_runs "$ENGINE" || die "$ENGINE does not answer (\`$ENGINE info\` fails)"

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
pullable() { have_image "$1" || timeout 600 "$ENGINE" pull -q "$1" >/dev/null 2>&1; }

make_local_base() { # a Debian 12 rootfs with Python 3.11, the same Python as python:3.11-slim-bookworm
  have_image "$LOCAL_BASE" && return 0
  command -v mmdebstrap >/dev/null || die "no base image: $DEFAULT_PYTHON_IMAGE cannot be pulled and mmdebstrap is missing (--setup installs it, or set PYTHON_IMAGE)"
  local mirror=${LLMREC_DEBIAN_MIRROR:-http://deb.debian.org/debian} tmp start
  tmp=$(mktemp -d)
  start=$SECONDS
  say "making $LOCAL_BASE with mmdebstrap from $mirror (about a minute)"
  mmdebstrap --quiet --variant=minbase --include=passwd,python3,python3-venv,python-is-python3,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$tmp/base.tar" "$mirror" "deb ${mirror%/debian}/debian-security bookworm-security main" \
    || { rm -rf "$tmp"; die "mmdebstrap failed"; }
  "$ENGINE" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tmp/base.tar" "$LOCAL_BASE" >/dev/null
  rm -rf "$tmp"
  base_made_s=$((SECONDS - start))
  say "made $LOCAL_BASE in $base_made_s s"
}

if [[ -z ${PYTHON_IMAGE:-} ]]; then
  if pullable "$DEFAULT_PYTHON_IMAGE"; then PYTHON_IMAGE=$DEFAULT_PYTHON_IMAGE
  else say "$DEFAULT_PYTHON_IMAGE cannot be pulled here: using a local base"; make_local_base; PYTHON_IMAGE=$LOCAL_BASE
  fi
fi

ca=${LLMREC_CA_BUNDLE:-}
if [[ -z $ca ]]; then
  for c in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" \
           "$(python3 -m pip config get global.cert 2>/dev/null || true)"; do
    [[ -n $c && -f $c ]] && { ca=$c; break; }
  done
fi
[[ $ca == none ]] && ca=""
[[ -z $ca || -f $ca ]] || die "LLMREC_CA_BUNDLE=$ca is not a file"

wheels=${LLMREC_WHEELS:-}
if [[ -z $wheels ]]; then
  for w in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
    if [[ -d $w ]] && compgen -G "$w/torch-2.13.0*.whl" >/dev/null; then wheels=$w; break; fi
  done
fi
[[ -z $wheels || -d $wheels ]] || die "LLMREC_WHEELS=$wheels is not a folder"

common=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[[ $ENGINE == podman ]] && common+=(--format docker)   # OCI format would drop HEALTHCHECK
[[ $fresh == 1 ]] && common+=(--no-cache)
[[ -n $ca ]] && common+=(--secret "id=pip-ca,src=$ca")
say "engine $ENGINE; base $PYTHON_IMAGE; CA bundle ${ca:-none}; wheel folder ${wheels:-none}"

declare -A built_s=() base_of=()
for target in "${targets[@]}"; do
  args=("${common[@]}")
  case $target in
    serve) image=llmrec-serve:$VERSION; args+=(-f Dockerfile --target serve); base_of[$target]=$PYTHON_IMAGE ;;
    train) image=llmrec-train:$VERSION; args+=(-f Dockerfile --target train)
           [[ -n $wheels ]] && args+=(--build-context "wheels=$wheels")
           base_of[$target]=$PYTHON_IMAGE ;;
    gpu)   image=llmrec-serve-gpu:$VERSION
           cuda=${CUDA_IMAGE:-}
           if [[ -z $cuda ]]; then
             if pullable "$DEFAULT_CUDA_IMAGE"; then cuda=$DEFAULT_CUDA_IMAGE
             else cuda=$PYTHON_IMAGE; say "$DEFAULT_CUDA_IMAGE cannot be pulled here: GPU image on the stand-in base $cuda (no CUDA runtime: serves on CPU)"
             fi
           fi
           args+=(-f Dockerfile.gpu --build-arg "CUDA_IMAGE=$cuda"); base_of[$target]=$cuda ;;
  esac
  say "building $image"
  start=$SECONDS
  "$ENGINE" build "${args[@]}" -t "$image" . || die "building $image failed"
  built_s[$target]=$((SECONDS - start))
  say "built $image in ${built_s[$target]} s"
done

# Results: merged into the existing file, so that building one image keeps the others' figures.
rows=()
for target in "${targets[@]}"; do
  case $target in serve) image=llmrec-serve:$VERSION ;; train) image=llmrec-train:$VERSION ;; gpu) image=llmrec-serve-gpu:$VERSION ;; esac
  size=$("$ENGINE" image inspect --format '{{.Size}}' "$image")
  rows+=("$target" "$image" "$size" "${built_s[$target]}" "${base_of[$target]}")
done
command -v python3 >/dev/null || { say "no python3 here: figures not written to $RESULTS"; exit 0; }
mkdir -p "$(dirname "$RESULTS")"
python3 - "$RESULTS" "$ENGINE" "$("$ENGINE" --version)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" \
  "$([[ -n $wheels ]] && echo local || echo index)" "$fresh" "${base_made_s:-}" "${rows[@]}" <<'EOF'
import datetime, json, sys
from pathlib import Path

path, engine, engine_version, cores, cpu, torch_from, fresh, base_made_s, *rows = sys.argv[1:]
out = Path(path)
data = json.loads(out.read_text()) if out.exists() else {}
data["command"] = "scripts/build-images.sh --fresh (make images); start-up: pytest tests/containers"
now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
if base_made_s:
    data["local_base"] = {"image": "localhost/llmrec-python:3.11-bookworm", "make_s": int(base_made_s), "made_at": now}
images = data.setdefault("images", {})
for i in range(0, len(rows), 5):
    target, image, size, seconds, base = rows[i:i + 5]
    entry = images.get(target, {})
    entry.update({"image": image, "size_mb": round(int(size) / 1e6), "base": base, "engine": engine_version,
                  "cores": int(cores), "cpu": cpu, "built_at": now})
    if target == "train":
        entry["torch_wheel"] = torch_from
    if fresh == "1" or "build_s" not in entry:  # keep a whole build's time over a cached rebuild's
        entry.update(build_s=int(seconds), layer_cache=fresh != "1", build_s_measured_at=now)
    images[target] = entry
out.write_text(json.dumps(data, indent=1) + "\n")
EOF
python3 scripts/images_report.py "$RESULTS"
