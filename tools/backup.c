// SPDX-License-Identifier: GPL-2.0
/*
 * fleece backup: start, read the view to the output while the device keeps
 * working, stop.  Whatever happens (an error, SIGINT, SIGTERM, a closed
 * pipe) the fleece is stopped, no device is left behind, FILE.partial is
 * removed and the exit status is not 0.  A SIGKILL leaves things for
 * "fleece stop NAME", which also removes FILE.partial.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleece.h"
#include "opts.h"
#include "output.h"
#include "util.h"

struct sampler {
	const char *name;
	uint64_t peak_used;
	bool exact;
	struct fleece_report last;
	bool have_last;
};

static void sample(void *arg)
{
	struct sampler *s = arg;
	struct fleece_report r;

	if (fleece_report(s->name, &r) || !r.have_status)
		return;
	if (r.fleece_used > s->peak_used)
		s->peak_used = r.fleece_used;
	s->exact = r.fleece_used_exact;
	s->last = r;
	s->have_last = true;
}

/*
 * Before the output is opened: NAME is not fleeced already (its state file
 * tells), and the devices the output must not touch: NAME, the fleece
 * device.  An exit code.
 */
static int backup_guard(const char *name, const struct start_opts *so,
			struct output_guard *g)
{
	struct dmw_info info;
	struct stat sb;
	int r;

	r = state_absent(name);
	if (r)
		return r;
	r = dmw_info(name, &info);
	if (r || !info.exists) {
		msg_error("%s: cannot query device-mapper: %s", name,
			  r ? dmw_strerror(r) : "no such device");
		return EX_FLEECE_FAIL;
	}
	output_guard_add(g, makedev(info.major, info.minor), name);
	if (so->nr_fleece_devs && !stat(so->fleece_devs[0], &sb) && S_ISBLK(sb.st_mode))
		output_guard_add(g, sb.st_rdev, "the fleece device");
	return 0;
}

static void backup_help(void)
{
	printf("Usage: fleece backup [OPTIONS] (--fleece-dev DEV | --fleece-dir DIR) NAME -o FILE|-\n"
	       "\n"
	       "Back up the device-mapper device NAME as it is now, while it keeps working:\n"
	       "start a fleece, read the frozen view to FILE (written as FILE.partial and\n"
	       "renamed when complete; all-zero chunks become holes) or to standard output,\n"
	       "releasing each chunk once it is written, then stop.  On any error or signal\n"
	       "everything is undone and the exit status is not 0.\n"
	       "\n"
	       "Fleece options (as for 'fleece start'):\n"
	       "  -d, --fleece-dev DEV      fleece device, at least as large as NAME\n"
	       "  -D, --fleece-dir DIR      or a sparse file DIR/NAME.fleece on a loop device\n"
	       HELP_START_POLICY
	       "\n"
	       "Reader options:\n"
	       HELP_READER
	       HELP_COMMON);
}

struct backup_args {
	struct start_opts so;
	struct reader_opts ro;
};

static int backup_opt(int c, const char *arg, void *ctx)
{
	struct backup_args *a = ctx;
	int r = start_parse_opt(&a->so, c, arg);

	return r == 1 ? reader_parse_opt(&a->ro, c, arg) : r;
}

