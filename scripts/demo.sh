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
cat <<NEXT
--- next: serve it (needs llama-server on PATH, or --binary PATH; docs/engines.md)
model-provisioner --cache-dir $demo/cache up $model --digest $digest --port 8080
curl -N localhost:8080/completion -d '{"prompt": "Hello", "n_predict": 8, "stream": true}'
model-provisioner --cache-dir $demo/cache down
NEXT
