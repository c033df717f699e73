#!/bin/bash
# SPDX-License-Identifier: MIT
# Sourced by scripts/demo and scripts/test: install the Debian packages that
# are missing (and only those, so a warm machine stays fast).
#   need_packages build        what it takes to build
#   need_packages build test   ... and to run every test
#   need_packages build fuzz   ... and to build the libFuzzer targets (scripts/fuzz)

BUILD_PACKAGES=(gcc libc6-dev meson ninja-build pkg-config
    libuv1-dev libcurl4-openssl-dev libsystemd-dev libinih-dev libjson-c-dev libmicrohttpd-dev
    libssl-dev)
# python3: the example trainer and the integration tests; systemd: a real
# journald and systemd-analyze for the tests; util-linux: unshare.
RUN_PACKAGES=(python3 procps)
TEST_PACKAGES=(python3 systemd util-linux procps)
# clang's libFuzzer and sanitizer runtimes.
FUZZ_PACKAGES=(clang libclang-rt-14-dev)

need_packages() {
    local want=() missing=() p
    for set in "$@"; do
        case "$set" in
            build) want+=("${BUILD_PACKAGES[@]}") ;;
            run) want+=("${RUN_PACKAGES[@]}") ;;
            test) want+=("${TEST_PACKAGES[@]}") ;;
            fuzz) want+=("${FUZZ_PACKAGES[@]}") ;;
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
