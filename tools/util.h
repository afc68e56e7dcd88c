/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): messages, exit codes, argument and size parsing, small helpers.
 */
#ifndef FLEECE_UTIL_H
#define FLEECE_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* Exit codes, documented in fleece(8). */
enum {
	EX_FLEECE_OK = 0,
	EX_FLEECE_FAIL = 1,	/* the operation failed */
	EX_FLEECE_USAGE = 2,	/* bad arguments: nothing was changed */
	EX_FLEECE_REFUSED = 3,	/* a device or the system is not fit: nothing changed */
	EX_FLEECE_INVALID = 4,	/* the view became invalid: the image is incomplete */
	EX_FLEECE_NONE = 5,	/* status: a NAME given is not fleeced */
	EX_FLEECE_SIGNAL = 128,	/* + signal number: interrupted, cleaned up */
};

/*
 * Internal functions return 0 or -errno, having printed what went wrong;
 * each command maps that to its exit code once, in its cmd_* function,
 * with exit_code().  Three errnos that no call of the tool's can return
 * stand for fleece's own outcomes:
 *   -EFLEECE_USAGE    bad arguments, nothing was changed (exit 2);
 *   -EFLEECE_REFUSED  the device or the system is not fit, nothing was
 *                     changed (exit 3);
 *   -EFLEECE_INVALID  the view became invalid: the image is incomplete
 *                     (exit 4);
 * and -EINTR, once a signal set fleece_signal, is exit 128 + the signal.
 * Anything else is exit 1.
 */
#define EFLEECE_USAGE	EDOM
#define EFLEECE_REFUSED	ECANCELED
#define EFLEECE_INVALID	ENOTRECOVERABLE
int exit_code(int err);

/*
 * Test-only fault injection, for the VM tests of failure paths.  With
 * FLEECE_FAULT="POINT[@N][=ERR][,...]" the Nth (default: every) pass
 * through fault point POINT fails with -ERR (an errno name such as EACCES,
 * default EIO); ERR "STOP" instead stops the process there (SIGSTOP) until
 * a test sends SIGCONT.  Returns 0 or the -errno to fail with.  Never set
 * FLEECE_FAULT outside the test suite.
 */
int fault_point(const char *point);

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ATTR_PRINTF(f, a) __attribute__((format(printf, f, a)))

extern bool stdout_closed;	/* closed at exec: now /dev/null */
extern const char *prog;	/* "fleece" or "fleece <subcommand>" */
extern int verbose;
extern bool quiet;

void msg_error(const char *fmt, ...) ATTR_PRINTF(1, 2);
void msg_warn(const char *fmt, ...) ATTR_PRINTF(1, 2);
void msg_info(const char *fmt, ...) ATTR_PRINTF(1, 2);
void msg_debug(const char *fmt, ...) ATTR_PRINTF(1, 2);
/* Print "prog: <message>: <strerror(errno)>". */
void msg_errno(const char *fmt, ...) ATTR_PRINTF(1, 2);
/* The first error message (msg_error, msg_errno) since the last reset, or NULL. */
void msg_error_reset(void);
const char *msg_error_first(void);
/*
 * While on, messages (ours and libdevmapper's) are kept in memory, and
 * printed when it is turned off: nothing is written while a device that
 * stderr's file or journald could sit on is suspended.
 */
void msg_hold(bool on);
void msg_line(const char *line);	/* one line to stderr, or held */
/*
 * A usage error: message plus a hint to --help; returns EX_FLEECE_USAGE,
 * for option parsers (parse_opts() returns exit codes).
 */
int usage_error(const char *fmt, ...) ATTR_PRINTF(1, 2);
/* The same, returning -EFLEECE_USAGE, for internal functions. */
#define usage_err(...) (usage_error(__VA_ARGS__), -EFLEECE_USAGE)

