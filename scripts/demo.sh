#!/usr/bin/env bash
# The main job on the shipped example, no network once installed (pip needs the package index): install,
# provision examples/tiny-runnable-llama.gguf against its known digest, write the llama.cpp handoff, show that
# a second run is answered from the catalog, and say what to run next.
set -euo pipefail
cd "$(dirname "$0")/.."
# editable, like scripts/test.sh: a plain install would shadow a developer's editable one with a stale copy
python3 -m pip install -q -e .
demo="${DEMO_DIR:-$(mktemp -d -t mprov-demo-XXXXXX)}"
model=examples/tiny-runnable-llama.gguf
digest="sha256:$(sha256sum "$model" | cut -d' ' -f1)"
model-provisioner --cache-dir "$demo/cache" ensure "$model" --digest "$digest" --handoff-dir "$demo/out" --json
model-provisioner --cache-dir "$demo/cache" ensure "$model" --digest "$digest"
model-provisioner --cache-dir "$demo/cache" ls
echo "--- $demo/out/.runtime/engines/llamacpp.json"
cat "$demo/out/.runtime/engines/llamacpp.json"
echo "--- next: chat with it (docs/engines.md)"
if ! command -v llama-server >/dev/null; then
  echo "model-provisioner --cache-dir $demo/cache engines install llamacpp   # once; about 8 minutes on 2 cores"
fi
echo "model-provisioner --cache-dir $demo/cache run $model \"Hello\" --max-tokens 16 --digest $digest"
