# Shared by the benchmark scripts: `source benches/common.sh`.

# Installs the Debian packages of the named commands that are missing.
need_tools() { # command...
  local need=()
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# BIN, or this checkout's release build (built if needed).
switchyard_binary() {
  if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet --bin switchyard
    BIN=$PWD/target/release/switchyard
  fi
}

# A scratch directory, and every process put in PIDS stopped on exit.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
