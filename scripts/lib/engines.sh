# Shared by the scripts: what the inference-engine tests of cortex-engines need from outside the
# crate — a private Docker daemon, llama.cpp's `llama-server` built from source, and a Python
# with the `gguf` package that writes a tiny model. Sourced after scripts/lib/services.sh (it
# uses log, as_root and ensure_apt); every function exports the variable the tests read, and a
# second run reuses what the first one built or started.

# A Docker daemon of our own: its own data root, socket and pid file under target/dockerd, vfs
# storage (works inside any container), no iptables and no default bridge (there is no
# permission for either here). Containers reach nothing but the user-defined networks the tests
# create; the gateway reaches an engine on a port published on 127.0.0.1 (docker-proxy).
ensure_dockerd() {
  command -v dockerd >/dev/null && command -v docker-proxy >/dev/null || ensure_apt docker.io
  local root="$PWD/target/dockerd"
  local sock="$root/docker.sock"
  mkdir -p "$root"
  export CORTEX_TEST_DOCKER_HOST="unix://$sock"
  if [ -S "$sock" ] && DOCKER_HOST="$CORTEX_TEST_DOCKER_HOST" docker version >/dev/null 2>&1; then
    return
  fi
  log "starting a private dockerd ($sock)"
  rm -f "$sock" "$root/dockerd.pid"
  nohup dockerd \
    --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
    --data-root "$root/root" --exec-root "$root/exec" --pidfile "$root/dockerd.pid" \
    --host "unix://$sock" >"$root/dockerd.log" 2>&1 &
  for _ in $(seq 1 100); do
    DOCKER_HOST="$CORTEX_TEST_DOCKER_HOST" docker version >/dev/null 2>&1 && return
    sleep 0.2
  done
  tail -n 30 "$root/dockerd.log" >&2
  echo "dockerd did not come up on $sock" >&2
  return 1
}

# llama.cpp's server, from the llama.cpp source that llama-cpp-python's source distribution
# vendors (PyPI is the one place here that serves it). CPU only, no curl, portable (no -march
# =native, so the cached binary survives a move to another CPU), two jobs. The binary is cached
# under target/llama-server (or $CORTEX_LLAMA_SERVER_CACHE, for a cache that outlives a fresh
# clone), per llama-cpp-python version: later runs only export the path. A cold build takes
# about 8 minutes on two cores.
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ensure_llama_server() {
  local dir="${CORTEX_LLAMA_SERVER_CACHE:-$PWD/target/llama-server}"
  local bin="$dir/bin/llama-server-$LLAMA_CPP_PYTHON_VERSION"
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    export CORTEX_TEST_LLAMA_SERVER="$bin"
    return
  fi
  command -v cmake >/dev/null || ensure_apt cmake
  command -v g++ >/dev/null || ensure_apt g++
  log "building llama-server from llama-cpp-python's vendored llama.cpp (slow, once)"
  local started=$SECONDS
  mkdir -p "$dir/src"
  local sdist="$dir/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then
    python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$dir/src" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  fi
  rm -rf "$dir/extract" && mkdir -p "$dir/extract"
  tar -xzf "$sdist" -C "$dir/extract"
  local source
  source="$dir/extract/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  rm -rf "$dir/build"
  cmake -S "$source" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >"$dir/cmake.log" 2>&1 \
    || { tail -n 40 "$dir/cmake.log" >&2; return 1; }
  cmake --build "$dir/build" --target llama-server -j 2 >"$dir/build.log" 2>&1 \
    || { tail -n 40 "$dir/build.log" >&2; return 1; }
  mkdir -p "$dir/bin"
  cp "$dir/build/bin/llama-server" "$bin"
  rm -rf "$dir/extract"
  log "llama-server built in $((SECONDS - started))s"
  export CORTEX_TEST_LLAMA_SERVER="$bin"
}

# A Python with the `gguf` package (llama.cpp's own GGUF writer, on PyPI) for
# crates/cortex-engines/tests/write_tiny_gguf.py, which writes a tiny llama model with random
# weights and a small vocabulary — nothing is downloaded but the package.
ensure_gguf_python() {
  local venv="$PWD/target/gguf-venv"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
    log "creating a venv with the gguf package"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check gguf numpy
  fi
  export CORTEX_TEST_GGUF_PYTHON="$venv/bin/python"
}
