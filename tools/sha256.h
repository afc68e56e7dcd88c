/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): SHA-256 through OpenSSL's EVP (libcrypto): --sha256 prints
 * the image's digest as sha256sum(1) does.
 */
#ifndef FLEECE_SHA256_H
#define FLEECE_SHA256_H

#include <stddef.h>

struct evp_md_ctx_st;

struct sha256 {
	struct evp_md_ctx_st *ctx;	/* NULL after sha256_final() or a failure */
	int err;			/* the first failure: -ENOMEM or -EIO */
};

/* Start a digest: 0, or -ENOMEM / -EIO (kept in s->err too). */
int sha256_init(struct sha256 *s);
/* Add @len bytes; a failure is kept for sha256_final(). */
void sha256_update(struct sha256 *s, const void *data, size_t len);
/*
 * The digest as 64 lowercase hex digits and a NUL in @hex, and the
 * context freed: 0, or the -errno of the first failure since init.
 */
int sha256_final(struct sha256 *s, char hex[65]);
/* Free the context without a digest (an abandoned read); idempotent. */
void sha256_free(struct sha256 *s);
/*
 * The SHA-256 of the whole file @fd (read from its start) in @hex: 0 or
 * -errno.  Its pages are dropped from the page cache behind the read.
 */
int sha256_fd(int fd, char hex[65]);

#endif
