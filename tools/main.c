// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): back up live device-mapper devices through dm-fleece.
 *
 *   fleece start   take a consistent point in time, expose a frozen view
 *   fleece stop    undo it (idempotent; finishes interrupted runs)
 *   fleece status  what is fleeced, how far the backup is
 *   fleece backup  start, read the view to a file or stdout, stop
 *   fleece read    the reader alone, on any fleece view
 *   fleece track   change tracking (start, stop, status, attach)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleece.h"
#include "run.h"
#include "serve.h"
#include "track.h"
#include "util.h"

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *what;
} cmds[] = {
	{ "start", cmd_start, "take a consistent point in time of devices, create their views" },
	{ "stop", cmd_stop, "remove views, put the original tables back, clean up" },
	{ "status", cmd_status, "show fleeced devices, chunk counts and progress" },
	{ "backup", cmd_backup, "start, read the view to a file or stdout, stop" },
	{ "read", cmd_read, "read a fleece view to a file or stdout, releasing chunks" },
	{ "run", cmd_run, "start, run a command on the views (a backup client), stop" },
	{ "serve", cmd_serve, "export a frozen view over NBD (qemu-nbd), releasing chunks as the client trims" },
	{ "track", cmd_track, "change tracking for incremental backups (start, stop, status, attach)" },
};

static void help(FILE *f)
{
	unsigned int i;

	fprintf(f, "Usage: fleece COMMAND [OPTIONS] [ARGS]\n"
		"\n"
		"Back up live device-mapper devices (LVM logical volumes and others) with\n"
		"dm-fleece: a consistent point in time, a frozen view, copy-before-write of\n"
		"old data to a local fleece device only while the backup needs it.\n"
		"\n"
		"Commands:\n");
	for (i = 0; i < ARRAY_SIZE(cmds); i++)
		fprintf(f, "  %-8s %s\n", cmds[i].name, cmds[i].what);
	fprintf(f, "\n'fleece COMMAND --help' tells more; see also fleece(8).\n");
}

bool stdout_closed;

/*
 * fds 0-2 closed at exec (fleece ... >&-) would be reused by the first
 * files opened, and the image written into a lock file: make them
 * /dev/null, and remember that standard output was closed.
 */
static void sane_std_fds(void)
{
	int fd;

	for (fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		if (fd == 1)
			stdout_closed = true;
		if (open("/dev/null", fd ? O_WRONLY : O_RDONLY) != fd)
			exit(EX_FLEECE_FAIL);
	}
}

int main(int argc, char **argv)
{
	unsigned int i;
	int r;

	sane_std_fds();

	if (argc < 2) {
		help(stderr);
		return EX_FLEECE_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		help(stdout);
		return EX_FLEECE_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		printf("fleece %s\n", FLEECE_VERSION);
		return EX_FLEECE_OK;
	}
	for (i = 0; i < ARRAY_SIZE(cmds); i++) {
		if (strcmp(argv[1], cmds[i].name))
			continue;
		/* getopt_long's own messages then start with "fleece <command>:". */
		argv[1] = xasprintf("fleece %s", cmds[i].name);
		dmw_init();
		r = cmds[i].fn(argc - 1, argv + 1);
		dmw_exit();
		fflush(stdout);
		if (ferror(stdout) && !r) {
			msg_error("cannot write to standard output");
			r = EX_FLEECE_FAIL;
		}
		return r;
	}
	return usage_error("unknown command '%s'", argv[1]);
}
