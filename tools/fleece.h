/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): the pieces of a fleece session shared by the subcommands.
 *
 * For a device-mapper device NAME, "fleece start" creates:
 *
 *   NAME-fleece-origin   DM UUID FLEECE-ORIGIN-<NAME>   NAME's original table
 *   NAME-fleece-view     DM UUID FLEECE-VIEW-<NAME>     the frozen image
 *
 * and loads NAME itself with "fleece NAME-fleece-origin <fleece dev>".
 * When NAME's table is one linear target over all of it, there is no
 * NAME-fleece-origin: NAME is loaded with "fleece <that device> <fleece dev>
 * ... origin_offset <its offset>", which costs its writers no extra layer,
 * and the state file keeps the linear table for "stop".  With --fleece-dir, the fleece device is a loop device over the sparse
 * file DIR/NAME.fleece.  What "stop" must undo that the devices cannot
 * tell (the fleece file, an unfinished backup's output) is kept in the
 * state file $FLEECE_STATE_DIR/NAME (default /var/lib/fleece/NAME).
 */
#ifndef FLEECE_H
#define FLEECE_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "dm-fleece-interface.h"
#include "dm.h"

#define FLEECE_VERSION		"1.0"

#define FLEECE_UUID_PREFIX	"FLEECE-"
#define FLEECE_UUID_ORIGIN	"FLEECE-ORIGIN-"
#define FLEECE_UUID_VIEW	"FLEECE-VIEW-"
#define FLEECE_ORIGIN_SUFFIX	"-fleece-origin"
#define FLEECE_VIEW_SUFFIX	"-fleece-view"
#define FLEECE_FILE_SUFFIX	".fleece"
#define FLEECE_STATE_DIR	"/var/lib/fleece"
#define FLEECE_MODULE		"dm-fleece"

#define FLEECE_DEFAULT_CHUNK	(64 * 1024)
#define FLEECE_DEFAULT_TIMEOUT_MS 45000

/* udev flags of the devices fleece creates: /dev/mapper only. */
#define FLEECE_UDEV_FLAGS (DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG |	\
			   DM_UDEV_DISABLE_DISK_RULES_FLAG |		\
			   DM_UDEV_DISABLE_OTHER_RULES_FLAG |		\
			   DM_UDEV_LOW_PRIORITY_FLAG)

struct fleece_names {
	char name[128];
	char origin[128];
	char view[128];
	char origin_uuid[130];
	char view_uuid[130];
};

/* Check that NAME can carry the derived names; fill them in. */
int fleece_names(const char *name, struct fleece_names *fn);

/*
 * Resolve NAME, /dev/mapper/NAME, /dev/VG/LV or /dev/dm-N to a dm name:
 * 0, -EFLEECE_REFUSED (no such dm device, with a message) or the -errno of
 * a failed query (with a message).
 */
int resolve_dm_name(const char *arg, char *name, size_t len);

/*
 * The same, silently, for a device that may be gone: else its dm name as
 * far as the argument tells.  -errno (with a message) when device-mapper
 * cannot be queried.
 */
int arg_dm_name(const char *arg, char *name, size_t len);

/* /dev/mapper/NAME for a dm device, /dev/<kernel name> otherwise. */
int devno_display(dev_t dev, char *buf, size_t len);

struct fleece_state {
	bool present;
	char phase[16];			/* starting, running, stopping */
	char fleece_file[PATH_MAX];	/* created by --fleece-dir */
	char partial[PATH_MAX];		/* output of a running backup */
	dev_t loop_dev;			/* 0: none */
	dev_t fleece_dev;
	/* NAME's linear table, when the fleece table takes its place: */
	dev_t linear_dev;		/* 0: NAME-fleece-origin keeps it */
	uint64_t linear_offset;
	dev_t track_store;		/* NAME is tracked: its store (0: not) */
	long pid;
};

const char *state_dir(void);
int state_read(const char *name, struct fleece_state *st);
int state_write(const char *name, const struct fleece_state *st);
int state_remove(const char *name);
/*
 * No state file of NAME (no fleece, nor leftovers of one): 0, else
 * -EFLEECE_REFUSED or the -errno of a failed read, with a message.
 */
