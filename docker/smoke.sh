#!/usr/bin/env bash
# The repo's own docker-compose.yml, run for real with rootful podman and podman-compose, and
# checked through the host's ports (docker/smoke_checks.py); then `down -v`, leaving no
# container, volume or network behind, failed or not. .ci/run calls it after the tests.
#
# No registry is asked for anything unless told to: the base images are made here from
# Debian's packages — a debootstrapped bookworm with python3 and python3-venv
# (localhost/syncfab-base) and Debian's prometheus on it (localhost/syncfab-prometheus) — and
# handed to the same files a Docker user runs (the Dockerfile's BASE, compose's
# PROMETHEUS_IMAGE). SYNCFAB_BASE=python:3.11-slim PROMETHEUS_IMAGE=prom/prometheus:v2.54.1
# use registry images instead.
#
# Kept between runs: the debootstrapped tarball and the Prometheus image under
# $SYNCFAB_SMOKE_CACHE (/var/cache/syncfab-smoke), and podman's own image store. Needs root;
# installs podman, podman-compose, runc and debootstrap with apt-get when they are missing.
# Skips (one line, exit 0) only where podman cannot run at all.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=syncfab-smoke
CACHE=${SYNCFAB_SMOKE_CACHE:-/var/cache/syncfab-smoke}
PYTHON=${PYTHON:-python3}
IMAGE=localhost/syncfab:smoke
HOST_PORTS=(8101 8201 8301 7101 7102 7201 7202 7301 7302 9090 8401 7401 7402)
LOG=$(mktemp -t syncfab-smoke.XXXXXX)

