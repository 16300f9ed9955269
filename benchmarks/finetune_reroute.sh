#!/usr/bin/env bash
# Short fine-tunes of the demo model with a re-routing constraint active, each with its
# same-steps control (no constraint), on the GPU when present:
#
#   benchmarks/finetune_reroute.sh OUT_DIR "gpu-adaptive --min-gpu-share 0.1 --routing-weights keep" "gpu-limited --max-gpus 3"
#
# Each quoted argument is one `routelens finetune --policy ...` setting; finetune.json of each lands in
# OUT_DIR/<n>.json (the fine-tuned weights stay in a temporary folder). STEPS, EVAL_TOKENS and
# LR may be set in the environment. Runs from a checkout without installing (PYTHONPATH=.).
set -euo pipefail
out=${1:?usage: finetune_reroute.sh OUT_DIR POLICY_ARGS...}
shift
mkdir -p "$out"
work=$(mktemp -d)
n=0
for setting in "$@"; do
    n=$((n + 1))
    # shellcheck disable=SC2086
    PYTHONPATH=. python3 -c 'import sys; from routelens.cli import main; sys.exit(main(sys.argv[1:]))' \
        finetune --policy $setting --steps "${STEPS:-200}" --eval-tokens "${EVAL_TOKENS:-32768}" \
        --lr "${LR:-3e-4}" --train-tokens 262144 --control --no-progress --out "$work/$n"
    cp "$work/$n/finetune.json" "$out/$n.json"
done
rm -rf "$work"
