#!/usr/bin/env bash
# Rebuilds watch.bpf.o from watch.bpf.c: clang (14 or later) for the BPF target,
# libbpf's headers (Debian: libbpf-dev), llvm-strip. The object is committed, so
# building the agent needs none of these; CI rebuilds it and fails if the
# committed one differs (`bash build.sh --check`).
#
# -g gives the BTF the loader needs for CO-RE; the DWARF is stripped afterwards
# and the source directory is mapped to '.', so the bytes do not depend on where
# the checkout lives.
set -euo pipefail
cd "$(dirname "$0")"
out=watch.bpf.o
[ "${1:-}" = "--check" ] && out=$(mktemp --suffix=.bpf.o)
clang -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -fmacro-prefix-map="$PWD"=. \
    -c watch.bpf.c -o "$out"
llvm-strip -g "$out" 2>/dev/null || llvm-strip-14 -g "$out"
if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$out" watch.bpf.o; then
        echo "bpf/watch.bpf.o is stale: run crates/clientgone-agent/bpf/build.sh and commit it" >&2
        rm -f "$out"; exit 1
    fi
    rm -f "$out"
fi
