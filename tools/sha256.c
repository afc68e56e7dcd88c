// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): SHA-256 through OpenSSL's EVP interface (libcrypto), which
 * uses the CPU's SHA extensions or vector units where it has them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sha256.h"

int sha256_init(struct sha256 *s)
{
	s->err = 0;
	s->ctx = EVP_MD_CTX_new();
	if (!s->ctx)
		return s->err = -ENOMEM;
	if (!EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL)) {
		sha256_free(s);
		return s->err = -EIO;
	}
	return 0;
}

void sha256_update(struct sha256 *s, const void *data, size_t len)
{
	if (s->err || !s->ctx)
		return;
	if (!EVP_DigestUpdate(s->ctx, data, len)) {
		sha256_free(s);
		s->err = -EIO;
	}
}

int sha256_final(struct sha256 *s, char hex[65])
{
	static const char digits[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0, i;

	hex[0] = '\0';
	if (!s->err && !s->ctx)
		s->err = -EINVAL;
	if (!s->err && (!EVP_DigestFinal_ex(s->ctx, md, &len) || len != 32))
		s->err = -EIO;
	sha256_free(s);
	if (s->err)
		return s->err;
	for (i = 0; i < 32; i++) {
		hex[2 * i] = digits[md[i] >> 4];
		hex[2 * i + 1] = digits[md[i] & 15];
	}
	hex[64] = '\0';
	return 0;
}

void sha256_free(struct sha256 *s)
{
	EVP_MD_CTX_free(s->ctx);
	s->ctx = NULL;
}

int sha256_fd(int fd, char hex[65])
{
	unsigned char *buf = malloc(1 << 20);
	struct sha256 s;
	off_t off = 0;
	ssize_t n;
	int r;

	if (!buf)
		return -ENOMEM;
	r = sha256_init(&s);
	/* Read once, not kept: dropped behind the read (hints only). */
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	while (!r) {
		n = pread(fd, buf, 1 << 20, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		if (n <= 0)
			break;
		sha256_update(&s, buf, (size_t)n);
		posix_fadvise(fd, off, n, POSIX_FADV_DONTNEED);
		off += n;
	}
	free(buf);
	if (r) {
		sha256_free(&s);
		return r;
	}
	return sha256_final(&s, hex);
}
