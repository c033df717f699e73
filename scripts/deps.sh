#!/bin/bash
# SPDX-License-Identifier: MIT
# Sourced by scripts/demo and scripts/test: install the Debian packages that
# are missing (and only those, so a warm machine stays fast).
#   need_packages build        what it takes to build
#   need_packages build test   ... and to run every test
#   need_packages build fuzz   ... and to build the libFuzzer targets (scripts/fuzz)
#   need_packages stores       the real object stores of the upload tests
#                              (tests/integration/stores.py); then
#   need_npm_packages          their npm packages, into a cache dir

BUILD_PACKAGES=(gcc libc6-dev meson ninja-build pkg-config
    libuv1-dev libcurl4-openssl-dev libsystemd-dev libinih-dev libjson-c-dev libmicrohttpd-dev
    libssl-dev libexpat1-dev)
# python3: the example trainer and the integration tests; systemd: a real
# journald and systemd-analyze for the tests; util-linux: unshare.
RUN_PACKAGES=(python3 procps)
TEST_PACKAGES=(python3 systemd util-linux procps)
# clang's libFuzzer and sanitizer runtimes.
FUZZ_PACKAGES=(clang libclang-rt-14-dev)
# A real Ceph RADOS Gateway (1 mon + 1 memstore OSD + radosgw). node and npm
# run s3rver and Azurite: Debian's nodejs/npm only when no node/npm is on
# PATH already (e.g. from nodesource, whose nodejs conflicts with Debian's npm).
STORE_PACKAGES=(radosgw ceph-mon ceph-osd openssl)
# Keep in step with NPM_PACKAGES in tests/integration/stores.py: "cache-dir spec".
# azurite 3.36 and later need node >= 21; 3.35.0 runs on Debian's node 18 and on 20.
NPM_PACKAGES=("s3rver @20minutes/s3rver@5.0.0" "azurite azurite@3.35.0")

need_packages() {
    local want=() missing=() p
    for set in "$@"; do
        case "$set" in
            build) want+=("${BUILD_PACKAGES[@]}") ;;
            run) want+=("${RUN_PACKAGES[@]}") ;;
            test) want+=("${TEST_PACKAGES[@]}") ;;
            fuzz) want+=("${FUZZ_PACKAGES[@]}") ;;
            stores) want+=("${STORE_PACKAGES[@]}")
                command -v node >/dev/null || want+=(nodejs)
                command -v npm >/dev/null || want+=(npm) ;;
        esac
    done
    for p in "${want[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "Installing missing packages: ${missing[*]}"
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Install the npm packages of NPM_PACKAGES that are missing into
# ${SPOTWATCH_NPM_CACHE:-/var/cache/spotwatchd-tests/npm}/DIR (never globally;
# ~/.cache/spotwatchd-tests/npm when that is not writable).
# A marker file written after a complete install says it is there; a lock
# keeps a parallel test (stores.py installs on first use too) out meanwhile.
need_npm_packages() {
    local cache=${SPOTWATCH_NPM_CACHE:-/var/cache/spotwatchd-tests/npm} entry dir spec
    if [ -z "${SPOTWATCH_NPM_CACHE:-}" ] && ! { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; }; then
        cache=${XDG_CACHE_HOME:-$HOME/.cache}/spotwatchd-tests/npm   # as stores.py does when not root
    fi
    for entry in "${NPM_PACKAGES[@]}"; do
        read -r dir spec <<<"$entry"
        [ "$(cat "$cache/$dir/.spotwatch-installed" 2>/dev/null)" = "$spec" ] && continue
        echo "Installing npm package $spec into $cache/$dir"
        mkdir -p "$cache/$dir" || return 1
        [ -f "$cache/$dir/package.json" ] || echo '{"private": true}' > "$cache/$dir/package.json"
        ( cd "$cache/$dir" && flock 9 && npm install --no-audit --no-fund --loglevel=error "$spec" >/dev/null \
            && echo "$spec" > .spotwatch-installed ) 9>"$cache/$dir.lock" || return 1
    done
}