int state_absent(const char *name);
/* Whether NAME has a state file, in *@present: 0, or a failed read's -errno with a message. */
int state_present(const char *name, bool *present);
int state_list(char ***names, unsigned int *n);

/* "<origin> <fleece> <chunk_sectors> [<#features> <features>...]" */
struct fleece_params {
	dev_t origin, fleece;
	unsigned int chunk_sectors;
	bool fail_origin_writes;
	unsigned int cbw_timeout_ms;
	uint64_t origin_offset;
};
int parse_fleece_params(const char *params, struct fleece_params *p);
int parse_devno(const char *s, dev_t *dev);
/* A linear target's parameters, "<major:minor> <offset>". */
int parse_linear_params(const char *s, dev_t *dev, uint64_t *offset);
/* A whole-device table of one fleece target on our origin? */
bool table_is_fleece(const struct dmw_table *t, struct fleece_params *p);
/*
 * Did "fleece start" load this fleece table?  Its origin is NAME's hidden
 * origin @hidden (0: none), or the device and offset of the linear table
 * the state file @st records.
 */
bool fleece_table_ours(const struct fleece_params *p, dev_t hidden,
		       const struct fleece_state *st);

struct fleece_status {
	uint64_t f[FLEECE_ST_NR_FIELDS];
	bool invalid;
};
int parse_fleece_status(const char *params, struct fleece_status *s);

/*
 * FLEECE_STATE_DIR and FLEECE_LOCK_DIR must be root's alone (no symbolic
 * link, not writable by others, nor anything above them): 0, or
 * -EFLEECE_REFUSED with a message.  fleece_lock() checks it first.
 */
int fleece_dirs_check(void);
/* The same check of another directory (@what names it in messages). */
int private_dir_check(const char *dir, const char *what);

/* Lock NAME against other fleece commands, until the process ends. */
int fleece_lock(const char *name);

/*
 * The VG of NAME when NAME is an LV (DM UUID "LVM-"), "" otherwise: 0, or
 * -EFLEECE_REFUSED (with a message) when its dm name does not tell.
 */
int lvm_lv_vg(const char *name, const char *uuid, char *vg, size_t len);
/*
 * lvm2's write lock of volume group @vg (for NAME, in messages), taken as
 * lvm2 takes it (lvmlock.c), in lvm.conf's global/locking_dir, waiting for
 * an lvm2 command that holds it: 0, or -errno with a message.  Under
 * lvmlockd, -EFLEECE_REFUSED; with @force, 0 and a warning instead, no
 * lock held.  Counted: each lock is dropped by one unlock.  Several VGs
 * are to be locked in the order of their names.
 */
int lvm_vg_lock(const char *name, const char *vg, bool force);
void lvm_vg_unlock(const char *vg);

/* Every NAME with something of a fleece: its devices or a state file. */
int fleece_find_all(char ***names, unsigned int *n);

/* Make sure the fleece targets are there, loading dm-fleece if needed. */
int fleece_need_module(void);

/* Signals: SIGINT, SIGTERM, SIGHUP set fleece_signal; SIGPIPE is ignored. */
extern volatile sig_atomic_t fleece_signal;
void signals_install(void);
void signals_block(sigset_t *old);
void signals_restore(const sigset_t *old);

/* --- start ---------------------------------------------------------- */
struct start_opts {
	uint64_t chunk_bytes;
	bool fail_origin_writes;
	unsigned int cbw_timeout_ms;
	char **fleece_devs;		/* one per NAME, or NULL */
	unsigned int nr_fleece_devs;
	const char *fleece_dir;
	bool force;			/* a --fleece-dev with a signature */
	char **partials;		/* per NAME, recorded in the state (backup), or NULL */
	/*
	 * A tracked NAME (fleece-track table): ask the fleece target to
	 * release every chunk the tracker saw no change in (track_store).
	 */
	bool incremental;
};
/* Parse one start option (long option index / value); see start.c. */
int start_opts_init(struct start_opts *o);
int start_parse_opt(struct start_opts *o, int opt, const char *arg);
/* The option callback of start and run: start_parse_opt() on @ctx (struct start_opts), -q as is. */
int start_cmd_opt(int c, const char *arg, void *ctx);
void start_opts_free(struct start_opts *o);
int fleece_start(struct start_opts *o, char **names, unsigned int n);
/*
 * Suspend NAME, flushing and freezing its file system (without freezing
 * one that fsfreeze froze already): 0, or -errno with a message.  For the
 * suspend window: the caller holds messages and has locked its memory.
 */
