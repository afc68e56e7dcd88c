// SPDX-License-Identifier: GPL-2.0
/*
 * fleece stop: put every device back as it was before "fleece start".
 *
 * It works from what it finds, so it also finishes a start or a stop that
 * was interrupted (a killed process, a crash) and does nothing when there is
 * nothing left:
 *   1. remove the view NAME-fleece-view;
 *   2. if NAME runs the fleece table "start" loaded: load NAME's original
 *      table (the hidden origin's, or the linear one the state file keeps)
 *      into NAME, suspend, resume; if NAME only has such a fleece table
 *      loaded (inactive), clear it, and resume NAME if a start left it
 *      suspended;
 *   3. remove NAME-fleece-origin;
 *   4. detach the loop device and remove the fleece file, the state file,
 *      and an unfinished backup's output.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleece.h"
#include "loop.h"
#include "opts.h"
#include "util.h"

/*
 * NAME's original table: the hidden origin's, or the linear one over
 * @sectors that the state file keeps.
 */
static int original_table(const char *name, const struct dmw_info *oi,
			  const struct fleece_state *st, uint64_t sectors,
			  struct dmw_table *ot)
{
	char params[64];

	memset(ot, 0, sizeof(*ot));
	if (!oi->exists) {
		snprintf(params, sizeof(params), "%u:%u %llu", major(st->linear_dev),
			 minor(st->linear_dev), (unsigned long long)st->linear_offset);
		dmw_table_add(ot, 0, sectors, "linear", params);
		return 0;
	}
	if (dmw_get_table(oi->name, false, ot) || !ot->n) {
		msg_error("%s: cannot read the original table from %s", name, oi->name);
		dmw_table_free(ot);
		return EX_FLEECE_FAIL;
	}
	return 0;
}

static int restore_table(const char *name, const struct dmw_info *oi,
			 const struct fleece_state *st, uint64_t sectors)
{
	struct dmw_table ot;
	sigset_t oldmask;
	int r;

	r = original_table(name, oi, st, sectors, &ot);
	if (r)
		return r;
	r = dmw_load(name, &ot);
	dmw_table_free(&ot);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot load its original table", name);
		return EX_FLEECE_FAIL;
	}
	signals_block(&oldmask);
	dmw_quiet(1);
	r = dmw_suspend(name, true);
	dmw_quiet(-1);
	if (r == -EBUSY)	/* its file system is frozen already */
		r = dmw_suspend(name, false);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot suspend", name);
		dmw_clear(name);
		signals_restore(&oldmask);
		return EX_FLEECE_FAIL;
	}
	r = dmw_resume(name, 0);
	signals_restore(&oldmask);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot resume with its original table", name);
		return EX_FLEECE_FAIL;
	}
	return 0;
}

