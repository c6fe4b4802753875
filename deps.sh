#!/bin/sh
# deps.sh [run|test|plot] — install the Debian packages that fa_long's build (run), build and tests
# (test, the default) or bench/plot.sh (plot: gnuplot) need, and only when something they need is
# missing. `make run` and
# `make test` call it first, so a fresh Debian 12 machine needs nothing else. A machine that has
# what the mode needs (e.g. a GPU node with Open MPI and serial HDF5 but no network) installs
# nothing.
set -e
MODE=${1:-test}
PKGS="make gcc pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev libhdf5-dev hdf5-tools \
libopenblas-dev zlib1g-dev libdeflate0 python3-h5py python3-numpy python3-pytest slurmctld slurmd slurm-client munge \
gnuplot-nox"

have_hdf5() {
    for p in hdf5-openmpi hdf5-mpi hdf5-serial hdf5; do pkg-config --exists $p 2>/dev/null && return 0; done
    ls /usr/include/hdf5/*/hdf5.h /usr/include/hdf5.h >/dev/null 2>&1
}
have_build() { command -v mpicc >/dev/null && command -v mpirun >/dev/null && command -v make >/dev/null && have_hdf5; }
have_plot() { command -v gnuplot >/dev/null && command -v python3 >/dev/null; }
have_tests() {
    have_plot && /usr/bin/python3 -c 'import h5py, numpy, pytest' >/dev/null 2>&1 &&
    for c in slurmctld slurmd munged sbatch; do command -v $c >/dev/null || [ -x /usr/sbin/$c ] || return 1; done
}

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
fi
[ -z "$missing" ] && exit 0
if [ "$MODE" = plot ]; then
    have_plot && exit 0
    missing=gnuplot-nox
elif have_build && { [ "$MODE" = run ] || have_tests; }; then
    echo "deps: what '$MODE' needs is installed (not from these Debian packages:$missing)"
    exit 0
fi
command -v apt-get >/dev/null || { echo "deps: no apt-get here; install by hand:$missing" >&2; exit 1; }
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get install -y -qq --no-install-recommends $missing >/tmp/fa_long_deps.log 2>&1 || \
   { $SUDO apt-get update -qq >>/tmp/fa_long_deps.log 2>&1 && \
     $SUDO apt-get install -y -qq --no-install-recommends $missing >>/tmp/fa_long_deps.log 2>&1; }; then
    echo "deps: done"
else
    echo "deps: apt-get failed (see /tmp/fa_long_deps.log); install by hand: apt-get install$missing" >&2
    exit 1
fi