int tables_unchanged(const char *name, const struct dmw_table *live,
		     const struct dmw_table *loaded, const char *refusal);
int fleece_suspend(const char *name);
/*
 * The first signature libblkid finds on @path (a file system, raid, PV,
 * partition table): 1 with "TYPE" and its UUID filled in, 0 when there is
 * none, -errno when the device cannot be probed.
 */
int probe_signature(const char *path, char *type, size_t tlen, char *uuid,
		    size_t ulen);

/* --- stop ----------------------------------------------------------- */
/*
 * Undo whatever is there of a fleece of NAME: 0 when nothing is left, else
 * -errno (-EFLEECE_REFUSED: nothing was changed).  A failed query changes
 * nothing.  @flags: STOP_KEEP_PARTIAL leaves the backup's FILE.partial
 * alone; STOP_FORCE, with NAME's state file lost or unreadable, rebuilds
 * NAME's linear table from its live fleece table when that is unambiguous
 * (and goes on without lvm2's VG lock under lvmlockd).
 */
enum { STOP_KEEP_PARTIAL = 1, STOP_FORCE = 2 };
int fleece_stop(const char *name, unsigned int flags);

/* --- status --------------------------------------------------------- */
struct fleece_report {
	struct fleece_names fn;
	const char *state;		/* active, invalid, incomplete, none */
	bool have_status;
	struct fleece_status st;
	struct fleece_params params;
	char view_path[PATH_MAX];
	char origin_path[PATH_MAX];	/* hidden origin, or the linear's device */
	char fleece_path[PATH_MAX];
	char fleece_file[PATH_MAX];
	char track_store[PATH_MAX];	/* a tracked NAME's store (state file), or "" */
	uint64_t size_bytes;
	uint64_t fleece_used;		/* bytes held by the fleece device */
	bool fleece_used_exact;		/* from the file's allocation */
	uint64_t view_reads_origin, view_reads_fleece, view_reads_refused;
	bool loop_dio;
};
int fleece_report(const char *name, struct fleece_report *r);

/* --- the reader (read.c) ------------------------------------------- */
enum progress_mode { PROGRESS_AUTO, PROGRESS_BAR, PROGRESS_LINES, PROGRESS_NONE };

struct reader_opts {
	const char *view;		/* path of the fleece-view device */
	const char *label;		/* for messages */
	const char *output;		/* "-" or a file name (written as is) */
	uint64_t block_bytes;
	uint64_t rate;			/* bytes/s, 0: unlimited */
	bool discard;
	bool sha256;
	bool json;			/* --json: the result on stdout */
	enum progress_mode progress;
	double interval;		/* seconds between progress lines */
	/* Called at each progress tick, e.g. to sample the fleece space. */
	void (*tick)(void *arg);
	void *tick_arg;
};

struct reader_result {
	uint64_t size, bytes_read, bytes_written, zero_bytes;
	uint64_t released_bytes;	/* discarded on the view: released */
	unsigned int syncs;		/* of the output: per batch, and the last */
	uint64_t cloned_bytes;		/* an incremental's: cloned in from its scratch */
	uint64_t clone_refused_bytes;	/* copied in: the file system refused the clone */
	double seconds;
	char sha256[65];
	bool view_invalid;
	bool interrupted;
};

/*
 * Read the whole view to the output: 0, or -errno with a message
 * (-EFLEECE_INVALID: the view became invalid; -EINTR: a signal stopped it).
 */
int reader_run(const struct reader_opts *o, int out_fd, bool out_is_file,
	       struct reader_result *res);
/* Chunk size of a view, from its discard granularity. */
int view_chunk_bytes(dev_t view, uint64_t *bytes);
int reader_parse_opt(struct reader_opts *o, int opt, const char *arg);

/* Subcommands. */
int cmd_start(int argc, char **argv);
int cmd_stop(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_backup(int argc, char **argv);
int cmd_read(int argc, char **argv);

#endif