int fleece_stop(const char *name, bool keep_partial)
{
	struct fleece_names fn;
	struct fleece_state st;
	struct dmw_info vi, oi, ni;
	struct fleece_params fp;
	struct dmw_table t;
	dev_t origin_dev = 0;
	bool did = false;
	int r;

	if (fleece_names(name, &fn))
		return EX_FLEECE_USAGE;
	if (fleece_lock(name))
		return EX_FLEECE_REFUSED;
	if (state_read(name, &st) < 0)
		msg_warn("%s: cannot read its state file in %s", name, state_dir());
	if (st.present)
		did = true;

	/* 1. The view. */
	if (!dmw_info_uuid(fn.view_uuid, &vi) && vi.exists) {
		r = dmw_remove(vi.name, true);
		if (r) {
			errno = -r;
			if (r == -EBUSY)
				msg_error("%s: cannot remove the view %s: it is in use (a reader still has it open)",
					  name, vi.name);
			else
				msg_errno("%s: cannot remove the view %s", name, vi.name);
			return EX_FLEECE_FAIL;
		}
		msg_debug("%s: removed %s", name, vi.name);
		did = true;
	}

	/* 2. NAME itself. */
	if (dmw_info_uuid(fn.origin_uuid, &oi) || !oi.exists) {
		oi.exists = false;
	} else {
		origin_dev = makedev(oi.major, oi.minor);
		did = true;
	}
	if (!dmw_info(name, &ni) && ni.exists) {
		memset(&t, 0, sizeof(t));
		if (ni.live_table && !dmw_get_table(name, false, &t) && table_is_fleece(&t, &fp)) {
			uint64_t sectors = dmw_table_len(&t);

			dmw_table_free(&t);
			if (!fleece_table_ours(&fp, origin_dev, &st)) {
				msg_error("%s: runs a fleece table on %u:%u that fleece(8) did not make: leaving it alone",
					  name, major(fp.origin), minor(fp.origin));
				return EX_FLEECE_REFUSED;
			}
			r = restore_table(name, &oi, &st, sectors);
			if (r)
				return r;
			msg_debug("%s: original table back", name);
		} else {
			dmw_table_free(&t);
			if (ni.inactive_table && !dmw_get_table(name, true, &t) &&
			    table_is_fleece(&t, &fp) && fleece_table_ours(&fp, origin_dev, &st)) {
				r = dmw_clear(name);
				if (r) {
					errno = -r;
					msg_errno("%s: cannot clear its inactive fleece table", name);
					dmw_table_free(&t);
					return EX_FLEECE_FAIL;
				}
				did = true;
			}
			dmw_table_free(&t);
			if (ni.suspended && (origin_dev || st.present)) {
				/* A start was interrupted while NAME was suspended. */
				r = dmw_resume(name, 0);
				if (r) {
					errno = -r;
					msg_errno("%s: cannot resume", name);
					return EX_FLEECE_FAIL;
				}
				msg_info("%s: resumed (it was left suspended)", name);
			}
		}
	}

	/* 3. The hidden origin. */
	if (origin_dev) {
		r = dmw_remove(oi.name, true);
		if (r) {
			errno = -r;
			msg_errno("%s: cannot remove %s", name, oi.name);
			return EX_FLEECE_FAIL;
		}
		msg_debug("%s: removed %s", name, oi.name);
	}

	/* 4. Files. */
	if (st.fleece_file[0]) {
		dev_t loop = st.loop_dev;

		if (!loop)
			loop_find_file(st.fleece_file, &loop);
		if (loop) {
			r = loop_detach_file(loop, st.fleece_file);
			if (r) {
				errno = -r;
				msg_errno("%s: cannot detach the loop device %u:%u of %s",
					  name, major(loop), minor(loop), st.fleece_file);
				return EX_FLEECE_FAIL;
			}
		}
		if (unlink(st.fleece_file) && errno != ENOENT) {
			msg_errno("%s: cannot remove the fleece file %s", name, st.fleece_file);
			return EX_FLEECE_FAIL;
		}
	}
	if (st.partial[0] && !keep_partial) {
		if (unlink(st.partial) && errno != ENOENT)
			msg_errno("%s: cannot remove the unfinished backup %s", name, st.partial);
		else
			msg_debug("%s: removed the unfinished backup %s", name, st.partial);
	}
	if (st.present && state_remove(name))
		return EX_FLEECE_FAIL;
	if (did)
		msg_info("%s: stopped", name);
	else
		msg_info("%s: not fleeced, nothing to do", name);
	return EX_FLEECE_OK;
}

static void stop_help(void)
{
	printf("Usage: fleece stop [OPTIONS] NAME...\n"
	       "       fleece stop --all\n"
	       "\n"
	       "Remove the view of each NAME, put NAME's original table back, remove the\n"
	       "hidden origin (if start made one) and the fleece file 'fleece start'\n"
	       "created.  Safe to repeat;\n"
	       "finishes a start or stop that was interrupted.\n"
	       "\n"
	       "Options:\n"
	       "  -a, --all                 stop every fleece found (devices and state files)\n"
	       HELP_COMMON);
}

static int stop_opt(int c, const char *arg, void *ctx)
{
	(void)arg;
	if (c == 'a')
		*(bool *)ctx = true;
	return c == 'a' || c == 'q' ? 0 : 1;
}

int cmd_stop(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "all", no_argument, NULL, 'a' },
		LONGOPTS_COMMON
	};
	char **names = NULL, name[128];
	unsigned int n = 0, i;
	bool all = false;
	int r, ret = EX_FLEECE_OK;

	prog = "fleece stop";
	r = parse_opts(argc, argv, "a" SHORTOPTS_COMMON, opts, stop_help, stop_opt, &all);
	if (r >= 0)
		return r;
	if (all && optind < argc)
		return usage_error("--all and device names cannot be used together");
	if (!all && optind >= argc)
		return usage_error("no device given (or --all)");
	for (i = optind; (int)i < argc; i++) {
		struct fleece_names fn;

		arg_dm_name(argv[i], name, sizeof(name));
		if (fleece_names(name, &fn))
			return usage_error("%s: not a device name", argv[i]);
	}
	signals_install();
	if (all) {
		fleece_find_all(&names, &n);
		if (!n)
			msg_info("no fleece found");
		for (i = 0; i < n; i++) {
			r = fleece_stop(names[i], false);
			if (r > ret)
				ret = r;
			free(names[i]);
		}
		free(names);
		return ret;
	}
	for (i = optind; (int)i < argc; i++) {
		arg_dm_name(argv[i], name, sizeof(name));
		r = fleece_stop(name, false);
		if (r > ret)
			ret = r;
	}
	return ret;
}
