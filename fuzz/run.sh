#!/usr/bin/env bash
# Fuzzes every parser of outside input a node has: each target 1,000,000
# times (or $1), in a release build on the stable toolchain. Prints one line
# a target (executions, rate, inputs accepted, slowest, findings) and exits
# 1 if any input made a parser panic; such inputs are kept in
# fuzz/findings/ (replay one with `--replay FILE TARGET`).
# Usage: fuzz/run.sh [EXECUTIONS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
execs=${1:-1000000}
seed=${2:-$(date +%s)}
cargo build --release --locked -p wasmtwin-fuzz
exec target/release/wasmtwin-fuzz --execs "$execs" --seed "$seed" --findings fuzz/findings
