// SPDX-License-Identifier: GPL-2.0
/*
 * Host-side tests of fleece's pure parts: no device, no VM, no root needed.
 * Linked with the tools' objects (all but main.o); run by "make unit" (the
 * top Makefile) or "make -C tools check", under valgrind there.
 *
 *   size and time parsing, --chunk-size, exit codes and option mapping,
 *   table and status lines, state files (in a temporary FLEECE_STATE_DIR),
 *   the output's FILE.partial (regular files in a temporary directory),
 *   SHA-256 vectors and the readahead's hasher thread over a regular file.
 *
 * Each check prints nothing when it passes; a failure prints the file,
 * line, the expression and the values, and the program exits 1.  The
 * summary line is "unit: N checks, M failed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fleece.h"
#include "output.h"
#include "readahead.h"
#include "remap.h"
#include "sha256.h"
#include "util.h"

bool stdout_closed;		/* main.c's, which is not linked */

static unsigned int checks, failed;
static char tmpdir[256];

#define CHECK(cond) check_true(!!(cond), #cond, __FILE__, __LINE__)
#define CHECK_INT(a, b) check_int((long long)(a), (long long)(b), #a, __FILE__, __LINE__)
#define CHECK_STR(a, b) check_str((a), (b), #a, __FILE__, __LINE__)
#define CHECK_HAS(s, sub) check_has((s), (sub), #s, __FILE__, __LINE__)

static void check_true(bool ok, const char *what, const char *file, int line)
{
	checks++;
	if (!ok) {
		failed++;
		printf("FAIL %s:%d: %s\n", file, line, what);
	}
}

static void check_int(long long a, long long b, const char *what, const char *file, int line)
{
	checks++;
	if (a != b) {
		failed++;
		printf("FAIL %s:%d: %s is %lld, expected %lld\n", file, line, what, a, b);
	}
}

static void check_str(const char *a, const char *b, const char *what, const char *file,
		      int line)
{
	checks++;
	if (!a || strcmp(a, b)) {
		failed++;
		printf("FAIL %s:%d: %s is \"%s\", expected \"%s\"\n", file, line, what,
		       a ? a : "(null)", b);
	}
}

static void check_has(const char *s, const char *sub, const char *what, const char *file,
		      int line)
{
	checks++;
	if (!strstr(s, sub)) {
		failed++;
		printf("FAIL %s:%d: %s is \"%s\", expected to contain \"%s\"\n", file, line,
		       what, s, sub);
	}
}

/* --- standard error, captured: the messages are part of the behaviour --- */

static int saved_stderr = -1;
static char captured[8192];

static void capture_begin(void)
{
	char path[300];
	int fd;

	snprintf(path, sizeof(path), "%s/stderr", tmpdir);
	fflush(stderr);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		perror(path);
		exit(2);
	}
	saved_stderr = dup(2);
	dup2(fd, 2);
	close(fd);
}

/* The messages since capture_begin(), in captured[]. */
static const char *capture_end(void)
{
	ssize_t n;

	fflush(stderr);
	n = pread(2, captured, sizeof(captured) - 1, 0);
	captured[n > 0 ? n : 0] = '\0';
	dup2(saved_stderr, 2);
	close(saved_stderr);
	return captured;
}

/* --- sizes, times, exit codes -------------------------------------------- */

static void test_parse_size(void)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
		{ "0", 0 }, { "4096", 4096 }, { "10B", 10 }, { "512s", 512 * 512 },
		{ "64K", 65536 }, { "64k", 65536 }, { "64KiB", 65536 }, { "64KB", 65536 },
		{ "1M", 1 << 20 }, { "2G", 2ULL << 30 }, { "3T", 3ULL << 40 },
		{ "16777215T", 16777215ULL << 40 },
	};
	static const char *const bad[] = {
		"", "K", "-1", "+1", " 1", "1X", "1.5M", "1KiBx", "1Ki", "1sB", "1 M", "0x10",
	};
	unsigned int i;
	uint64_t v;

	for (i = 0; i < ARRAY_SIZE(good); i++) {
		v = 12345;
		CHECK_INT(parse_size(good[i].s, &v), 0);
		CHECK_INT(v, good[i].v);
	}
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		v = 12345;
		CHECK_INT(parse_size(bad[i], &v), -EINVAL);
		CHECK_INT(v, 12345);	/* untouched */
	}
	CHECK_INT(parse_size(NULL, &v), -EINVAL);
	CHECK_INT(parse_size("16777216T", &v), -ERANGE);
	CHECK_INT(parse_size("18446744073709551616", &v), -ERANGE);
	CHECK_INT(parse_size("18446744073709551615", &v), 0);
	CHECK(v == UINT64_MAX);
}

static void test_parse_chunk_size(void)
{
	static const char *const good[] = { "4K", "64K", "1M", "16M", "8192" };
	static const uint64_t good_v[] = { 4096, 65536, 1 << 20, 16 << 20, 8192 };
	static const char *const range[] = { "2K", "32M", "96K", "0", "4097", "1s" };
	unsigned int i;
	uint64_t v;

	for (i = 0; i < ARRAY_SIZE(good); i++) {
		v = 0;
		CHECK_INT(parse_chunk_size(good[i], &v), 0);
		CHECK_INT(v, good_v[i]);
	}
	for (i = 0; i < ARRAY_SIZE(range); i++) {
		v = 12345;
		capture_begin();
		CHECK_INT(parse_chunk_size(range[i], &v), EX_FLEECE_USAGE);
		CHECK_HAS(capture_end(), "must be a power of two from 4K to 16M");
		CHECK_INT(v, 12345);
	}
	capture_begin();
	CHECK_INT(parse_chunk_size("64Q", &v), EX_FLEECE_USAGE);
	CHECK_HAS(capture_end(), "--chunk-size '64Q': not a size");
}

