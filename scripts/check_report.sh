#!/usr/bin/env bash
# Render a run's report.html in headless Chromium and save a screenshot to look at.
#
#   scripts/check_report.sh [RUN_DIR] [OUT.png]
#
# Without RUN_DIR a 4-step MNIST run (capsnet_tiny) is made under a temporary folder first.
# Needs `chromium` (Debian: apt-get install -y chromium). Prints the screenshot's path; open it
# and check: numbers formatted, every picture captioned and no taller than the window,
# separate loss / accuracy / lr curves, per-class and data tables, the version in the footer.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="${1:-}"
out="${2:-/tmp/capsule_kit_report.png}"
if [[ -z "$run_dir" ]]; then
  tmp="$(mktemp -d)"
  python -m capsule_kit.run recipes/mnist.yaml model.name=capsnet_tiny data.train_limit=64 data.test_limit=64 \
    trainer.batch_size=16 trainer.max_steps=4 trainer.log_every=1 trainer.threads=1 trainer.progress=false \
    "output_dir=$tmp" >/dev/null
  run_dir="$(ls -d "$tmp"/*/ | head -1)"
fi
page="$(cd "$run_dir" && pwd)/report.html"
[[ -f "$page" ]] || { echo "error: no report.html in $run_dir" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || true)"
[[ -n "$browser" ]] || { echo "error: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
# --no-sandbox: root in a container; file:// only, the page must need no network
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,3000 \
  --screenshot="$out" "file://$page" 2>/dev/null
echo "$out (from $page)"
