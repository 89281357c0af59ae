#!/usr/bin/env bash
# Build and test prerequisites that are not components of the stack: Debian packages the Rust
# build needs (librdkafka is compiled from source), and Debian's docker-compose, which validates
# docker-compose.yml without a Docker engine. Idempotent; `make deps`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=infra/env.sh
source "$here/env.sh"
# shellcheck source=infra/lib.sh
source "$here/lib.sh"
COMPONENT=deps

need cargo "install Rust (rustup) with the rustfmt and clippy components"
apt_install build-essential cmake pkg-config curl libcurl4-openssl-dev libssl-dev zlib1g-dev fonts-dejavu-core
# Optional: only for the compose file check; its absence must not stop a build.
# (a subshell, so a failed install warns instead of ending the script)
( apt_install docker-compose ) || warn "docker-compose could not be installed: the compose test will run its static checks only"
