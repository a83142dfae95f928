#!/usr/bin/env bash
# Run a command, announce it, and report how long it took: scripts/timed.sh "label" cmd args...
label=$1
shift
start=$(date +%s)
echo "==> [$label] $(printf '%q ' "$@")"
"$@"
status=$?
echo "<== [$label] $(( $(date +%s) - start )) s (exit $status)"
exit $status
