#!/bin/sh
# deps.sh — install the Debian packages that fa_long's build and tests need, only those missing.
# `make run` and `make test` call it first, so a fresh Debian 12 machine needs nothing else.
# On a machine that already has what the build needs (e.g. a GPU node with Open MPI and serial
# HDF5 but no network) it installs nothing.
set -e
PKGS="make gcc pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev libhdf5-dev hdf5-tools \
libopenblas-dev python3-h5py python3-numpy python3-pytest \
slurmctld slurmd slurm-client munge"

have_hdf5() {
    for p in hdf5-openmpi hdf5-mpi hdf5-serial hdf5; do pkg-config --exists $p 2>/dev/null && return 0; done
    ls /usr/include/hdf5/*/hdf5.h /usr/include/hdf5.h >/dev/null 2>&1
}
have_py() { /usr/bin/python3 -c 'import h5py, numpy, pytest' >/dev/null 2>&1; }

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
fi
[ -z "$missing" ] && exit 0

# Something is missing. If the build's needs are met anyway (another distribution's packages),
# say what is absent and go on; otherwise install through apt-get.
if command -v mpicc >/dev/null && command -v mpirun >/dev/null && have_hdf5 && have_py \
   && ! command -v apt-get >/dev/null; then
    echo "deps: not Debian-managed here; using the installed Open MPI, HDF5 and Python modules"
    exit 0
fi
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get install -y -qq --no-install-recommends $missing >/tmp/fa_long_deps.log 2>&1 || \
   { $SUDO apt-get update -qq >/tmp/fa_long_deps.log 2>&1 && \
     $SUDO apt-get install -y -qq --no-install-recommends $missing >>/tmp/fa_long_deps.log 2>&1; }; then
    echo "deps: done"
else
    if command -v mpicc >/dev/null && command -v mpirun >/dev/null && have_hdf5; then
        echo "deps: could not install$missing (see /tmp/fa_long_deps.log); building with what is here"
        exit 0
    fi
    echo "deps: apt-get failed (see /tmp/fa_long_deps.log); install by hand: apt-get install$missing" >&2
    exit 1
fi
