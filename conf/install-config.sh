#!/bin/sh
# SPDX-License-Identifier: MIT
# meson install script: put the default configuration in place only when the
# administrator has none yet. $1 = the reference copy, $2 = the live path
# (both without DESTDIR).
set -eu
src="${DESTDIR:-}$1"
dst="${DESTDIR:-}$2"
if [ -e "$dst" ]; then
    echo "Keeping existing $2 (the default is in $1)"
    exit 0
fi
mkdir -p "$(dirname "$dst")"
install -m 0644 "$src" "$dst"
echo "Installed default configuration $2"
