#!/bin/sh
# parallel_hdf5.sh — parallel HDF5 on a GPU machine that has only the serial library (the lent
# H100 machines: Ubuntu 24.04, serial HDF5 1.10.10, Open MPI 4.1.6, no package registry).
#
#   sh bench/gpu/parallel_hdf5.sh --fetch   here (Debian 12, apt): Debian's libhdf5-openmpi
#                                           runtime and headers (1.10.8, built against Open MPI
#                                           4.1, libmpi.so.40 like the GPU machine's) into
#                                           build/h5par; send it along (the device tool's carry)
#   sh bench/gpu/parallel_hdf5.sh --build   there: ./fa_long_ph5 built against it (objects in
#                                           build/ph5, the library found by rpath)
# The library's other dependencies (libcurl, libsz, libaec, libcrypto) are those the machine's
# serial HDF5 already loads.
set -eu
cd "$(dirname "$0")/../.."
P=$PWD/build/h5par
case "${1:-}" in
--fetch)
    T=$(mktemp -d)
    (cd "$T" && apt-get download libhdf5-openmpi-103-1 libhdf5-openmpi-dev >/dev/null 2>&1)
    for f in "$T"/*.deb; do dpkg -x "$f" "$T/x"; done
    rm -rf "$P"
    mkdir -p "$P/include" "$P/lib"
    cp -a "$T"/x/usr/include/hdf5/openmpi/. "$P/include/"
    cp -a "$T"/x/usr/lib/x86_64-linux-gnu/libhdf5_openmpi.so* "$P/lib/"
    rm -rf "$T"
    echo "# parallel HDF5 in $P ($(du -sh "$P" | cut -f1))"
    ;;
--build)
    [ -f "$P/include/hdf5.h" ] || { echo "parallel_hdf5.sh: $P is missing (run --fetch and carry it)"; exit 1; }
    # the library's links again, in case the copy that brought it here did not keep them
    real=$(ls "$P"/lib/libhdf5_openmpi.so.*.*.* | head -1)
    for l in libhdf5_openmpi.so libhdf5_openmpi.so.103; do ln -sf "$(basename "$real")" "$P/lib/$l"; done
    make -j"$(nproc)" BUILD=build/ph5 BIN=fa_long_ph5 HDF5_CFLAGS="-I$P/include" \
        HDF5_LIBS="-L$P/lib -lhdf5_openmpi -Wl,-rpath,$P/lib" fa_long_ph5
    ./fa_long_ph5 --version
    ;;
*)
    echo "usage: sh bench/gpu/parallel_hdf5.sh --fetch | --build"; exit 2 ;;
esac
