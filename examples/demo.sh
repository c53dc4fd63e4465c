#!/bin/sh
# The README's demo command: a fresh copy of the demo registry and a demo git repository
# under .demo/ (git-ignored), then the dispatcher on the root dispatcher.toml until every
# task is done, then its status and its workspace slots.
set -eu
cd "$(dirname "$0")/.."
rm -rf .demo
mkdir -p .demo
cp -R examples/demo/registry .demo/registry
examples/demo/make-origin.sh .demo/origin
cargo build --quiet
./target/debug/dispatcher run --until-idle
./target/debug/dispatcher status
./target/debug/dispatcher slots
