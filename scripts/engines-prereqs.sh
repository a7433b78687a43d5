#!/usr/bin/env bash
# What the engine tests of cortex-engines need, started or built once: a private dockerd, a
# llama-server built from source and a Python with the `gguf` package. Prints the variables the
# tests read; source it (`. scripts/engines-prereqs.sh`) to keep them in your shell.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/lib/services.sh
. scripts/lib/engines.sh

ensure_dockerd
ensure_llama_server
ensure_gguf_python

echo "export CORTEX_TEST_DOCKER_HOST=$CORTEX_TEST_DOCKER_HOST"
echo "export CORTEX_TEST_LLAMA_SERVER=$CORTEX_TEST_LLAMA_SERVER"
echo "export CORTEX_TEST_GGUF_PYTHON=$CORTEX_TEST_GGUF_PYTHON"
