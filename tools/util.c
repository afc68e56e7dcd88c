// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): messages, exit codes, argument and size parsing, small helpers.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <linux/fs.h>

#include "fleece.h"
#include "opts.h"
#include "util.h"

const char *prog = "fleece";
int verbose;
bool quiet;

/* Messages held back while devices are suspended (msg_hold). */
static struct sbuf held;
static bool holding;

void msg_hold(bool on)
{
	holding = on;
	if (!on && held.len) {
		fputs(held.s, stderr);
		fflush(stderr);
		sb_free(&held);
	}
}

void msg_line(const char *line)
{
	if (holding)
		sb_printf(&held, "%s\n", line);
	else
		fprintf(stderr, "%s\n", line);
}

/* The first error message since msg_error_reset(), for --json's "error". */
static char first_error[512];

void msg_error_reset(void)
{
	first_error[0] = '\0';
}

const char *msg_error_first(void)
{
	return first_error[0] ? first_error : NULL;
}

static void vmsg(const char *level, const char *fmt, va_list ap, int err)
{
	char buf[4096];
	int n;

	n = snprintf(buf, sizeof(buf), "%s: %s", prog, level);
	if (n < 0 || (size_t)n >= sizeof(buf))
		n = 0;
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	if (err && n >= 0 && (size_t)n < sizeof(buf))
		snprintf(buf + n, sizeof(buf) - n, ": %s", strerror(err));
	msg_line(buf);
}

static void record_error(const char *fmt, va_list ap, int err)
{
	int n;

	if (first_error[0])
		return;
	n = vsnprintf(first_error, sizeof(first_error), fmt, ap);
	if (err && n >= 0 && (size_t)n < sizeof(first_error))
		snprintf(first_error + n, sizeof(first_error) - n, ": %s", strerror(err));
}

void msg_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg("", fmt, ap, 0);
	va_end(ap);
	va_start(ap, fmt);
	record_error(fmt, ap, 0);
	va_end(ap);
}

void msg_errno(const char *fmt, ...)
{
	int err = errno;
	va_list ap;

	va_start(ap, fmt);
	vmsg("", fmt, ap, err ? err : EIO);
	va_end(ap);
	va_start(ap, fmt);
	record_error(fmt, ap, err ? err : EIO);
	va_end(ap);
	errno = err;
}

void msg_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg("warning: ", fmt, ap, 0);
	va_end(ap);
}

void msg_info(const char *fmt, ...)
{
	va_list ap;

	if (quiet)
		return;
	va_start(ap, fmt);
	vmsg("", fmt, ap, 0);
	va_end(ap);
}

void msg_debug(const char *fmt, ...)
{
	va_list ap;

	if (verbose < 1)
		return;
	va_start(ap, fmt);
	vmsg("debug: ", fmt, ap, 0);
	va_end(ap);
}

int exit_code(int err)
{
	switch (-err) {
	case 0:
		return EX_FLEECE_OK;
	case EFLEECE_USAGE:
		return EX_FLEECE_USAGE;
	case EFLEECE_REFUSED:
		return EX_FLEECE_REFUSED;
	case EFLEECE_INVALID:
		return EX_FLEECE_INVALID;
	case EINTR:
		if (fleece_signal)
			return EX_FLEECE_SIGNAL + fleece_signal;
		return EX_FLEECE_FAIL;
	default:
		return EX_FLEECE_FAIL;
	}
}

static const struct {
	const char *name;
	int err;
} fault_errnos[] = {
	{ "EACCES", EACCES }, { "EPERM", EPERM }, { "EIO", EIO }, { "ENOENT", ENOENT },
	{ "ENOMEM", ENOMEM }, { "EBUSY", EBUSY }, { "EINVAL", EINVAL }, { "ENOSPC", ENOSPC },
	{ "EOPNOTSUPP", EOPNOTSUPP },
};

