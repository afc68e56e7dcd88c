/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece run: any reader (a backup client, qemu-img, partclone) under
 * fleece's lifecycle: start, run the command on the views, stop.
 */
#ifndef FLEECE_RUN_H
#define FLEECE_RUN_H

#include "fleece.h"

/*
 * Exit status of "fleece run" when fleece itself failed (bad usage, a
 * start refused or failed, a view invalidated while the command read it,
 * a failed stop): 125, as env(1) and timeout(1) do, so that it is not
 * taken for the command's own status.  126 and 127 are the command's
 * "cannot be run" and "not found"; 128 + N a death by signal N.
 */
#define EX_RUN_FLEECE	125
#define EX_RUN_NOEXEC	126
#define EX_RUN_NOTFOUND	127

/*
 * Start fleecing NAME... (@names, @n of them: dm names or paths, as for
 * "fleece start"), run @argv (NULL-terminated; after {} substitution when
 * n is 1, and with the FLEECE_* environment of run.c), stop when it ends
 * or fleece gets SIGINT, SIGTERM or SIGHUP (passed on to the command, then
 * waited for).  Returns the command's exit status (0..255, 128 + signal
 * when a signal killed it) or, when fleece itself failed, a negative errno
 * (with a message): -EFLEECE_USAGE, -EFLEECE_REFUSED or another from
 * start (the command was not run); -EFLEECE_INVALID when the command
 * exited 0 but a view became invalid while it ran; the -errno of a
 * failed stop after it exited 0; -EINTR when a signal came before the
 * command started, or the command exited 0 after fleece was signalled.
 * Installs fleece's signal handlers (signals_install()).
 */
int run_under_fleece(struct start_opts *so, char **names, unsigned int n, char *const argv[]);

int cmd_run(int argc, char **argv);

#endif
