/* crc32.h — CRC-32 with zlib's polynomial and conventions (crc32(crc, buf, len) of zlib, any
 * length), the fastest implementation the machine has (base/crc32.c). Thread-safe. */
#pragma once
#include <stddef.h>
#include <stdint.h>

uint32_t fa_crc32(uint32_t crc, const void *buf, size_t len);
/* "libdeflate" or "zlib": which one fa_crc32 runs */
const char *fa_crc32_impl(void);