int fault_point(const char *point)
{
	static struct {
		char point[32];
		unsigned int passes;
	} seen[32];
	const char *spec = getenv("FLEECE_FAULT");
	char *copy, *tok, *save = NULL;
	unsigned int i, pass = 0;
	int r = 0;

	if (!spec || !*spec)
		return 0;
	for (i = 0; i < ARRAY_SIZE(seen) && seen[i].point[0]; i++)
		if (!strcmp(seen[i].point, point))
			break;
	if (i < ARRAY_SIZE(seen)) {
		if (!seen[i].point[0])
			snprintf(seen[i].point, sizeof(seen[i].point), "%s", point);
		pass = ++seen[i].passes;
	}
	copy = xstrdup(spec);
	for (tok = strtok_r(copy, ",", &save); tok && !r; tok = strtok_r(NULL, ",", &save)) {
		char *err = strchr(tok, '='), *at = strchr(tok, '@');
		unsigned int j;

		if (err)
			*err++ = '\0';
		if (at) {
			*at++ = '\0';
			if (strtoul(at, NULL, 10) != pass)
				continue;
		}
		if (strcmp(tok, point))
			continue;
		if (err && !strcmp(err, "STOP")) {
			fprintf(stderr, "%s: test fault point %s: stopping\n", prog, point);
			raise(SIGSTOP);
			break;
		}
		r = -EIO;
		for (j = 0; err && j < ARRAY_SIZE(fault_errnos); j++)
			if (!strcmp(err, fault_errnos[j].name))
				r = -fault_errnos[j].err;
	}
	free(copy);
	return r;
}

int usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg("", fmt, ap, 0);
	va_end(ap);
	fprintf(stderr, "Try '%s --help' for more information.\n", prog);
	return EX_FLEECE_USAGE;
}

int parse_opts(int argc, char **argv, const char *shortopts,
	       const struct option *longopts, void (*help)(void),
	       int (*own)(int c, const char *arg, void *ctx), void *ctx)
{
	int c, r;

	while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		switch (c) {
		case 'q':
			quiet = true;
			if (own)	/* e.g. no progress either */
				own(c, optarg, ctx);
			continue;
		case 'v':
			verbose++;
			continue;
		case 'h':
			help();
			return EX_FLEECE_OK;
		case '?':	/* getopt_long has said what is wrong */
			return usage_error("bad option");
		}
		r = own ? own(c, optarg, ctx) : 1;
		if (r == 1)
			return usage_error("bad option");
		if (r)
			return r;
	}
	return -1;
}

int parse_uint(const char *s, uint64_t max, uint64_t *val)
{
	unsigned long long v;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	if (v > max)
		return -ERANGE;
	*val = v;
	return 0;
}

int parse_chunk_size(const char *arg, uint64_t *bytes)
{
	uint64_t v;

	if (parse_size(arg, &v))
		return usage_error("--chunk-size '%s': not a size (e.g. 64K, 1M)", arg);
	if (v < FLEECE_MIN_CHUNK_SECTORS * 512ULL || v > FLEECE_MAX_CHUNK_SECTORS * 512ULL ||
	    (v & (v - 1)))
		return usage_error("--chunk-size '%s': must be a power of two from 4K to 16M", arg);
	*bytes = v;
	return 0;
}

FILE *create_tmp_file(const char *tmp, mode_t mode, int *r)
{
	FILE *f;
	int fd;

	if (unlink(tmp) && errno != ENOENT) {
		*r = -errno;
		msg_errno("cannot remove %s", tmp);
		return NULL;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		*r = -errno;
		msg_errno("cannot write %s", tmp);
		if (fd >= 0)
			close(fd);
	}
	return f;
}

int parse_size(const char *s, uint64_t *bytes)
{
	unsigned long long v;
	uint64_t mult = 1;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	switch (toupper((unsigned char)*end)) {
	case '\0':
		break;
	case 'S':
		mult = 512;
		end++;
		break;
	case 'B':
		end++;
		break;
	case 'K':
		mult = 1ULL << 10;
		end++;
		break;
	case 'M':
		mult = 1ULL << 20;
		end++;
		break;
	case 'G':
		mult = 1ULL << 30;
		end++;
		break;
	case 'T':
		mult = 1ULL << 40;
		end++;
		break;
	default:
		return -EINVAL;
	}
	if (mult > 512 && (!strcasecmp(end, "iB") || !strcasecmp(end, "B")))
		end += strlen(end);
	if (*end)
		return -EINVAL;
	if (v > UINT64_MAX / mult)
		return -ERANGE;
	*bytes = v * mult;
	return 0;
}

int parse_seconds(const char *s, double *secs)
{
	double v, mult = 1;
	char *end;

	if (!s || !(isdigit((unsigned char)*s) || *s == '.'))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s)
		return -EINVAL;
	if (!strcmp(end, "ms"))
		mult = 0.001;
	else if (!strcmp(end, "m") || !strcmp(end, "min"))
		mult = 60;
	else if (*end && strcmp(end, "s"))
		return -EINVAL;
	if (v < 0 || v * mult > 86400.0 * 365)
		return -ERANGE;
	*secs = v * mult;
	return 0;
}