/* Sizes: "4096", "64K", "64KiB", "1M", "2G", "512s" (sectors).  */
int parse_size(const char *s, uint64_t *bytes);
/* --chunk-size: a power of two from 4K to 16M; a usage error otherwise. */
int parse_chunk_size(const char *arg, uint64_t *bytes);
/*
 * Create @tmp afresh for writing (a leftover of a killed run is replaced,
 * a symlink is not followed): the stream, or NULL with a message and
 * -errno in *@r.
 */
FILE *create_tmp_file(const char *tmp, mode_t mode, int *r);
int parse_uint(const char *s, uint64_t max, uint64_t *val);
/* Seconds, with an optional fraction and unit: "45", "1.5", "500ms", "2m". */
int parse_seconds(const char *s, double *secs);
/* "1.5 GiB"-style; returns buf. */
char *fmt_size(uint64_t bytes, char *buf, size_t len);
/* "1:02:03" or "42s"; returns buf. */
char *fmt_duration(double secs, char *buf, size_t len);

double now_mono(void);
void sleep_secs(double secs);

/* Read a small sysfs/proc text file, trailing newline stripped. */
int read_text_file(const char *path, char *buf, size_t len);
int read_u64_file(const char *path, uint64_t *val);

/*
 * Each "key=value" line of @f to @fn (the newline cut; lines without '='
 * or starting with '#' skipped): the state and tracking records' format.
 */
void kv_read(FILE *f, void (*fn)(const char *key, const char *val, void *ctx), void *ctx);

/* A growable string. */
struct sbuf {
	char *s;
	size_t len, cap;
};
void sb_printf(struct sbuf *sb, const char *fmt, ...) ATTR_PRINTF(2, 3);
void sb_json_str(struct sbuf *sb, const char *s);	/* quoted, escaped */
void sb_free(struct sbuf *sb);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) ATTR_PRINTF(1, 2);

/* Block device helpers. */
int blkdev_size(int fd, uint64_t *bytes);
int blkdev_open_size(const char *path, uint64_t *bytes, dev_t *rdev);
/* /dev/<kernel name> for a block device number, e.g. /dev/dm-3. */
int devno_path(dev_t dev, char *buf, size_t len);
/* Does the block device have holders (another device built on it)? */
bool devno_has_holders(dev_t dev);
/*
 * Is @dev @base, or built on it (through its slaves, its disk, and the file
 * system of a loop device's backing file, recursively)?  False also when
 * that cannot be told: callers that must refuse then use devno_depends().
 */
bool devno_depends_on(dev_t dev, dev_t base);
/*
 * The same, telling "no" from "cannot tell" (deps.c): 1 when @dev is @base
 * or built on it, 0 when it is not, -errno when that cannot be established
 * (@why says what could not be followed, or how it depends).
 */
int devno_depends(dev_t dev, dev_t base, char *why, size_t len);
/* Is the file system that holds @path on @base?  1, 0 or -errno, as above. */
int path_depends(const char *path, dev_t base, char *why, size_t len);
unsigned int devno_logical_block_size(dev_t dev);

/* fsync a directory (after a rename or unlink in it): 0 or -errno. */
int fsync_dir(const char *dir);

/* Write all of buf, retrying on short writes; false with errno on error. */
bool write_all(int fd, const void *buf, size_t len);
bool pwrite_all(int fd, const void *buf, size_t len, off_t off);

/*
 * Run the program at absolute @path with a fixed environment (not the
 * caller's PATH) plus the caller's @keep_env variable if set (NULL: none),
 * wait for it, return its exit status (or -1).  With @out, its standard
 * output is kept there (NUL-terminated, cut at @outlen - 1 bytes) and its
 * standard error goes to /dev/null.
 */
int run_program(const char *path, const char *const argv[], bool quiet_output,
		const char *keep_env, char *out, size_t outlen);
/* The first of @paths (absolute) that exists, or NULL. */
const char *find_program(const char *const paths[]);
/* modprobe MODULE, by absolute path (/sbin or /usr/sbin). */
int run_modprobe(const char *module, bool quiet_output);

/* The kernel log: lines written by device-mapper since kmsg_mark(). */
int kmsg_mark(void);
void kmsg_report(int fd, const char *filter);

#endif
