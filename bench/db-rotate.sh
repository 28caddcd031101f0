#!/usr/bin/env bash
# Times `portainer-key-agent db rotate` on a large encrypted Portainer database
# against `cp` of the same file, in the same run, and prints a Markdown report.
#
# Usage: bench/db-rotate.sh [SIZE_MIB]   (default 1024)
# Environment: BENCH_DIR (default /dev/shm/portainer-db-bench), RUNS (default 5),
# AGENT (a prebuilt agent binary; default: build the release profile).
# Needs: cargo, hyperfine, golang-go, golang-github-coreos-bbolt-dev,
# golang-golang-x-crypto-dev.
set -euo pipefail

size_mib=${1:-1024}
work=${BENCH_DIR:-/dev/shm/portainer-db-bench}
runs=${RUNS:-5}
repo=$(cd "$(dirname "$0")/.." && pwd)

for tool in cargo go hyperfine; do
    command -v "$tool" >/dev/null || { echo "$tool not found; install it first" >&2; exit 1; }
done

rm -rf "$work"
mkdir -p "$work/data"
trap 'rm -rf "$work"' EXIT

agent=${AGENT:-}
if [ -z "$agent" ]; then
    (cd "$repo" && cargo build --release --quiet -p portainer-key-agent)
    agent="$repo/target/release/portainer-key-agent"
fi

GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$work/go-cache" \
    go build -o "$work/bbolt-reference" "$repo/tests/bbolt-reference/main.go"

printf 'old key\n' >"$work/old.key"
printf 'new key' >"$work/new.key"
"$work/bbolt-reference" make -out "$work/pristine.edb" -key "$work/old.key" -size-mib "$size_mib"
file_bytes=$(stat -c %s "$work/pristine.edb")

load=$(cut -d' ' -f1-3 /proc/loadavg)
hyperfine --style basic --runs "$runs" --warmup 1 \
    --export-markdown "$work/results.md" \
    --prepare "cp $work/pristine.edb $work/data/portainer.edb; rm -f $work/copy.edb" \
    --command-name "cp" "cp $work/data/portainer.edb $work/copy.edb" \
    --command-name "db rotate" \
    "$agent db rotate --db $work/data --old-key-file $work/old.key --new-key-file $work/new.key"

"$work/bbolt-reference" check -db "$work/data/portainer.edb" -key "$work/new.key" >/dev/null

echo
echo "## db rotate vs cp, $(date -u +%Y-%m-%d)"
echo
echo "- file: $file_bytes bytes, in $(df --output=fstype "$work" | tail -1) at $work"
echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB memory"
echo "- kernel: $(uname -r); rustc: $(rustc --version | cut -d' ' -f2); load average before the run: $load"
echo
cat "$work/results.md"