static void test_parse_seconds(void)
{
	static const struct {
		const char *s;
		double v;
	} good[] = {
		{ "0", 0 }, { "45", 45 }, { "1.5", 1.5 }, { ".5", 0.5 }, { "3s", 3 },
		{ "500ms", 0.5 }, { "2m", 120 }, { "1min", 60 }, { "31536000", 31536000 },
	};
	static const char *const bad[] = { "", "s", "x", "-1", "1h", "5 s", "1e", "2mins" };
	unsigned int i;
	double v;

	for (i = 0; i < ARRAY_SIZE(good); i++) {
		v = -1;
		CHECK_INT(parse_seconds(good[i].s, &v), 0);
		CHECK(v == good[i].v);
	}
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		v = -7;
		CHECK(parse_seconds(bad[i], &v) < 0);
		CHECK(v == -7);
	}
	CHECK_INT(parse_seconds("31536001", &v), -ERANGE);
	CHECK_INT(parse_seconds("525601m", &v), -ERANGE);
}

static void test_parse_uint(void)
{
	uint64_t v = 0;

	CHECK_INT(parse_uint("42", 100, &v), 0);
	CHECK_INT(v, 42);
	CHECK_INT(parse_uint("100", 100, &v), 0);
	CHECK_INT(parse_uint("101", 100, &v), -ERANGE);
	CHECK_INT(parse_uint("4x", 100, &v), -EINVAL);
	CHECK_INT(parse_uint("-4", 100, &v), -EINVAL);
	CHECK_INT(parse_uint("", 100, &v), -EINVAL);
	CHECK_INT(v, 100);
}

static void test_fmt(void)
{
	char b[32];

	CHECK_STR(fmt_size(0, b, sizeof(b)), "0 B");
	CHECK_STR(fmt_size(1023, b, sizeof(b)), "1023 B");
	CHECK_STR(fmt_size(1024, b, sizeof(b)), "1.00 KiB");
	CHECK_STR(fmt_size(1536ULL << 20, b, sizeof(b)), "1.50 GiB");
	CHECK_STR(fmt_size(50ULL << 20, b, sizeof(b)), "50.0 MiB");
	CHECK_STR(fmt_size(500ULL << 30, b, sizeof(b)), "500 GiB");
	CHECK_STR(fmt_duration(4.25, b, sizeof(b)), "4.2s");
	CHECK_STR(fmt_duration(42, b, sizeof(b)), "0:42");
	CHECK_STR(fmt_duration(3723, b, sizeof(b)), "1:02:03");
	CHECK_STR(fmt_duration(-1, b, sizeof(b)), "--:--");
}

static void test_exit_codes(void)
{
	CHECK_INT(exit_code(0), EX_FLEECE_OK);
	CHECK_INT(exit_code(-EFLEECE_USAGE), 2);
	CHECK_INT(exit_code(-EFLEECE_REFUSED), 3);
	CHECK_INT(exit_code(-EFLEECE_INVALID), 4);
	CHECK_INT(exit_code(-EIO), 1);
	CHECK_INT(exit_code(-ENOENT), 1);
	CHECK_INT(exit_code(-ENXIO), 1);
	CHECK_INT(exit_code(-EINTR), 1);	/* no signal came */
	fleece_signal = SIGTERM;
	CHECK_INT(exit_code(-EINTR), 128 + SIGTERM);
	CHECK_INT(exit_code(-EIO), 1);
	fleece_signal = 0;
}

/* --json of backup and read: the words and one device's member. */
static void test_result_json(void)
{
	struct reader_result res = {
		.size = 16 << 20, .bytes_read = 65536, .bytes_written = 65536,
		.released_bytes = 16 << 20, .syncs = 2, .seconds = 1.5,
	};
	struct result_json j = {
		.name = "a\"b", .output = "/x/a.img", .res = &res, .sha256 = true,
		.kind = "incremental", .have_fleece = true, .cbw_count = 3,
		.fleece_peak = 4096, .fleece_peak_exact = true,
	};
	struct sbuf sb = { 0 };

	strcpy(res.sha256, "ab12");
	CHECK_STR(result_word(0), "ok");
	CHECK_STR(result_word(-EFLEECE_INVALID), "invalid");
	CHECK_STR(result_word(-EFLEECE_REFUSED), "refused");
	CHECK_STR(result_word(-EIO), "failed");
	CHECK_STR(result_word(-EINTR), "failed");	/* no signal came */
	output_json_device(&sb, &j);
	CHECK_STR(sb.s, "{\"name\":\"a\\\"b\",\"output\":\"/x/a.img\",\"result\":\"ok\",\"exit_code\":0,\"error\":null,\"kind\":\"incremental\",\"fallback_reason\":null,\"size_bytes\":16777216,\"bytes_read\":65536,\"bytes_written\":65536,\"zero_bytes\":0,\"released_bytes\":16777216,\"output_syncs\":2,\"seconds\":1.500,\"sha256\":\"ab12\",\"cbw_count\":3,\"fleece_peak_bytes\":4096,\"fleece_peak_exact\":true}");
	sb_free(&sb);
	/* A failure: no digest, the error; a signal; nothing read. */
	j.err = -EFLEECE_INVALID;
	j.error = "the view became invalid";
	output_json_device(&sb, &j);
	CHECK_HAS(sb.s, "\"result\":\"invalid\",\"exit_code\":4,\"error\":\"the view became invalid\"");
	CHECK_HAS(sb.s, "\"sha256\":null");
	sb_free(&sb);
	fleece_signal = SIGTERM;
	j.err = -EINTR;
	j.error = NULL;
	j.res = NULL;
	j.kind = NULL;
	j.have_fleece = false;
	output_json_device(&sb, &j);
	CHECK_HAS(sb.s, "\"result\":\"interrupted\",\"exit_code\":143,\"error\":\"interrupted by signal 15\"");
	CHECK_HAS(sb.s, "\"size_bytes\":null,\"bytes_read\":0");
	CHECK_HAS(sb.s, "\"cbw_count\":null");
	CHECK(!strstr(sb.s, "\"kind\""));
	fleece_signal = 0;
	sb_free(&sb);
}

