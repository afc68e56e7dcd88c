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
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleece.h"
#include "loop.h"
#include "opts.h"
#include "util.h"

/* What stop finds of a fleece of NAME, all of it read before anything is changed. */
struct stop_ctx {
	struct fleece_names fn;
	struct fleece_state st;
	struct dmw_info vi, oi, ni;	/* view, hidden origin, NAME */
	dev_t origin_dev;		/* the hidden origin, 0: none */
	bool live_ours;			/* NAME runs the fleece table start loaded */
	bool inactive_ours;		/* ... or has it loaded, inactive */
	struct dmw_table orig;		/* NAME's original table, when live_ours */
	bool did;
	char vg[128];			/* an LV's VG, its lvm2 lock held */
};

static int query_failed(const char *name, const char *what, int r)
{
	msg_error("%s: cannot query %s: %s: nothing was changed", name, what, dmw_strerror(r));
	return r;
}

/*
 * NAME's original table: the hidden origin's, or the linear one over
 * @sectors that the state file keeps.
 */
static int original_table(struct stop_ctx *c, uint64_t sectors)
{
	char params[64];
	int r;

	memset(&c->orig, 0, sizeof(c->orig));
	if (!c->oi.exists) {
		snprintf(params, sizeof(params), "%u:%u %llu", major(c->st.linear_dev),
			 minor(c->st.linear_dev), (unsigned long long)c->st.linear_offset);
		dmw_table_add(&c->orig, 0, sectors, "linear", params);
		return 0;
	}
	r = dmw_get_table(c->oi.name, false, &c->orig);
	if (!r && !c->orig.n)
		r = -ENODATA;
	if (r) {
		dmw_table_free(&c->orig);
		msg_error("%s: cannot read the original table from %s: %s: nothing was changed",
			  c->fn.name, c->oi.name, r == -ENODATA ? "it has none" : dmw_strerror(r));
	}
	return r;
}

/* 1. Read everything; refuse a fleece table fleece(8) did not make. */
static int stop_survey(struct stop_ctx *c)
{
	const char *name = c->fn.name;
	struct fleece_params fp;
	struct dmw_table t;
	int r;

	r = state_read(name, &c->st);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot read its state file in %s: nothing was changed", name,
			  state_dir());
		return r;
	}
	c->did = c->st.present;
	r = dmw_info_uuid(c->fn.view_uuid, &c->vi);
	if (r)
		return query_failed(name, "its view", r);
	r = dmw_info_uuid(c->fn.origin_uuid, &c->oi);
	if (r)
		return query_failed(name, "its hidden origin", r);
	if (c->oi.exists) {
		c->origin_dev = makedev(c->oi.major, c->oi.minor);
		c->did = true;
	}
	r = dmw_info(name, &c->ni);
	if (r)
		return query_failed(name, "the device", r);
	if (!c->ni.exists)
		return 0;
	/* An LV: no lvm2 command reloads it until its table is back; then look again. */
	r = lvm_lv_vg(name, c->ni.uuid, c->vg, sizeof(c->vg));
	if (!r && c->vg[0])
		r = lvm_vg_lock(name, c->vg);
	if (r) {
		c->vg[0] = '\0';
		return r;
	}
	if (c->vg[0]) {
		r = dmw_info(name, &c->ni);
		if (r)
			return query_failed(name, "the device", r);
		if (!c->ni.exists)
			return 0;
	}
	if (c->ni.live_table) {
		r = dmw_get_table(name, false, &t);
		if (r)
			return query_failed(name, "its table", r);
		if (table_is_fleece(&t, &fp)) {
			uint64_t sectors = dmw_table_len(&t);

			dmw_table_free(&t);
			if (!fleece_table_ours(&fp, c->origin_dev, &c->st)) {
				msg_error("%s: runs a fleece table on %u:%u that fleece(8) did not make: leaving it alone",
					  name, major(fp.origin), minor(fp.origin));
				return -EFLEECE_REFUSED;
			}
			c->live_ours = true;
			return original_table(c, sectors);
		}
		dmw_table_free(&t);
	}
	if (c->ni.inactive_table) {
		r = dmw_get_table(name, true, &t);
		if (r)
			return query_failed(name, "its inactive table", r);
		c->inactive_ours = table_is_fleece(&t, &fp) &&
				   fleece_table_ours(&fp, c->origin_dev, &c->st);
		dmw_table_free(&t);
	}
	return 0;
}

/* 2. The view. */
static int stop_view(struct stop_ctx *c)
{
	int r;

	if (!c->vi.exists)
		return 0;
	r = dmw_remove(c->vi.name, true);
	if (r) {
		if (r == -EBUSY)
			msg_error("%s: cannot remove the view %s: it is in use (a reader still has it open)",
				  c->fn.name, c->vi.name);
		else
			msg_error("%s: cannot remove the view %s: %s", c->fn.name, c->vi.name,
				  dmw_strerror(r));
		return r;
	}
	msg_debug("%s: removed %s", c->fn.name, c->vi.name);
	c->did = true;
	return 0;
}