skip() { echo "docker/smoke.sh: skipped: $*"; exit 0; }
fail() { echo "docker/smoke.sh: FAILED: $*" >&2; exit 1; }
quiet() { "$@" >>"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; fail "$* (log above, all of it in $LOG)"; }; }

# Phases are timed with bash's own clock (no bc): milliseconds since the epoch.
now_ms() { local us=${EPOCHREALTIME/./}; echo $((us / 1000)); }
seconds() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
SMOKE_START=$(now_ms)
PHASE_NAME="" PHASE_START=$SMOKE_START TIMINGS="" PASSED=0
phase() { # phase NAME: ends the one before (printing its time) and starts NAME
	local now took
	now=$(now_ms)
	if [[ -n $PHASE_NAME ]]; then
		took=$(seconds $((now - PHASE_START)))
		echo "docker/smoke.sh: $PHASE_NAME: $took s"
		TIMINGS+=$(printf '  %-14s %6s s' "$PHASE_NAME" "$took")$'\n'
	fi
	PHASE_NAME=$1 PHASE_START=$now
}

# -- tools ----------------------------------------------------------------------------------
phase "tools"
[[ $(id -u) == 0 ]] || skip "rootful podman needs root"
missing=()
for tool in podman podman-compose runc debootstrap; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
	command -v apt-get >/dev/null || skip "no ${missing[*]} here, and no apt-get to install them with"
	echo "docker/smoke.sh: installing ${missing[*]} (apt-get)"
	quiet apt-get update -q
	quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman podman-compose runc debootstrap
fi
"$PYTHON" -c "import syncfab.fabric.client" 2>/dev/null || fail "$PYTHON cannot import syncfab (pip install -e .)"

# Podman's defaults raise RLIMIT_NOFILE and RLIMIT_NPROC, which a root without
# CAP_SYS_RESOURCE (a sandbox) may not; crun refuses cgroup v1 hybrid mounts that runc takes.
mkdir -p "$CACHE"
cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$CACHE/containers.conf
export BUILDAH_FORMAT=docker # OCI images drop HEALTHCHECK
podman info >/dev/null 2>&1 || skip "podman cannot run here: $(podman info 2>&1 | tail -n 1)"

for port in "${HOST_PORTS[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		fail "host port $port is taken (compose publishes ${HOST_PORTS[*]}): stop what holds it"
	fi
done

# -- base images ----------------------------------------------------------------------------
phase "base images"
if [[ -n ${SYNCFAB_BASE:-} ]]; then
	BASE=$SYNCFAB_BASE
else
	BASE=localhost/syncfab-base:bookworm
	if ! podman image exists localhost/syncfab-debian:bookworm; then
		if [[ ! -s $CACHE/debian-bookworm.tar ]]; then
			echo "docker/smoke.sh: debootstrap bookworm with python3, python3-venv (once; cached in $CACHE)"
			rootfs=$CACHE/rootfs.partial
			rm -rf "$rootfs"
			quiet debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
				"${SYNCFAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
			rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
				"$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
			tar -C "$rootfs" -cf "$CACHE/debian-bookworm.tar.partial" .
			mv "$CACHE/debian-bookworm.tar.partial" "$CACHE/debian-bookworm.tar"
			rm -rf "$rootfs"
		fi
		quiet podman import "$CACHE/debian-bookworm.tar" localhost/syncfab-debian:bookworm
	fi
	# The base trusts what this machine trusts (a proxy's CA, say), so pip in the build
	# reaches PyPI as the host's does.
	context=$(mktemp -d)
	cp /etc/ssl/certs/ca-certificates.crt "$context/" 2>/dev/null || : >"$context/ca-certificates.crt"
	cat >"$context/Containerfile" <<-'EOF'
		FROM localhost/syncfab-debian:bookworm
		COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
		ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
	EOF
	quiet podman build -q -t "$BASE" "$context"
	rm -rf "$context"
fi
if [[ -z ${PROMETHEUS_IMAGE:-} ]]; then # (one named is pulled by compose)
	export PROMETHEUS_IMAGE=localhost/syncfab-prometheus:bookworm
	if ! podman image exists "$PROMETHEUS_IMAGE"; then
		if [[ -s $CACHE/prometheus.tar ]]; then
			quiet podman load -i "$CACHE/prometheus.tar"
		else
			echo "docker/smoke.sh: an image of Debian's prometheus (once; cached in $CACHE)"
			quiet podman build -q --build-arg BASE="$BASE" -t "$PROMETHEUS_IMAGE" \
				-f docker/prometheus-debian.Dockerfile docker
			quiet podman save -o "$CACHE/prometheus.tar" "$PROMETHEUS_IMAGE"
		fi
	fi
fi

# -- the project's image, built once (compose's three nodes share it) -----------------------
phase "image build"
quiet podman build --build-arg BASE="$BASE" -t "$IMAGE" -f docker/Dockerfile .
size_mb=$(($(podman image inspect "$IMAGE" --format '{{.Size}}') / 1000000))
echo "docker/smoke.sh: $IMAGE is $size_mb MB (on $BASE)"

# -- up -------------------------------------------------------------------------------------
compose() { podman-compose -p "$PROJECT" "$@"; }
scaled() { compose -f docker-compose.yml -f docker/compose.scale-out.yml "$@"; } # with n4
leftovers() { # what is left of the project: containers, volumes, networks
	local label=label=io.podman.compose.project=$PROJECT
	podman ps -aq --filter "$label"
	podman volume ls -q --filter "$label"
	podman network ls -q --filter "$label"
	if podman network exists "${PROJECT}_default"; then echo "${PROJECT}_default"; fi
}
down() {
	local status=$?
	trap - EXIT INT TERM
	if ((status != 0)); then
		for node in n1 n2 n3 prometheus; do
			echo "--- ${PROJECT}_${node}_1 (last lines)" >&2
			podman logs --tail 30 "${PROJECT}_${node}_1" >&2 2>&1 || true
		done
	fi
	phase "down -v"
	if ((status == 0)); then
		# Every node stops cleanly within the grace period: exit 0, not 137 (killed at its end).
		compose stop >>"$LOG" 2>&1 || true
		for node in n1 n2 n3; do
			code=$(podman inspect "${PROJECT}_${node}_1" --format '{{.State.ExitCode}}' 2>>"$LOG" || echo "?")
			if [[ $code != 0 ]]; then
				echo "docker/smoke.sh: FAILED: $node exited $code on compose stop" >&2
				status=1
			fi
		done
		((status != 0)) || PASSED=$((PASSED + 1))
	fi
	scaled down -v >>"$LOG" 2>&1 || true
	# What an older podman-compose leaves (its network), and anything a failed start left.
	podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f >>"$LOG" 2>&1 || true
	podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >>"$LOG" 2>&1 || true
	podman network rm -f "${PROJECT}_default" >>"$LOG" 2>&1 || true
	left=$(leftovers | tr '\n' ' ')
	phase ""
	echo "docker/smoke.sh: phases:"
	printf '%s' "$TIMINGS"
	printf '  %-14s %6s s\n' "total" "$(seconds $(($(now_ms) - SMOKE_START)))"
	if [[ -n ${left// /} ]]; then
		echo "docker/smoke.sh: FAILED: left behind: $left" >&2
		exit 1
	fi
	if ((status == 0)); then
		echo "docker/smoke.sh: ok, nothing left behind"
		echo "smoke: $((PASSED + 1)) passed, 0 failed"
	fi
	if ((status == 0)); then rm -f "$LOG"; else echo "docker/smoke.sh: its log: $LOG" >&2; fi
	exit "$status"
}
trap down EXIT
trap 'exit 130' INT TERM

phase "compose up"
export SYNCFAB_IMAGE=$IMAGE
quiet compose up -d --no-build
containers=""
for node in n1 n2 n3; do
	name=$(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
		--filter "label=com.docker.compose.service=$node" --format '{{.Names}}')
	[[ -n $name ]] || fail "no container for $node"
	containers+="${containers:+,}$node=$name"
done

# -- checks ---------------------------------------------------------------------------------
phase "checks"
"$PYTHON" docker/smoke_checks.py --engine podman --containers "$containers" || fail "checks (above)"
PASSED=$((PASSED + 6)) # its six phases
# The image's own HEALTHCHECK, as `depends_on: condition: service_healthy` runs it (podman
# without systemd runs it only when asked).
for pair in ${containers//,/ }; do
	podman healthcheck run "${pair#*=}" >>"$LOG" 2>&1 || fail "the image's healthcheck failed in ${pair#*=}"
done
echo "docker/smoke.sh: every node's image healthcheck passes"
PASSED=$((PASSED + 1))

# -- scale-out: the README's steps, a fourth node added and removed -------------------------
phase "scale out"
quiet scaled up -d --no-build n4
"$PYTHON" docker/smoke_checks.py --engine podman --containers "$containers" --scale-out || fail "scale-out (above)"
quiet scaled stop n4
n4=$(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
	--filter "label=com.docker.compose.service=n4" --format '{{.Names}}')
code=$(podman inspect "$n4" --format '{{.State.ExitCode}}')
[[ $code == 0 ]] || fail "n4 exited $code on stop"
quiet podman rm -f "$n4"
PASSED=$((PASSED + 1))
