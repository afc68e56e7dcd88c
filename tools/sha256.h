/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): SHA-256 (FIPS 180-4), small and self-contained.
 */
#ifndef FLEECE_SHA256_H
#define FLEECE_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
	uint32_t h[8];
	uint64_t len;		/* bytes hashed */
	unsigned char buf[64];
	size_t fill;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
void sha256_final(struct sha256 *s, unsigned char out[32]);
/* The digest as 64 lowercase hex digits and a NUL. */
void sha256_hex(const unsigned char digest[32], char hex[65]);
/* The SHA-256 of the whole file @fd (read from its start) in @hex: 0 or -errno. */
int sha256_fd(int fd, char hex[65]);

#endif
