#!/usr/bin/env bash
# Runs tern's whole test suite on a fresh machine.
#
# Installs what the end-to-end tests drive when it is missing (the real etcdctl 3.4.23 and
# etcd 3.4.23 from Debian's etcd-client and etcd-server packages; strace for the blocking-I/O
# trace; python3 for the golden-transcript normaliser; the Python etcd3 client on grpcio as
# the second client stack; Node and its etcd3 client on @grpc/grpc-js as the third; shellcheck and iproute2 for the tuning/ scripts' tests), then runs
# every test in the workspace and prints the test runner's summary, then runs each cargo-fuzz
# target for a short while (fuzz/run.sh, docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

missing=()
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
# Real etcd: tern-bench's end-to-end tests run against it (TERN_REQUIRE_ETCD below).
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
# tests/tuning.rs: shellcheck over tuning/*.sh, and ip/tc for the network-namespace test.
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v tc >/dev/null 2>&1 || missing+=(iproute2)
# strace: tests/no_blocking_io.rs traces tern's system calls per thread.
command -v strace >/dev/null 2>&1 || missing+=(strace)
# openssl: tests/tls.rs checks the negotiated TLS versions and suites with s_client;
# tests/auth_jwt.rs makes the RSA key pair tern and etcd share with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# tests/metrics_prometheus.rs: a real Prometheus scrapes tern; curl for the HTTP tests.
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# tests/node_client.rs: the Node etcd3 client on @grpc/grpc-js, the third client stack.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]} with apt-get" >&2
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The JSON-gateway client for tests/python_gateway.rs: Python etcd3gw on requests.
if ! python3 -c "import etcd3gw" >/dev/null 2>&1; then
    echo "test.sh: installing the Python etcd3gw client with pip" >&2
    python3 -m pip install -q "etcd3gw==2.7.0" 2>&1 | grep -v "^WARNING: Running pip as" >&2 || true
fi

# The second client stack for end-to-end tests: Python etcd3 on grpcio.
if ! PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 -c "import etcd3, grpc" >/dev/null 2>&1; then
    echo "test.sh: installing the Python etcd3 client with pip" >&2
    python3 -m pip install -q "etcd3==0.12.0" "grpcio>=1.60" "protobuf<8" 2>&1 | grep -v "^WARNING: Running pip as" >&2 || true
fi

# The Node client, pinned by tests/clients/node/package-lock.json, into its git-ignored
# node_modules.
if [[ ! -d tests/clients/node/node_modules/etcd3 ]]; then
    echo "test.sh: installing the Node etcd3 client with npm" >&2
    npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error >&2
fi

# A short fuzzing run (issue 17), after the tests: fuzz/run.sh builds every cargo-fuzz target
# in fuzz/ and storage/fuzz/ and runs each for TERN_FUZZ_SECONDS (default 20; 0 skips it) on
# nightly Rust. A crash fails test.sh; its input is left in <crate>/artifacts/<target>/.
fuzz_seconds=${TERN_FUZZ_SECONDS:-20}
if ((fuzz_seconds > 0)); then
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "test.sh: installing the nightly toolchain for cargo-fuzz" >&2
        rustup toolchain install nightly --profile minimal >&2
    fi
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "test.sh: installing cargo-fuzz" >&2
        cargo install --locked cargo-fuzz >&2
    fi
fi

export TERN_REQUIRE_ETCD=1

status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
    cargo test --workspace --no-fail-fast "$@" || status=$?
fi
if ((fuzz_seconds > 0)); then
    echo "test.sh: fuzzing each target for ${fuzz_seconds}s (fuzz/run.sh)" >&2
    TERN_FUZZ_SECONDS=$fuzz_seconds fuzz/run.sh || status=1
fi
exit "$status"