int cmd_backup(int argc, char **argv)
{
	static const struct option opts[] = { LONGOPTS_START, LONGOPTS_READER, LONGOPTS_COMMON };
	struct backup_args a = { .ro = { .discard = true, .interval = 10 } };
	struct start_opts *so = &a.so;
	struct reader_opts *ro = &a.ro;
	struct reader_result res;
	struct sampler smp;
	struct output out;
	struct fleece_names fn;
	struct dmw_info vi;
	const char *output;
	char name[128], view[PATH_MAX], *partial_abs = NULL, *names[1];
	struct output_guard guard = { .n = 0 };
	int r, ret;

	prog = "fleece backup";
	memset(&res, 0, sizeof(res));
	memset(&smp, 0, sizeof(smp));
	start_opts_init(&a.so);
	r = parse_opts(argc, argv, SHORTOPTS_START SHORTOPTS_READER SHORTOPTS_COMMON, opts,
		       backup_help, backup_opt, &a);
	output = ro->output;
	if (r >= 0) {
		start_opts_free(so);
		return r;
	}
	ret = EX_FLEECE_USAGE;
	if (optind >= argc) {
		usage_error("no device given");
		goto out_opts;
	}
	if (optind + 1 < argc) {
		usage_error("one device at a time: '%s' is one too many (use 'fleece start' for a consistent point of several)",
			    argv[optind + 1]);
		goto out_opts;
	}
	if (!output) {
		usage_error("no output given: -o FILE, or -o - for standard output");
		goto out_opts;
	}
	if (so->nr_fleece_devs > 1) {
		usage_error("one device, one --fleece-dev");
		goto out_opts;
	}
	if (!so->nr_fleece_devs && !so->fleece_dir) {
		usage_error("give the fleece space: --fleece-dev DEV or --fleece-dir DIR");
		goto out_opts;
	}
	ret = output_check(output);
	if (ret)
		goto out_opts;
	r = resolve_dm_name(argv[optind], name, sizeof(name));
	ret = exit_code(r);
	if (r)
		goto out_opts;
	ret = EX_FLEECE_REFUSED;
	if (fleece_names(name, &fn))
		goto out_opts;
	/*
	 * The lock and the state first, the output after: a second backup of
	 * NAME (a timer firing twice) must not touch the first one's output.
	 */
	r = fleece_lock(name);
	if (r) {
		ret = r == -EBUSY ? EX_FLEECE_REFUSED : exit_code(r);
		goto out_opts;
	}
	ret = backup_guard(name, so, &guard);
	if (ret)
		goto out_opts;

	/* "fleece stop" removes FILE.partial after a SIGKILL: record it. */
	if (strcmp(output, "-")) {
		char *d = xstrdup(output), *b = xstrdup(output), *real;

		real = realpath(dirname(d), NULL);
		if (real)
			partial_abs = xasprintf("%s/%s.partial", strcmp(real, "/") ? real : "",
						basename(b));
		free(real);
		free(d);
		free(b);
	}
	signals_install();
	ret = output_open(output, &guard, &out);
	if (ret)
		goto out_opts;
	so->partial = out.partial ? partial_abs : NULL;
	names[0] = name;
	ret = fleece_start(so, names, 1);
	if (ret) {
		output_finish(&out, ret);
		goto out_opts;
	}
	if (dmw_info_uuid(fn.view_uuid, &vi) || !vi.exists ||
	    devno_path(makedev(vi.major, vi.minor), view, sizeof(view))) {
		msg_error("%s: the view vanished", name);
		ret = EX_FLEECE_FAIL;
		goto stop;
	}

	smp.name = name;
	ro->view = view;
	ro->label = name;
	ro->tick = sample;
	ro->tick_arg = &smp;
	if (fleece_signal)
		ret = EX_FLEECE_SIGNAL + fleece_signal;
	else
		ret = reader_run(ro, out.fd, out.is_file, &res);
	sample(&smp);

stop:
	if (res.interrupted || (ret >= EX_FLEECE_SIGNAL && fleece_signal))
		msg_error("%s: interrupted by signal %d: stopping", name, (int)fleece_signal);
	ret = output_finish(&out, ret);
	r = exit_code(fleece_stop(name, !ret));
	if (r && !ret)
		ret = r;
	if (!ret) {
		char a[32], b[32], c2[32], d[32], e[32];
		const uint64_t *f = smp.last.st.f;

		if (ro->sha256)
			output_print_sha256(&out, res.sha256);
		msg_info("%s: backup complete: %s in %s (%s/s), %s of zero chunks%s; %llu chunks copied before they were read, fleece peak %s%s",
			 name, fmt_size(res.size, a, sizeof(a)),
			 fmt_duration(res.seconds, b, sizeof(b)),
			 fmt_size(res.seconds > 0 ? (uint64_t)(res.size / res.seconds) : res.size,
				  c2, sizeof(c2)),
			 fmt_size(res.zero_bytes, d, sizeof(d)),
			 out.is_file ? " left as holes" : "",
			 smp.have_last ? (unsigned long long)f[FLEECE_ST_CBW_COUNT] : 0ULL,
			 smp.exact ? "" : "about ",
			 fmt_size(smp.peak_used, e, sizeof(e)));
	}
out_opts:
	free(partial_abs);
	start_opts_free(so);
	return ret;
}
