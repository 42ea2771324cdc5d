#!/usr/bin/env bash
# The main job on the shipped example, no network: install, provision examples/tiny-llama.gguf against its
# known digest, write the llama.cpp handoff, then show that a second run is answered from the catalog.
set -euo pipefail
cd "$(dirname "$0")/.."
# editable, like scripts/test.sh: a plain install would shadow a developer's editable one with a stale copy
python3 -m pip install -q -e .
demo="${DEMO_DIR:-$(mktemp -d -t mprov-demo-XXXXXX)}"
digest="sha256:$(sha256sum examples/tiny-llama.gguf | cut -d' ' -f1)"
model-provisioner --cache-dir "$demo/cache" ensure examples/tiny-llama.gguf \
  --digest "$digest" --handoff-dir "$demo/out" --json
model-provisioner --cache-dir "$demo/cache" ensure examples/tiny-llama.gguf --digest "$digest"
model-provisioner --cache-dir "$demo/cache" ls
echo "--- $demo/out/.runtime/engines/llamacpp.json"
cat "$demo/out/.runtime/engines/llamacpp.json"