char *fmt_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)bytes;
	unsigned int u = 0;

	while (v >= 1024 && u < ARRAY_SIZE(units) - 1) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[u]);
	return buf;
}

char *fmt_duration(double secs, char *buf, size_t len)
{
	unsigned long s;

	if (secs < 0 || secs > 1e9) {
		snprintf(buf, len, "--:--");
		return buf;
	}
	if (secs < 10) {
		snprintf(buf, len, "%.1fs", secs);
		return buf;
	}
	s = (unsigned long)(secs + 0.5);
	if (s >= 3600)
		snprintf(buf, len, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
	else
		snprintf(buf, len, "%lu:%02lu", s / 60, s % 60);
	return buf;
}

double now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

void sleep_secs(double secs)
{
	struct timespec ts;

	if (secs <= 0)
		return;
	ts.tv_sec = (time_t)secs;
	ts.tv_nsec = (long)((secs - ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);	/* a signal cuts it short: fine */
}

int read_text_file(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return 0;
}

int read_u64_file(const char *path, uint64_t *val)
{
	char buf[64];
	int r;

	r = read_text_file(path, buf, sizeof(buf));
	if (r)
		return r;
	return parse_uint(buf, UINT64_MAX, val);
}

static void sb_grow(struct sbuf *sb, size_t more)
{
	if (sb->len + more + 1 <= sb->cap)
		return;
	sb->cap = (sb->len + more + 1) * 2;
	sb->s = realloc(sb->s, sb->cap);
	if (!sb->s) {
		msg_error("out of memory");
		exit(EX_FLEECE_FAIL);
	}
}

void sb_printf(struct sbuf *sb, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	sb_grow(sb, n);
	va_start(ap, fmt);
	vsnprintf(sb->s + sb->len, n + 1, fmt, ap);
	va_end(ap);
	sb->len += n;
}

void sb_json_str(struct sbuf *sb, const char *s)
{
	sb_printf(sb, "\"");
	for (; s && *s; s++) {
		unsigned char c = *s;

		if (c == '"' || c == '\\')
			sb_printf(sb, "\\%c", c);
		else if (c < 0x20)
			sb_printf(sb, "\\u%04x", c);
		else
			sb_printf(sb, "%c", c);
	}
	sb_printf(sb, "\"");
}

void sb_free(struct sbuf *sb)
{
	free(sb->s);
	sb->s = NULL;
	sb->len = sb->cap = 0;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		msg_error("out of memory");
		exit(EX_FLEECE_FAIL);
	}
	return p;
}

void *xcalloc(size_t n, size_t m)
{
	void *p = calloc(n ? n : 1, m ? m : 1);

	if (!p) {
		msg_error("out of memory");
		exit(EX_FLEECE_FAIL);
	}
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p) {
		msg_error("out of memory");
		exit(EX_FLEECE_FAIL);
	}
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n < 0) {
		msg_error("out of memory");
		exit(EX_FLEECE_FAIL);
	}
	return p;
}

int blkdev_size(int fd, uint64_t *bytes)
{
	if (ioctl(fd, BLKGETSIZE64, bytes) < 0)
		return -errno;
	return 0;
}

int blkdev_open_size(const char *path, uint64_t *bytes, dev_t *rdev)
{
	struct stat st;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode)) {
		close(fd);
		return -ENOTBLK;
	}
	if (rdev)
		*rdev = st.st_rdev;
	r = blkdev_size(fd, bytes);
	close(fd);
	return r;
}

void kv_read(FILE *f, void (*fn)(const char *key, const char *val, void *ctx), void *ctx)
{
	char line[PATH_MAX + 64];

	while (fgets(line, sizeof(line), f)) {
		char *v = strchr(line, '=');

		line[strcspn(line, "\n")] = '\0';
		if (line[0] == '#' || !v)
			continue;
		*v++ = '\0';
		fn(line, v, ctx);
	}
}

int devno_path(dev_t dev, char *buf, size_t len)
{
	char path[PATH_MAX], line[256];
	FILE *f;
	int r = -ENOENT;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/uevent", major(dev), minor(dev));
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "DEVNAME=", 8)) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(buf, len, "/dev/%s", line + 8);
			r = 0;
			break;
		}
	}
	fclose(f);
	return r;
}

