/* h5chunks.c — how a dataset is stored (see h5io.h, h5_dataset_storage): for the warning about
 * inputs whose small chunks slow the read. Serial, one process. */
#include "io/h5priv.h"
#include <string.h>

int h5_dataset_storage(const char *path, const char *name, int *chunked, int *ndims,
                       int64_t chunk[8], char *filters, int flen) {
    *chunked = 0;
    *ndims = 0;
    if (filters && flen > 0) filters[0] = 0;
    hid_t f = h5io_open_serial(path, "input");
    if (f < 0) return -1;
    hid_t d = h5io_open_dataset(f, path, name, NULL);
    if (d < 0) {
        H5Fclose(f);
        return -1;
    }
    hid_t pl = H5Dget_create_plist(d);
    if (pl >= 0 && H5Pget_layout(pl) == H5D_CHUNKED) {
        hsize_t c[8];
        int nd = H5Pget_chunk(pl, 8, c);
        if (nd > 0) {
            *chunked = 1;
            *ndims = nd;
            for (int i = 0; i < nd; i++) chunk[i] = (int64_t)c[i];
        }
        int nf = H5Pget_nfilters(pl), n = 0;
        for (int i = 0; filters && i < nf && n < flen; i++) {
            char fname[64] = "";
            unsigned flags = 0, conf = 0;
            size_t ne = 0;
            H5Pget_filter2(pl, (unsigned)i, &flags, &ne, NULL, sizeof fname, fname, &conf);
            n += snprintf(filters + n, (size_t)(flen - n), "%s%s", n ? ", " : "", fname[0] ? fname : "filter");
        }
    }
    if (pl >= 0) H5Pclose(pl);
    H5Dclose(d);
    H5Fclose(f);
    return 0;
}
