# shellcheck shell=bash
# The S3 server the storage tests and benchmark run against, sourced by scripts/test and
# scripts/bench-storage. It is the s3s-fs crate's binary, not moto, because:
#   - it checks SigV4 signatures, so the wrong-credentials test meets a real refusal
#     (moto's server accepts any key by default);
#   - it keeps objects on disk, so a test can kill it in the middle of a checkpoint upload
#     and restart it with the bucket intact (moto loses everything on restart);
#   - it needs no Python at test time (one cargo install into .cache/, reused after).
# What is emulated: a local S3-compatible server on 127.0.0.1 stands in for AWS S3, GCS and
# Azure; gs:// and az:// share all code above the object_store client.

S3S_FS_VERSION=0.14.0 # the newest release that builds with our toolchain (0.15+ need Rust 1.96)
S3_TEST_BUCKET=kubeswift-test
S3_TEST_ACCESS_KEY=kubeswift-test-key
S3_TEST_SECRET_KEY=kubeswift-test-secret

# Installs s3s-fs into .cache/ once per clone and sets S3S_FS_BIN.
s3_server_install() {
    local root="$PWD/.cache/s3s-fs-$S3S_FS_VERSION"
    S3S_FS_BIN="$root/bin/s3s-fs"
    if [ ! -x "$S3S_FS_BIN" ]; then
        echo "installing s3s-fs $S3S_FS_VERSION into $root (once per clone)" >&2
        # Our CI lint settings (RUSTFLAGS, the clippy wrapper) are for our crates, not this tool.
        env -u RUSTFLAGS -u RUSTC_WORKSPACE_WRAPPER cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$root" >&2
    fi
}

s3_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the server on a free 127.0.0.1 port with bucket $S3_TEST_BUCKET and exports what
# the tests read: AWS_* (as a Kubernetes Secret would) and KUBESWIFT_TEST_S3_*.
s3_server_start() {
    s3_server_install
    S3_DATA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kubeswift-s3.XXXXXX")"
    mkdir -p "$S3_DATA_DIR/data/$S3_TEST_BUCKET"
    local port
    port="$(s3_free_port)"
    "$S3S_FS_BIN" --host 127.0.0.1 --port "$port" \
        --access-key "$S3_TEST_ACCESS_KEY" --secret-key "$S3_TEST_SECRET_KEY" \
        "$S3_DATA_DIR/data" >"$S3_DATA_DIR/server.log" 2>&1 &
    S3_SERVER_PID=$!
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            break
        fi
        if ! kill -0 "$S3_SERVER_PID" 2>/dev/null; then
            echo "s3s-fs exited at start:" >&2
            cat "$S3_DATA_DIR/server.log" >&2
            return 1
        fi
        sleep 0.1
    done
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    export AWS_ALLOW_HTTP=true
    export AWS_ACCESS_KEY_ID="$S3_TEST_ACCESS_KEY"
    export AWS_SECRET_ACCESS_KEY="$S3_TEST_SECRET_KEY"
    export AWS_REGION=us-east-1
    export KUBESWIFT_TEST_S3_BUCKET="$S3_TEST_BUCKET"
    # The fault tests start (and kill) their own instance of the same binary.
    export KUBESWIFT_TEST_S3S_FS_BIN="$S3S_FS_BIN"
    echo "s3s-fs $S3S_FS_VERSION listening on $AWS_ENDPOINT_URL (pid $S3_SERVER_PID)" >&2
}

s3_server_stop() {
    if [ -n "${S3_SERVER_PID:-}" ]; then
        kill "$S3_SERVER_PID" 2>/dev/null || true
        wait "$S3_SERVER_PID" 2>/dev/null || true
        S3_SERVER_PID=
    fi
    if [ -n "${S3_DATA_DIR:-}" ]; then
        rm -rf "$S3_DATA_DIR"
        S3_DATA_DIR=
    fi
}