bool devno_has_holders(dev_t dev)
{
	char path[PATH_MAX];
	struct dirent *de;
	bool any = false;
	DIR *d;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/holders", major(dev), minor(dev));
	d = opendir(path);
	if (!d)
		return false;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.') {
			any = true;
			break;
		}
	closedir(d);
	return any;
}

bool devno_depends_on(dev_t dev, dev_t base)
{
	return devno_depends(dev, base, NULL, 0) == 1;
}

unsigned int devno_logical_block_size(dev_t dev)
{
	char path[PATH_MAX];
	uint64_t v;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/logical_block_size",
		 major(dev), minor(dev));
	if (read_u64_file(path, &v)) {
		/* A partition: the queue is its disk's. */
		snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/../queue/logical_block_size",
			 major(dev), minor(dev));
		if (read_u64_file(path, &v))
			return 512;
	}
	if (v < 512 || v > 65536)
		return 512;
	return (unsigned int)v;
}

int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd))
		r = -errno;
	close(fd);
	return r;
}

bool write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				return false;	/* a signal: let the caller decide */
			return false;
		}
		p += n;
		len -= n;
	}
	return true;
}

bool pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0)
			return false;
		p += n;
		len -= n;
		off += n;
	}
	return true;
}

int run_program(const char *path, const char *const argv[], bool quiet_output,
		const char *keep_env, char *out, size_t outlen)
{
	char *env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL, NULL };
	const char *kept = keep_env ? getenv(keep_env) : NULL;
	posix_spawn_file_actions_t fa;
	int status, pfd[2] = { -1, -1 }, r = -1;
	size_t got = 0;
	pid_t pid;

	if (kept)
		env[1] = xasprintf("%s=%s", keep_env, kept);
	if (out && pipe2(pfd, O_CLOEXEC))
		goto out;
	posix_spawn_file_actions_init(&fa);
	if (out)
		posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	else if (quiet_output)
		posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	if (out || quiet_output)
		posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	if (posix_spawn(&pid, path, &fa, NULL, (char *const *)argv, env)) {
		posix_spawn_file_actions_destroy(&fa);
		goto out;
	}
	posix_spawn_file_actions_destroy(&fa);
	if (out) {
		char sink[256];
		ssize_t n;

		close(pfd[1]);
		pfd[1] = -1;
		while (got < outlen - 1) {
			n = read(pfd[0], out + got, outlen - 1 - got);
			if (n > 0)
				got += n;
			else if (!n || errno != EINTR)
				break;
		}
		out[got] = '\0';
		/* What does not fit is read and dropped: the program must not block. */
		while ((n = read(pfd[0], sink, sizeof(sink))) > 0 || (n < 0 && errno == EINTR))
			;
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			goto out;
	r = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	free(env[1]);
	return r;
}

const char *find_program(const char *const paths[])
{
	for (; *paths; paths++)
		if (!access(*paths, X_OK))
			return *paths;
	return NULL;
}

int run_modprobe(const char *module, bool quiet_output)
{
	/* By absolute path, as lvm2's MODPROBE_CMD: never through $PATH. */
	static const char *const paths[] = { "/sbin/modprobe", "/usr/sbin/modprobe", NULL };
	const char *argv[] = { "/sbin/modprobe", module, NULL };

	argv[0] = find_program(paths);
	if (!argv[0])
		argv[0] = paths[1];
	return run_program(argv[0], argv, quiet_output, NULL, NULL, 0);
}

int kmsg_mark(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd >= 0)
		lseek(fd, 0, SEEK_END);
	return fd;
}

/* Print the kernel's device-mapper messages since the mark, then close it. */
void kmsg_report(int fd, const char *filter)
{
	char rec[2048];
	ssize_t n;

	if (fd < 0)
		return;
	for (;;) {
		char *msg;

		n = read(fd, rec, sizeof(rec) - 1);
		if (n < 0) {
			if (errno == EPIPE)
				continue;	/* overwritten records */
			break;
		}
		rec[n] = '\0';
		msg = strchr(rec, ';');
		if (!msg)
			continue;
		msg++;
		msg[strcspn(msg, "\n")] = '\0';
		if (!filter || strstr(msg, filter))
			fprintf(stderr, "%s: kernel: %s\n", prog, msg);
	}
	close(fd);
}