/* --- options: their values, and the commands' argument checks ------------ */

static void test_reader_opts(void)
{
	struct reader_opts o = { .discard = true, .interval = 10 };
	static const struct {
		int opt;
		const char *arg, *msg;
	} bad[] = {
		{ 'b', "1000", "--block-size '1000': a multiple of 4K up to 256M" },
		{ 'b', "512M", "--block-size '512M'" },
		{ 'b', "6K", "--block-size '6K'" },
		{ 'r', "0", "--rate '0': not a size per second" },
		{ 'r', "fast", "--rate 'fast'" },
		{ 'p', "dots", "--progress 'dots': one of auto, bar, lines, none" },
		{ 'i', "0.05", "--interval '0.05': seconds, at least 0.1" },
		{ 'i', "soon", "--interval 'soon'" },
	};
	unsigned int i;

	CHECK_INT(reader_parse_opt(&o, 'b', "1M"), 0);
	CHECK_INT(o.block_bytes, 1 << 20);
	CHECK_INT(reader_parse_opt(&o, 'r', "50M"), 0);
	CHECK_INT(o.rate, 50 << 20);
	CHECK_INT(reader_parse_opt(&o, 'p', "plain"), 0);
	CHECK_INT(o.progress, PROGRESS_LINES);
	CHECK_INT(reader_parse_opt(&o, 'i', "500ms"), 0);
	CHECK(o.interval == 0.5);
	CHECK_INT(reader_parse_opt(&o, 's', NULL), 0);
	CHECK(o.sha256);
	CHECK_INT(reader_parse_opt(&o, 'j', NULL), 0);
	CHECK(o.json);
	CHECK_INT(reader_parse_opt(&o, 'N', NULL), 0);
	CHECK(!o.discard);
	CHECK_INT(reader_parse_opt(&o, 'Z', NULL), 1);	/* not a reader option */
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		capture_begin();
		CHECK_INT(reader_parse_opt(&o, bad[i].opt, bad[i].arg), EX_FLEECE_USAGE);
		CHECK_HAS(capture_end(), bad[i].msg);
	}
	CHECK_INT(o.block_bytes, 1 << 20);	/* the bad values changed nothing */
	CHECK_INT(o.rate, 50 << 20);
}

static void test_start_opts(void)
{
	struct start_opts o;

	start_opts_init(&o);
	CHECK_INT(o.chunk_bytes, FLEECE_DEFAULT_CHUNK);
	CHECK_INT(start_parse_opt(&o, 'c', "256K"), 0);
	CHECK_INT(o.chunk_bytes, 256 << 10);
	capture_begin();
	CHECK_INT(start_parse_opt(&o, 'c', "3K"), EX_FLEECE_USAGE);
	CHECK_HAS(capture_end(), "power of two");
	CHECK_INT(o.chunk_bytes, 256 << 10);
	CHECK_INT(start_parse_opt(&o, 't', "1.5"), 0);
	CHECK_INT(o.cbw_timeout_ms, 1500);
	CHECK_INT(start_parse_opt(&o, 't', "0"), 0);
	CHECK_INT(o.cbw_timeout_ms, 0);
	capture_begin();
	CHECK_INT(start_parse_opt(&o, 't', "100us"), EX_FLEECE_USAGE);
	CHECK_HAS(capture_end(), "--cbw-timeout '100us': not a number of seconds");
	CHECK_INT(start_parse_opt(&o, 't', "0.0001"), 0);
	CHECK_INT(o.cbw_timeout_ms, 1);		/* not 0: that is "no limit" */
	CHECK_INT(start_parse_opt(&o, 'd', "/dev/a,/dev/b"), 0);
	CHECK_INT(o.nr_fleece_devs, 2);
	CHECK_STR(o.fleece_devs[1], "/dev/b");
	capture_begin();
	CHECK_INT(start_parse_opt(&o, 'D', "/var/tmp"), EX_FLEECE_USAGE);
	CHECK_HAS(capture_end(), "--fleece-dev and --fleece-dir cannot be used together");
	start_opts_free(&o);
}

/*
 * A command's exit status and message for arguments it must refuse before
 * it looks at any device: argv is built from @args (space-separated).
 */
static int run_cmd(int (*cmd)(int, char **), const char *args)
{
	char *copy = xstrdup(args), *argv[16], *save = NULL, *tok;
	int argc = 0, r;

	for (tok = strtok_r(copy, " ", &save); tok && argc < 15; tok = strtok_r(NULL, " ", &save))
		argv[argc++] = tok;
	argv[argc] = NULL;
	optind = 0;		/* glibc: a fresh getopt scan */
	opterr = 1;
	capture_begin();
	r = cmd(argc, argv);
	capture_end();
	quiet = false;
	verbose = 0;
	prog = "fleece";
	free(copy);
	return r;
}

