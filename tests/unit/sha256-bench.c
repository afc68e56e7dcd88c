// SPDX-License-Identifier: GPL-2.0
/*
 * Throughput of fleece's SHA-256 (tools/sha256.c) on this host, no device:
 *
 *   sha256-bench MIB            the hashing function alone, MIB MiB of data
 *                               in 4 MiB updates (the reader's block size)
 *   sha256-bench MIB FILE       the reader's pipeline over a regular file
 *                               (readahead.c, O_DIRECT), each block also
 *                               written to FILE.out: hashing inline in the
 *                               writer's loop (as before) and in the
 *                               readahead's hasher thread (as now)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "readahead.h"
#include "sha256.h"


#define BLOCK (4u << 20)

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static double pipeline(const char *file, size_t total, int inline_hash, char hex[65])
{
	char out_name[4096];
	struct sha256 s;
	struct readahead *ra;
	const unsigned char *b;
	uint64_t off, eo;
	double t0;
	int in, out;

	snprintf(out_name, sizeof(out_name), "%s.out", file);
	in = open(file, O_RDONLY | O_DIRECT);
	out = open(out_name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (in < 0 || out < 0 || sha256_init(&s)) {
		perror(file);
		exit(1);
	}
	t0 = now();
	ra = readahead_start(in, total, BLOCK, inline_hash ? NULL : &s);
	for (off = 0; off < total; off += BLOCK) {
		b = readahead_next(ra, off, &eo);
		if (!b) {
			perror("read");
			exit(1);
		}
		if (inline_hash)
			sha256_update(&s, b, BLOCK);
		if (pwrite(out, b, BLOCK, (off_t)off) != BLOCK || fdatasync(out)) {
			perror("write");
			exit(1);
		}
		readahead_done(ra, off);
	}
	if (readahead_hash_wait(ra) || sha256_final(&s, hex))
		exit(1);
	readahead_stop(ra);
	t0 = now() - t0;
	close(in);
	close(out);
	unlink(out_name);
	return t0;
}

int main(int argc, char **argv)
{
	size_t total, off, i;
	unsigned char *b;
	struct sha256 s;
	char hex[65];
	double t;
	int fd;

	if (argc < 2)
		return 2;
	total = (size_t)atoi(argv[1]) << 20;
	total -= total % BLOCK;
	if (posix_memalign((void **)&b, 4096, BLOCK))
		return 1;
	for (i = 0; i < BLOCK; i++)
		b[i] = (unsigned char)(i * 2654435761u >> 13);
	if (argc == 2) {
		t = now();
		if (sha256_init(&s))
			return 1;
		for (off = 0; off < total; off += BLOCK)
			sha256_update(&s, b, BLOCK);
		if (sha256_final(&s, hex))
			return 1;
		t = now() - t;
		printf("sha256 (OpenSSL EVP): %zu MiB in %.3f s = %.0f MB/s  %s\n",
		       total >> 20, t, total / t / 1e6, hex);
		return 0;
	}
	fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	for (off = 0; fd >= 0 && off < total; off += BLOCK)
		if (write(fd, b, BLOCK) != BLOCK)
			return 1;
	if (fd < 0 || fsync(fd) || close(fd))
		return 1;
	for (i = 0; i < 3; i++) {
		t = pipeline(argv[2], total, 1, hex);
		printf("pipeline, hash inline:  %zu MiB in %.3f s = %.0f MB/s  %s\n",
		       total >> 20, t, total / t / 1e6, hex);
		t = pipeline(argv[2], total, 0, hex);
		printf("pipeline, hash thread:  %zu MiB in %.3f s = %.0f MB/s  %s\n",
		       total >> 20, t, total / t / 1e6, hex);
	}
	unlink(argv[2]);
	return 0;
}
