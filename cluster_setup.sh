#!/usr/bin/env bash
# Node setup for cluster.yaml and cluster_onprem.yaml: `ray up` runs it on every node (their
# setup_commands) from ~/ray_mtl, the copy of this checkout that file_mounts put there. Every
# `ray up` runs it again; each step keeps what is already there.
#
# Its settings, which the cluster files' setup_commands give:
#   RAY_MTL_TORCH_INDEX  the wheel index torch comes from; empty: pip's own configuration
#   RAY_MTL_INSTALL      what `pip install` gets for the project, e.g. "-e $HOME/ray_mtl"
set -euo pipefail
: "${RAY_MTL_TORCH_INDEX?cluster_setup.sh: set RAY_MTL_TORCH_INDEX (empty: the index pip is set up with)}"
: "${RAY_MTL_INSTALL:?cluster_setup.sh: set RAY_MTL_INSTALL (what pip installs as ray_mtl)}"

# One venv for Ray and the project (Python >= 3.11; Ubuntu 24.04's python3 is 3.12). Ubuntu
# ships venv's ensurepip in a package of its own.
if [ ! -x ~/venv/bin/python ]; then
  python3 -c 'import ensurepip' 2>/dev/null ||
    { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; }
  python3 -m venv ~/venv
fi

# Every Ray shell (start commands, `ray exec`, jobs) sources ~/.bashrc: the venv on PATH, token
# auth on (the token file comes from file_mounts), the corpora where ray_mtl looks first.
# shellcheck disable=SC2016  # expanded by each shell that sources ~/.bashrc
grep -qs '# ray_mtl env' ~/.bashrc ||
  echo 'export PATH=$HOME/venv/bin:$PATH RAY_AUTH_MODE=token RAY_MTL_DATA=$HOME/shared/data  # ray_mtl env' >> ~/.bashrc
chmod 600 ~/.ray/auth_token

# torch first, from its index, so that the project's `torch>=2.4` keeps that build. Ray's
# version must match the one that runs `ray up` (`ray --version`).
~/venv/bin/pip install -q torch==2.13.0 ${RAY_MTL_TORCH_INDEX:+--index-url "$RAY_MTL_TORCH_INDEX"}
# RAY_MTL_INSTALL is split into words on purpose: "-e DIR" is two pip arguments.
# shellcheck disable=SC2086
~/venv/bin/pip install -q "ray[default]==2.60.0" $RAY_MTL_INSTALL