/* 3a. Load NAME's original table in place of the fleece table. */
static int restore_table(struct stop_ctx *c)
{
	const char *name = c->fn.name;
	sigset_t oldmask;
	bool locked;
	int r;

	r = dmw_load(name, &c->orig, c->ni.read_only);
	if (r) {
		msg_error("%s: cannot load its original table: %s", name, dmw_strerror(r));
		return r;
	}
	/* Memory locked, messages held while NAME is suspended: see start.c. */
	locked = !mlockall(MCL_CURRENT | MCL_FUTURE);
	signals_block(&oldmask);
	msg_hold(true);
	dmw_quiet(1);
	r = dmw_suspend(name, true);
	dmw_quiet(-1);
	if (r == -EBUSY)	/* its file system is frozen already */
		r = dmw_suspend(name, false);
	if (r) {
		msg_error("%s: cannot suspend: %s", name, dmw_strerror(r));
		dmw_clear(name);
	} else {
		r = dmw_resume(name, 0);
		if (r)
			msg_error("%s: cannot resume with its original table: %s", name,
				  dmw_strerror(r));
	}
	msg_hold(false);
	signals_restore(&oldmask);
	if (locked)
		munlockall();
	if (r)
		return r;
	msg_debug("%s: original table back", name);
	return 0;
}

/* 3. NAME itself. */
static int stop_name(struct stop_ctx *c)
{
	const char *name = c->fn.name;
	int r;

	if (!c->ni.exists)
		return 0;
	if (c->live_ours)
		return restore_table(c);
	if (c->inactive_ours) {
		r = dmw_clear(name);
		if (r) {
			msg_error("%s: cannot clear its inactive fleece table: %s", name,
				  dmw_strerror(r));
			return r;
		}
		c->did = true;
	}
	if (c->ni.suspended && (c->origin_dev || c->st.present)) {
		/* A start was interrupted while NAME was suspended. */
		r = dmw_resume(name, 0);
		if (r) {
			msg_error("%s: cannot resume: %s", name, dmw_strerror(r));
			return r;
		}
		msg_info("%s: resumed (it was left suspended)", name);
	}
	return 0;
}

/* 4. The hidden origin. */
static int stop_origin(struct stop_ctx *c)
{
	int r;

	if (!c->origin_dev)
		return 0;
	r = dmw_remove(c->oi.name, true);
	if (r) {
		msg_error("%s: cannot remove %s: %s", c->fn.name, c->oi.name, dmw_strerror(r));
		return r;
	}
	msg_debug("%s: removed %s", c->fn.name, c->oi.name);
	return 0;
}

/* 5. The loop device, the fleece file, an unfinished backup, the state. */
static int stop_files(struct stop_ctx *c, bool keep_partial)
{
	const char *name = c->fn.name;
	struct fleece_state *st = &c->st;
	int r;

	if (st->fleece_file[0]) {
		dev_t loop = st->loop_dev;

		if (!loop)
			loop_find_file(st->fleece_file, &loop);
		if (loop) {
			r = loop_detach_file(loop, st->fleece_file);
			if (r) {
				errno = -r;
				msg_errno("%s: cannot detach the loop device %u:%u of %s",
					  name, major(loop), minor(loop), st->fleece_file);
				return r;
			}
		}
		if (unlink(st->fleece_file) && errno != ENOENT) {
			r = -errno;
			msg_errno("%s: cannot remove the fleece file %s", name, st->fleece_file);
			return r;
		}
	}
	if (st->partial[0] && !keep_partial) {
		if (unlink(st->partial) && errno != ENOENT)
			msg_errno("%s: cannot remove the unfinished backup %s", name, st->partial);
		else
			msg_debug("%s: removed the unfinished backup %s", name, st->partial);
	}
	if (st->present)
		return state_remove(name);
	return 0;
}

int fleece_stop(const char *name, bool keep_partial)
{
	struct stop_ctx c;
	int r;

	memset(&c, 0, sizeof(c));
	r = fleece_names(name, &c.fn);
	if (r)
		return r;
	r = fleece_lock(name);
	if (r)
		return r == -EBUSY ? -EFLEECE_REFUSED : r;
	r = stop_survey(&c);
	if (!r)
		r = stop_view(&c);
	if (!r)
		r = stop_name(&c);
	if (!r)
		r = stop_origin(&c);
	if (!r)
		r = stop_files(&c, keep_partial);
	dmw_table_free(&c.orig);
	lvm_vg_unlock(c.vg);
	if (r)
		return r;
	if (c.did)
		msg_info("%s: stopped", name);
	else
		msg_info("%s: not fleeced, nothing to do", name);
	return 0;
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
	int r, err, ret = EX_FLEECE_OK;

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

		if (arg_dm_name(argv[i], name, sizeof(name)))
			return exit_code(-EIO);
		if (fleece_names(name, &fn))
			return usage_error("%s: not a device name", argv[i]);
	}
	signals_install();
	if (all) {
		err = fleece_find_all(&names, &n);
		if (err)
			return exit_code(err);
		if (!n)
			msg_info("no fleece found");
		for (i = 0; i < n; i++) {
			r = exit_code(fleece_stop(names[i], false));
			if (r > ret)
				ret = r;
			free(names[i]);
		}
		free(names);
		return ret;
	}
	for (i = optind; (int)i < argc; i++) {
		if (arg_dm_name(argv[i], name, sizeof(name)))
			r = EX_FLEECE_FAIL;
		else
			r = exit_code(fleece_stop(name, false));
		if (r > ret)
			ret = r;
	}
	return ret;
}