static void test_cmd_args(void)
{
	CHECK_INT(run_cmd(cmd_start, "start"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "fleece start: no device given");
	CHECK_INT(run_cmd(cmd_start, "start --no-such-option x"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "unrecognized option '--no-such-option'");
	CHECK_INT(run_cmd(cmd_stop, "stop"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "no device given (or --all)");
	CHECK_INT(run_cmd(cmd_stop, "stop --all x"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "--all and device names cannot be used together");
	CHECK_INT(run_cmd(cmd_status, "status --bogus"), EX_FLEECE_USAGE);
	CHECK_INT(run_cmd(cmd_read, "read"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "fleece read: no view given");
	CHECK_INT(run_cmd(cmd_read, "read a b -o x"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "one view at a time: 'b' is one too many");
	CHECK_INT(run_cmd(cmd_read, "read a"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "no output given");
	CHECK_INT(run_cmd(cmd_read, "read --block-size 3K a -o x"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "--block-size '3K'");
	CHECK_INT(run_cmd(cmd_read, "read --json a -o -"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "--json with -o -: standard output carries the image");
	CHECK_INT(run_cmd(cmd_backup, "backup -D /tmp --json a -o -"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "--json with -o -: standard output carries the image");
	CHECK_INT(run_cmd(cmd_backup, "backup"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "fleece backup: no device given");
	CHECK_INT(run_cmd(cmd_backup, "backup a b -o x"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "one device at a time");
	CHECK_INT(run_cmd(cmd_backup, "backup a"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "no output given");
	CHECK_INT(run_cmd(cmd_backup, "backup a -o x"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "give the fleece space");
	CHECK_INT(run_cmd(cmd_backup, "backup -D /tmp a b -o /nonexistent-dir/"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "-o /nonexistent-dir/: not a directory");
	CHECK_INT(run_cmd(cmd_backup, "backup -d /dev/null a b -o /tmp/"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "2 devices, 1 --fleece-dev: give one each");
	CHECK_INT(run_cmd(cmd_backup, "backup -D /tmp --incremental a b -o /tmp/"), EX_FLEECE_USAGE);
	CHECK_HAS(captured, "--incremental and --changed-map: one device at a time");
	CHECK_INT(run_cmd(cmd_backup, "backup --chunk-size 1M --chunk-size 5K a -o x"),
		  EX_FLEECE_USAGE);
	CHECK_HAS(captured, "--chunk-size '5K': must be a power of two");
}

/* --- table and status lines ---------------------------------------------- */

static void test_tables(void)
{
	struct fleece_params p;
	struct fleece_state st = { .present = true };
	struct dmw_table t = { 0 };
	dev_t d = 0;
	uint64_t off = 0;

	CHECK_INT(parse_devno("253:7", &d), 0);
	CHECK(d == makedev(253, 7));
	CHECK_INT(parse_devno("253:7x", &d), -EINVAL);
	CHECK_INT(parse_devno("253", &d), -EINVAL);
	CHECK_INT(parse_devno("/dev/dm-7", &d), -EINVAL);
	CHECK(d == makedev(253, 7));

	CHECK_INT(parse_linear_params("8:16 2048", &d, &off), 0);
	CHECK(d == makedev(8, 16));
	CHECK_INT(off, 2048);
	CHECK_INT(parse_linear_params("8:16", &d, &off), -EINVAL);
	CHECK_INT(parse_linear_params("8:16 2048 1", &d, &off), -EINVAL);
	CHECK_INT(parse_linear_params("8:16 -1x", &d, &off), -EINVAL);

	CHECK_INT(parse_fleece_params("253:1 7:0 128", &p), 0);
	CHECK(p.origin == makedev(253, 1) && p.fleece == makedev(7, 0));
	CHECK_INT(p.chunk_sectors, 128);
	CHECK(!p.fail_origin_writes && !p.cbw_timeout_ms && !p.origin_offset);
	CHECK_INT(parse_fleece_params("253:1 7:0 128 0", &p), 0);
	CHECK_INT(parse_fleece_params("253:1 7:0 16 5 " FLEECE_FEATURE_FAIL_ORIGIN_WRITES " "
				      FLEECE_FEATURE_CBW_TIMEOUT_MS " 45000 "
				      FLEECE_FEATURE_ORIGIN_OFFSET " 2048", &p), 0);
	CHECK_INT(p.chunk_sectors, 16);
	CHECK(p.fail_origin_writes);
	CHECK_INT(p.cbw_timeout_ms, 45000);
	CHECK_INT(p.origin_offset, 2048);
	CHECK_INT(parse_fleece_params("253:1 7:0 128 2 " FLEECE_FEATURE_ORIGIN_OFFSET, &p),
		  -EINVAL);	/* the feature's value is missing */
	CHECK_INT(parse_fleece_params("253:1 7:0", &p), -EINVAL);
	CHECK_INT(parse_fleece_params("253:1 7:0 0", &p), -EINVAL);
	CHECK_INT(parse_fleece_params("dm-1 7:0 128", &p), -EINVAL);
	CHECK_INT(parse_fleece_params("", &p), -EINVAL);

	dmw_table_add(&t, 0, 2048, FLEECE_TARGET_NAME, "8:16 7:0 128 2 "
		      FLEECE_FEATURE_ORIGIN_OFFSET " 4096");
	CHECK(table_is_fleece(&t, &p));
	st.linear_dev = makedev(8, 16);
	st.linear_offset = 4096;
	CHECK(fleece_table_ours(&p, 0, &st));
	st.linear_offset = 0;
	CHECK(!fleece_table_ours(&p, 0, &st));	/* another linear table's */
	CHECK(!fleece_table_ours(&p, makedev(8, 16), &st));
	dmw_table_free(&t);
	dmw_table_add(&t, 0, 2048, "linear", "8:16 0");
	CHECK(!table_is_fleece(&t, &p));
	dmw_table_free(&t);
}

static void test_status(void)
{
	struct fleece_status s;

	CHECK_INT(parse_fleece_status("128 1000 900 50 40 60 0 active 3 0", &s), 0);
	CHECK(!s.invalid);
	CHECK_INT(s.f[FLEECE_ST_CHUNK_SECTORS], 128);
	CHECK_INT(s.f[FLEECE_ST_CHUNKS_TOTAL], 1000);
	CHECK_INT(s.f[FLEECE_ST_CHUNKS_PENDING], 900);
	CHECK_INT(s.f[FLEECE_ST_CHUNKS_COPIED], 50);
	CHECK_INT(s.f[FLEECE_ST_CHUNKS_RELEASED], 40);
	CHECK_INT(s.f[FLEECE_ST_CBW_COUNT], 60);
	CHECK_INT(s.f[FLEECE_ST_CBW_ERRORS], 0);
	CHECK_INT(s.f[FLEECE_ST_COPIES_IN_FLIGHT], 3);
	CHECK_INT(parse_fleece_status("128 1000 0 1 1 2 1 " FLEECE_STATE_INVALID " 0", &s), 0);
	CHECK(s.invalid);
	CHECK_INT(s.f[FLEECE_ST_CBW_ERRORS], 1);
	/* A module older than target version 1.1 ends at the state. */
	CHECK_INT(parse_fleece_status("128 1000 900 50 40 60 0 active", &s), 0);
	CHECK(!s.invalid);
	CHECK_INT(s.f[FLEECE_ST_COPIES_IN_FLIGHT], 0);
	CHECK_INT(parse_fleece_status("128 1000 900 50 40 60 0", &s), -EINVAL);
	CHECK_INT(parse_fleece_status("", &s), -EINVAL);
}

/* --- state files ----------------------------------------------------------- */

static void test_state(void)
{
	struct fleece_state w = { 0 }, r;
	char dir[300], path[400], tmp[400], target[400], **names;
	unsigned int n, i;
	struct stat sb;
	FILE *f;

	snprintf(dir, sizeof(dir), "%s/state", tmpdir);
	setenv("FLEECE_STATE_DIR", dir, 1);
	CHECK_STR(state_dir(), dir);

	CHECK_INT(state_read("vg0-lv", &r), 0);		/* none yet */
	CHECK(!r.present);
	CHECK_INT(state_list(&names, &n), 0);		/* no directory: none */
	CHECK_INT(n, 0);
	CHECK_INT(state_absent("vg0-lv"), 0);

	snprintf(w.phase, sizeof(w.phase), "running");
	snprintf(w.fleece_file, sizeof(w.fleece_file), "/var/tmp/vg0-lv.fleece");
	snprintf(w.partial, sizeof(w.partial), "/backup/a b.img.partial");
	w.loop_dev = makedev(7, 3);
	w.fleece_dev = makedev(7, 3);
	w.linear_dev = makedev(8, 16);
	w.linear_offset = 123456789012ULL;
	w.track_store = makedev(253, 9);
	CHECK_INT(state_write("vg0-lv", &w), 0);
	CHECK(!stat(dir, &sb) && S_ISDIR(sb.st_mode) && (sb.st_mode & 07777) == 0700);
	snprintf(path, sizeof(path), "%s/vg0-lv", dir);
	CHECK(!lstat(path, &sb) && S_ISREG(sb.st_mode) && (sb.st_mode & 07777) == 0600);

	CHECK_INT(state_read("vg0-lv", &r), 0);
	CHECK(r.present);
	CHECK_STR(r.phase, "running");
	CHECK_STR(r.fleece_file, w.fleece_file);
	CHECK_STR(r.partial, w.partial);
	CHECK(r.loop_dev == w.loop_dev && r.fleece_dev == w.fleece_dev);
	CHECK(r.linear_dev == w.linear_dev);
	CHECK_INT(r.linear_offset, w.linear_offset);
	CHECK(r.track_store == w.track_store);
	CHECK_INT(r.pid, getpid());

	capture_begin();
	CHECK_INT(state_absent("vg0-lv"), -EFLEECE_REFUSED);
	CHECK_HAS(capture_end(), "run 'fleece stop vg0-lv' first");

	/*
	 * A leftover temporary file of a killed run is replaced, and a symlink
	 * there is not followed (its target stays as it was); the temporary
	 * names are not listed as NAMEs.
	 */
	snprintf(target, sizeof(target), "%s/target", tmpdir);
	f = fopen(target, "w");
	fputs("untouched\n", f);
	fclose(f);
	snprintf(tmp, sizeof(tmp), "%s/other~tmp", dir);
	CHECK_INT(symlink(target, tmp), 0);
	snprintf(w.phase, sizeof(w.phase), "starting");
	w.linear_dev = 0;
	w.partial[0] = '\0';
	CHECK_INT(state_write("other", &w), 0);
	CHECK(lstat(tmp, &sb) && errno == ENOENT);
	f = fopen(target, "r");
	CHECK(f && fgets(path, sizeof(path), f) && !strcmp(path, "untouched\n"));
	if (f)
		fclose(f);
	CHECK_INT(state_read("other", &r), 0);
	CHECK_STR(r.phase, "starting");
	CHECK(!r.linear_dev && !r.partial[0]);

	/*
	 * The format (kv_read): comments, lines without '=' and keys of a
	 * newer version are passed over; a value keeps an '=' of its own.
	 */
	snprintf(path, sizeof(path), "%s/hand", dir);
	f = fopen(path, "w");
	fputs("# a comment=x\nno equals sign\nphase=running\nfuture_key=1\npartial=/b/x=y.img.partial\n", f);
	fclose(f);
	CHECK_INT(state_read("hand", &r), 0);
	CHECK(r.present);
	CHECK_STR(r.phase, "running");
	CHECK_STR(r.partial, "/b/x=y.img.partial");
	CHECK(!r.loop_dev && !r.pid);
	unlink(path);

	snprintf(tmp, sizeof(tmp), "%s/third~tmp", dir);
	f = fopen(tmp, "w");
	fclose(f);
	CHECK_INT(state_list(&names, &n), 0);
	CHECK_INT(n, 2);
	for (i = 0; i < n; i++) {
		CHECK(!strcmp(names[i], "vg0-lv") || !strcmp(names[i], "other"));
		free(names[i]);
	}
	free(names);

	CHECK_INT(state_remove("vg0-lv"), 0);
	CHECK_INT(state_remove("vg0-lv"), 0);		/* idempotent */
	CHECK_INT(state_read("vg0-lv", &r), 0);
	CHECK(!r.present);
	CHECK_INT(state_absent("vg0-lv"), 0);
	state_remove("other");
	unlink(tmp);
	unlink(target);
	rmdir(dir);
}

/* --- the output: FILE.partial ---------------------------------------------- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (!f || fputs(text, f) < 0 || fclose(f)) {
		perror(path);
		exit(2);
	}
}

static bool file_is(const char *path, const char *text)
{
	char buf[256];
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return !strcmp(buf, text);
}

static void test_output(void)
{
	struct output_guard g = { .n = 0 };
	struct output out;
	char img[300], partial[320], target[300];
	struct stat sb;
	mode_t old;

	snprintf(img, sizeof(img), "%s/out.img", tmpdir);
	snprintf(partial, sizeof(partial), "%s.partial", img);
	snprintf(target, sizeof(target), "%s/secret", tmpdir);

	/* Complete: FILE.partial, 0600 whatever the umask, renamed to FILE. */
	old = umask(0);
	CHECK_INT(output_open(img, &g, &out), 0);
	umask(old);
	CHECK(out.is_file && out.fd > 2);
	CHECK_STR(out.partial, partial);
	CHECK(!lstat(partial, &sb) && S_ISREG(sb.st_mode) && (sb.st_mode & 07777) == 0600);
	CHECK(lstat(img, &sb) && errno == ENOENT);
	CHECK(write(out.fd, "image", 5) == 5);
	CHECK_INT(output_finish(&out, 0), 0);
	CHECK(file_is(img, "image"));
	CHECK(lstat(partial, &sb) && errno == ENOENT);

	/* Failed: the incomplete image is removed, and FILE is as it was. */
	CHECK_INT(output_open(img, &g, &out), 0);
	CHECK(write(out.fd, "half", 4) == 4);
	capture_begin();
	CHECK_INT(output_finish(&out, -EIO), -EIO);
	CHECK_HAS(capture_end(), "removed the incomplete image");
	CHECK(lstat(partial, &sb) && errno == ENOENT);
	CHECK(file_is(img, "image"));

	/* An existing FILE.partial (another run's) is refused, left alone. */
	write_file(partial, "another run's");
	capture_begin();
	CHECK_INT(output_open(img, &g, &out), -EFLEECE_REFUSED);
	CHECK_HAS(capture_end(), "exists: another backup to");
	CHECK(file_is(partial, "another run's"));
	CHECK(out.partial == NULL && out.fd < 0);
	unlink(partial);

	/* A symlink there is not followed: refused, its target untouched. */
	write_file(target, "secret");
	CHECK_INT(symlink(target, partial), 0);
	capture_begin();
	CHECK_INT(output_open(img, &g, &out), -EFLEECE_REFUSED);
	capture_end();
	CHECK(file_is(target, "secret"));
	CHECK(!lstat(partial, &sb) && S_ISLNK(sb.st_mode));
	unlink(partial);
	unlink(target);

	/* Names refused before anything is opened. */
	capture_begin();
	CHECK_INT(output_check(tmpdir), -EFLEECE_USAGE);
	CHECK_HAS(capture_end(), "a directory");
	capture_begin();
	CHECK_INT(output_check(""), -EFLEECE_USAGE);
	CHECK_HAS(capture_end(), "empty file name");
	capture_begin();
	CHECK_INT(output_check("/dev/mapper/nothing-fleece-view"), -EFLEECE_USAGE);
	CHECK_HAS(capture_end(), "an image is never created in /dev");
	capture_begin();
	CHECK_INT(output_check("/nonexistent-dir/x.img"), -EFLEECE_USAGE);
	CHECK_HAS(capture_end(), "cannot write in /nonexistent-dir");
	stdout_closed = true;
	capture_begin();
	CHECK_INT(output_check("-"), -EFLEECE_USAGE);
	CHECK_HAS(capture_end(), "standard output is closed");
	stdout_closed = false;
	unlink(img);
}

/* --- SHA-256 --------------------------------------------------------------- */

/* tmpdir/@name holding the @size bytes of @data, open read-write (its path in @path). */
static int data_file(const char *name, const void *data, size_t size, char *path, size_t len)
{
	int fd;

	snprintf(path, len, "%s/%s", tmpdir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0 && write(fd, data, size) == (ssize_t)size);
	return fd;
}

static const char *sha_of(const void *data, size_t len, char hex[65])
{
	struct sha256 s;

	if (sha256_init(&s))
		return "(init failed)";
	sha256_update(&s, data, len);
	if (sha256_final(&s, hex))
		return "(final failed)";
	return hex;
}

#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA_448 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
#define SHA_MILLION_A "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"

static void test_sha256(void)
{
	static const size_t splits[] = { 1, 55, 1, 7, 64, 63, 65, 4096, 100000, 0 };
	size_t million = 1000000, off, i;
	char hex[65], path[300];
	unsigned char *a = xmalloc(million);
	struct sha256 s;
	int fd;

	memset(a, 'a', million);
	CHECK_STR(sha_of("", 0, hex), SHA_EMPTY);
	CHECK_STR(sha_of("abc", 3, hex), SHA_ABC);
	CHECK_STR(sha_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex),
		  SHA_448);
	CHECK_STR(sha_of(a, million, hex), SHA_MILLION_A);

	/* Updates of any sizes across the 64-byte blocks: the same digest. */
	CHECK_INT(sha256_init(&s), 0);
	for (off = 0, i = 0; off < million; i++) {
		size_t n = splits[i % ARRAY_SIZE(splits)];

		if (n > million - off)
			n = million - off;
		sha256_update(&s, a + off, n);	/* n == 0 too */
		off += n;
	}
	CHECK_INT(sha256_final(&s, hex), 0);
	CHECK_STR(hex, SHA_MILLION_A);
	CHECK(s.ctx == NULL);
	CHECK_INT(sha256_final(&s, hex), -EINVAL);	/* once only */
	sha256_free(&s);				/* idempotent */

	/* sha256_fd: the whole file from its start, whatever its offset. */
	fd = data_file("million", a, million, path, sizeof(path));
	CHECK_INT(sha256_fd(fd, hex), 0);
	CHECK_STR(hex, SHA_MILLION_A);
	close(fd);
	fd = open(path, O_WRONLY);
	CHECK_INT(sha256_fd(fd, hex), -EBADF);	/* not readable */
	close(fd);
	unlink(path);
	free(a);
}

/*
 * The reader's hasher thread (readahead.c) over a regular file: blocks in
 * order, the digest equal to the whole file's, and a read error stops it.
 */
static void test_readahead_hash(void)
{
	const size_t block = 1 << 20, size = 10 * block + 12345;
	unsigned char *data = xmalloc(size);
	const unsigned char *b;
	char path[300], hex[65], want[65];
	struct readahead *ra;
	struct sha256 s;
	uint64_t off, eo = 0;
	size_t i;
	bool same = true;
	int fd;

	for (i = 0; i < size; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 11);
	fd = data_file("blocks", data, size, path, sizeof(path));
	CHECK_INT(sha256_fd(fd, want), 0);
	CHECK_STR(sha_of(data, size, hex), want);

	CHECK_INT(sha256_init(&s), 0);
	ra = readahead_start(fd, size, block, &s);
	CHECK(ra != NULL);
	for (off = 0; ra && off < size; off += block) {
		size_t n = size - off < block ? size - off : block;

		b = readahead_next(ra, &eo);
		if (!b || memcmp(b, data + off, n))
			same = false;
		readahead_done(ra);
	}
	CHECK(same);
	if (ra) {
		CHECK_INT(readahead_hash_wait(ra), 0);
		readahead_stop(ra);
	}
	CHECK_INT(sha256_final(&s, hex), 0);
	CHECK_STR(hex, want);

	/* Three blocks more than the file has: the read fails at its end. */
	CHECK_INT(sha256_init(&s), 0);
	ra = readahead_start(fd, size - 12345 + 3 * block, block, &s);
	CHECK(ra != NULL);
	for (off = 0; ra; off += block) {
		b = readahead_next(ra, &eo);
		if (!b)
			break;
		readahead_done(ra);
	}
	CHECK_INT(off, 10 * block);
	CHECK_INT(errno, EIO);
	CHECK_INT(eo, size);
	if (ra) {
		CHECK_INT(readahead_hash_wait(ra), -EIO);
		readahead_stop(ra);
	}
	sha256_free(&s);

	/* Stopped midway: the threads end, nothing waits forever. */
	CHECK_INT(sha256_init(&s), 0);
	ra = readahead_start(fd, size, block, &s);
	CHECK(ra && readahead_next(ra, &eo));
	readahead_stop(ra);
	sha256_free(&s);
	close(fd);
	unlink(path);
	free(data);
}

/*
 * Scattered ranges read by several threads (readahead.c, an incremental's
 * reader): the blocks come in order, each with its own bytes, whatever
 * order their reads end in; a failed read is reported at its block, after
 * every block before it; stopped midway, the threads end.
 */
static void test_readahead_ranges(void)
{
	const size_t size = 8 << 20;
	unsigned char *data = xmalloc(size);
	struct readahead_range rg[300];
	const unsigned char *b;
	struct readahead *ra;
	char path[300];
	uint64_t eo = 0, off = 0;
	unsigned int i, k, n = 0, t;
	bool same;
	int fd;

	for (i = 0; i < size; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 13);
	fd = data_file("ranges", data, size, path, sizeof(path));
	/* 4 KiB to 64 KiB blocks with gaps, ascending. */
	for (i = 0; n < ARRAY_SIZE(rg) - 1; i++) {
		rg[n].off = off;
		rg[n].len = 4096 * (1 + i % 16);
		off += rg[n].len + 4096 * (i % 3);
		if (off > size)
			break;
		n++;
	}
	CHECK(n > 100);
	for (t = 1; t <= 16; t *= 4) {
		ra = readahead_start_ranges(fd, rg, n, t);
		CHECK(ra != NULL);
		same = ra != NULL;
		for (k = 0; ra && k < n; k++) {
			b = readahead_next(ra, &eo);
			if (!b || memcmp(b, data + rg[k].off, rg[k].len))
				same = false;
			readahead_done(ra);
		}
		CHECK(same);
		readahead_stop(ra);
	}

	/* Block 150 reaches past the file's end: blocks 0 to 149, then EIO there. */
	rg[150].off = size - 4096;
	rg[150].len = 3 * 4096;
	ra = readahead_start_ranges(fd, rg, n, 8);
	CHECK(ra != NULL);
	for (k = 0; ra && k < n; k++) {
		b = readahead_next(ra, &eo);
		if (!b)
			break;
		CHECK(!memcmp(b, data + rg[k].off, rg[k].len));
		readahead_done(ra);
	}
	CHECK_INT(k, 150);
	CHECK_INT(errno, EIO);
	CHECK_INT(eo, size);
	readahead_stop(ra);

	/* Stopped with reads in flight: nothing waits forever. */
	ra = readahead_start_ranges(fd, rg, 150, 16);
	CHECK(ra && readahead_next(ra, &eo));
	readahead_stop(ra);
	errno = 0;
	CHECK(!readahead_start_ranges(fd, rg, 10, 0) && errno == EINVAL);
	close(fd);
	unlink(path);
	free(data);
}

/*
 * remap (remap.h): chunks added in any order end up at their offsets in the
 * image, and the rest of the image is left as it was.  Here the file system
 * is the host's: where it cannot clone (ext4, tmpfs) every range is copied
 * and counted so; a clone refused by the fault point (EOPNOTSUPP) stops the
 * clones for good; more ranges than a flush holds are flushed on the way.
 */
static void test_remap(void)
{
	const size_t size = 4 << 20, ch = 64 << 10;
	unsigned char *img0 = xmalloc(size), *want = xmalloc(size), *got = xmalloc(size);
	unsigned char chunk[64 << 10];
	uint64_t cloned, copied, total = 0;
	char ipath[300], spath[300];
	struct remap *rm;
	unsigned int i, pass;
	int ifd, sfd;

	for (i = 0; i < size; i++)
		img0[i] = (unsigned char)(i * 2654435761u >> 11);
	for (pass = 0; pass < 3; pass++) {
		/* 1: the fault point refuses the first clone; 2: 5000 small ranges. */
		if (pass == 1)
			setenv("FLEECE_FAULT", "remap=EOPNOTSUPP", 1);
		memcpy(want, img0, size);
		ifd = data_file("remap-img", img0, size, ipath, sizeof(ipath));
		sfd = data_file("remap-scratch", "", 0, spath, sizeof(spath));
		CHECK(!remap_open(&rm, ifd, sfd));
		total = 0;
		if (pass < 2) {
			/* Chunks 3, 4, 5 (one range), 9, then 1: out of order. */
			static const unsigned int at[] = { 3, 4, 5, 9, 1 };

			for (i = 0; i < ARRAY_SIZE(at); i++) {
				memset(chunk, 0x40 + i, ch);
				memcpy(want + at[i] * ch, chunk, ch);
				CHECK(!remap_add(rm, chunk, ch, at[i] * ch));
				total += ch;
			}
		} else {
			bool added = true;

			for (i = 0; i < 5000; i++) {
				memset(chunk, (int)i, 16);
				memcpy(want + i * 512, chunk, 16);
				added = added && !remap_add(rm, chunk, 16, i * 512);
				total += 16;
			}
			CHECK(added);
		}
		CHECK(!remap_flush(rm));
		remap_counts(rm, &cloned, &copied);
		CHECK_INT(cloned + copied, total);
		if (pass == 1)
			CHECK_INT(copied, total);
		CHECK(pread(ifd, got, size, 0) == (ssize_t)size && !memcmp(got, want, size));
		/* A second flush with nothing added changes nothing. */
		CHECK(!remap_flush(rm));
		remap_counts(rm, &cloned, &copied);
		CHECK_INT(cloned + copied, total);
		remap_close(rm);
		unsetenv("FLEECE_FAULT");
		close(ifd);
		close(sfd);
		unlink(ipath);
		unlink(spath);
	}
	free(img0);
	free(want);
	free(got);
}

/*
 * fleece_lock(): one lock per NAME, as many NAMEs as one command names (a
 * fixed table of 64 refused the 65th); a NAME locked twice by the same
 * process is one lock; another process gets -EBUSY and a message.
 */
static void test_locks(void)
{
	char name[32], path[400], c = 0;
	unsigned int i, n = 100;
	int status, go[2];
	pid_t pid;

	/* The other process: forked first, so that it holds none of ours. */
	CHECK_INT(pipe(go), 0);
	pid = fork();
	if (!pid) {
		int r;

		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		capture_begin();
		r = fleece_lock("vg99-lv");
		capture_end();
		_exit(r == -EBUSY && strstr(captured, "another fleece command is working on it") ?
		      0 : 1);
	}
	close(go[0]);
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "vg%u-lv", i);
		CHECK_INT(fleece_lock(name), 0);
	}
	CHECK_INT(fleece_lock("vg99-lv"), 0);		/* held already */
	CHECK_INT(write(go[1], &c, 1), 1);
	close(go[1]);
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/vg%u-lv.lock", tmpdir, i);
		CHECK_INT(unlink(path), 0);
	}
}

static const struct {
	const char *name;
	void (*fn)(void);
} tests[] = {
	{ "parse_size", test_parse_size },
	{ "parse_chunk_size", test_parse_chunk_size },
	{ "parse_seconds", test_parse_seconds },
	{ "parse_uint", test_parse_uint },
	{ "fmt", test_fmt },
	{ "exit_codes", test_exit_codes },
	{ "result_json", test_result_json },
	{ "reader_opts", test_reader_opts },
	{ "start_opts", test_start_opts },
	{ "cmd_args", test_cmd_args },
	{ "tables", test_tables },
	{ "status", test_status },
	{ "state", test_state },
	{ "output", test_output },
	{ "sha256", test_sha256 },
	{ "readahead_hash", test_readahead_hash },
	{ "readahead_ranges", test_readahead_ranges },
	{ "remap", test_remap },
	{ "locks", test_locks },
};

/* unit-tests [WORD]: all the tests, or those whose names contain WORD. */
int main(int argc, char **argv)
{
	const char *base = getenv("TMPDIR");
	unsigned int i, ran = 0;

	snprintf(tmpdir, sizeof(tmpdir), "%s/fleece-unit-XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror(tmpdir);
		return 2;
	}
	/* Never the system's: the tests' state and locks are their own. */
	setenv("FLEECE_LOCK_DIR", tmpdir, 1);
	{
		char dir[300];

		snprintf(dir, sizeof(dir), "%s/state", tmpdir);
		setenv("FLEECE_STATE_DIR", dir, 1);
	}
	for (i = 0; i < ARRAY_SIZE(tests); i++) {
		if (argc > 1 && !strstr(tests[i].name, argv[1]))
			continue;
		tests[i].fn();
		ran++;
	}
	if (!ran)
		printf("FAIL: no test matches '%s'\n", argv[1]), failed++;

	{
		char path[300];

		snprintf(path, sizeof(path), "%s/stderr", tmpdir);
		unlink(path);
	}
	if (rmdir(tmpdir))
		printf("FAIL: %s is not empty after the tests\n", tmpdir), failed++;
	printf("unit: %u checks, %u failed\n", checks, failed);
	return failed ? 1 : 0;
}
