// SPDX-License-Identifier: GPL-2.0
/*
 * fleece run: start fleecing NAME..., run a command that reads the views,
 * stop when it ends.  Any reader (restic, borg, qemu-img, partclone, dd)
 * gets fleece's lifecycle and its crash safety:
 *
 *   start     as "fleece start" (one point in time for every NAME); when
 *             it fails, the command is not run;
 *   command   run with FLEECE_VIEW (one NAME), FLEECE_VIEW_1..N,
 *             FLEECE_VIEWS, FLEECE_NAME, FLEECE_NAME_1..N, FLEECE_NAMES,
 *             and each "{}" in its arguments replaced by the view (one
 *             NAME); SIGINT, SIGTERM, SIGHUP sent to fleece alone are
 *             passed on to it (a terminal's ^C or hang-up reaches it
 *             directly: it is in fleece's process group); if fleece is
 *             killed, the command gets SIGTERM (PR_SET_PDEATHSIG);
 *   check     a view invalidated while it ran means the command read
 *             errors, not the point in time: reported, and the run fails;
 *   stop      always, with signals held off: a second signal cannot leave
 *             a half-stopped fleece.
 *
 * The exit status is the command's (128 + N when signal N killed it), or
 * EX_RUN_FLEECE when fleece itself failed (run.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fleece.h"
#include "opts.h"
#include "run.h"
#include "util.h"

/* The environment variables run sets; inherited ones are removed first. */
static const char *const env_prefixes[] = { "FLEECE_VIEW", "FLEECE_NAME" };

struct run_view {
	char name[128];		/* dm name */
	char path[PATH_MAX];	/* /dev/mapper/NAME-fleece-view */
};

static bool has_braces(char *const argv[])
{
	unsigned int i;

	for (i = 1; argv[i]; i++)
		if (strstr(argv[i], "{}"))
			return true;
	return false;
}

/* @s with every "{}" replaced by @view (a new string). */
static char *substitute(const char *s, const char *view)
{
	struct sbuf sb = { NULL, 0, 0 };
	const char *p;

	sb_printf(&sb, "%s", "");
	while ((p = strstr(s, "{}"))) {
		sb_printf(&sb, "%.*s%s", (int)(p - s), s, view);
		s = p + 2;
	}
	sb_printf(&sb, "%s", s);
	return sb.s;
}

/* Is @var (a "NAME=value" entry) FLEECE_VIEW, FLEECE_VIEWS, FLEECE_VIEW_<n>, ...? */
static bool is_run_var(const char *var)
{
	unsigned int i;
	size_t len;
	const char *rest;

	for (i = 0; i < ARRAY_SIZE(env_prefixes); i++) {
		len = strlen(env_prefixes[i]);
		if (strncmp(var, env_prefixes[i], len))
			continue;
		rest = var + len;
		if (*rest == '=' || !strncmp(rest, "S=", 2))
			return true;
		if (*rest++ != '_' || !strchr("0123456789", *rest))
			continue;
		while (*rest >= '0' && *rest <= '9')
			rest++;
		if (*rest == '=')
			return true;
	}
	return false;
}

/* In the child: the FLEECE_* variables of the views, and none inherited. */
static void child_env(const struct run_view *v, unsigned int n)
{
	extern char **environ;
	struct sbuf views = { NULL, 0, 0 }, names = { NULL, 0, 0 };
	unsigned int i;
	char key[32], *eq;

	for (i = 0; environ[i];) {
		if (!is_run_var(environ[i])) {
			i++;
			continue;
		}
		eq = xstrdup(environ[i]);
		*strchr(eq, '=') = '\0';
		unsetenv(eq);
		free(eq);
	}
	for (i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "FLEECE_VIEW_%u", i + 1);
		setenv(key, v[i].path, 1);
		snprintf(key, sizeof(key), "FLEECE_NAME_%u", i + 1);
		setenv(key, v[i].name, 1);
		sb_printf(&views, "%s%s", i ? " " : "", v[i].path);
		sb_printf(&names, "%s%s", i ? " " : "", v[i].name);
	}
	setenv("FLEECE_VIEWS", views.s, 1);
	setenv("FLEECE_NAMES", names.s, 1);
	if (n == 1) {
		setenv("FLEECE_VIEW", v[0].path, 1);
		setenv("FLEECE_NAME", v[0].name, 1);
	}
}

/*
 * The command, in the child: never returns.  127 when it is not found,
 * 126 when it cannot be run, as a shell does.
 */
static void child_exec(char *const argv[], const struct run_view *v, unsigned int n,
		       pid_t parent, const sigset_t *mask)
{
	char **args;
	unsigned int i, argc;

	/* fleece killed (SIGKILL): the command must not read on unnoticed. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != parent)
		_exit(EX_RUN_FLEECE);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);	/* fleece ignores it; a pipeline's CMD must not */
	sigprocmask(SIG_SETMASK, mask, NULL);
	child_env(v, n);
	for (argc = 0; argv[argc]; argc++)
		;
	args = xcalloc(argc + 1, sizeof(*args));
	for (i = 0; i < argc; i++)
		args[i] = i && n == 1 ? substitute(argv[i], v[0].path) : argv[i];
	execvp(args[0], args);
	msg_errno("cannot run '%s'", args[0]);
	_exit(errno == ENOENT ? EX_RUN_NOTFOUND : EX_RUN_NOEXEC);
}

/*
 * Wait for the command, passing on the signals fleece gets; @set (the
 * signals and SIGCHLD) is blocked.  Returns its exit status, 128 + N when
 * signal N killed it.
 */
static int wait_command(pid_t pid, const char *cmd, const sigset_t *set)
{
	struct timespec ts = { .tv_sec = 1, .tv_nsec = 0 };
	siginfo_t si;
	int sig, status;
	pid_t w;

	for (;;) {
		w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		if (w < 0 && errno != EINTR) {
			msg_errno("cannot wait for '%s'", cmd);
			return EX_RUN_FLEECE;
		}
		sig = sigtimedwait(set, &si, &ts);
		if (sig <= 0 || sig == SIGCHLD)
			continue;
		if (!fleece_signal)
			fleece_signal = sig;
		/* From the kernel (a terminal): sent to the process group, the command too. */
		if (si.si_code == SI_KERNEL) {
			msg_error("signal %d: waiting for '%s' to end, then stopping", sig, cmd);
			continue;
		}
		msg_error("signal %d: passed on to '%s' (pid %ld), stopping when it ends",
			  sig, cmd, (long)pid);
		kill(pid, sig);
	}
	if (WIFSIGNALED(status)) {
		msg_error("'%s' was killed by signal %d", cmd, WTERMSIG(status));
		return 128 + WTERMSIG(status);
	}
	if (WEXITSTATUS(status))
		msg_info("'%s' exited with status %d", cmd, WEXITSTATUS(status));
	return WEXITSTATUS(status);
}

/*
 * The views, once the command ended: 0 when each is still valid, else
 * -EFLEECE_INVALID (or a query's -errno) with a message.  Tells how much
 * fleece space each held (a command that does not discard lets it grow).
 */
static int check_views(const struct run_view *v, unsigned int n, const char *cmd)
{
	struct fleece_report rep;
	char sz[32];
	unsigned int i;
	int r, ret = 0;

	for (i = 0; i < n; i++) {
		r = fleece_report(v[i].name, &rep);
		if (r) {
			ret = ret ? ret : r;
			continue;
		}
		if (strcmp(rep.state, FLEECE_STATE_ACTIVE)) {
			msg_error("%s: the view became %s while '%s' ran (%llu reads refused): what it read is not the point in time",
				  v[i].name, rep.state, cmd,
				  (unsigned long long)rep.view_reads_refused);
			ret = ret ? ret : -EFLEECE_INVALID;
			continue;
		}
		msg_info("%s: view still valid at the end, fleece held %s%s", v[i].name,
			 rep.fleece_used_exact ? "" : "about ",
			 fmt_size(rep.fleece_used, sz, sizeof(sz)));
	}
	return ret;
}

/* Stop every NAME: 0, or the first -errno (each failure with a message). */
static int stop_all(const struct run_view *v, unsigned int n)
{
	unsigned int i;
	int r, ret = 0;

	for (i = 0; i < n; i++) {
		r = fleece_stop(v[i].name, 0);
		if (r) {
			msg_error("%s: stopping failed: run 'fleece stop %s'", v[i].name, v[i].name);
			ret = ret ? ret : r;
		}
	}
	return ret;
}

/* The views of the NAMEs just started: 0, or -errno with a message. */
static int find_views(struct run_view *v, unsigned int n)
{
	struct fleece_report rep;
	unsigned int i;
	int r;

	for (i = 0; i < n; i++) {
		r = fleece_report(v[i].name, &rep);
		if (r)
			return r;
		if (!rep.view_path[0]) {
			msg_error("%s: the view vanished", v[i].name);
			return -ENXIO;
		}
		snprintf(v[i].path, sizeof(v[i].path), "%s", rep.view_path);
	}
	return 0;
}

/* Combine the command's status @st and fleece's own outcome @r (run.h). */
static int run_result(int st, int r)
{
	if (st)
		return st;	/* non-zero already; fleece's failure was reported */
	if (r)
		return r;
	return fleece_signal ? -EINTR : 0;
}

int run_under_fleece(struct start_opts *so, char **names, unsigned int n, char *const argv[])
{
	struct run_view *v;
	sigset_t set, old;
	unsigned int i;
	int r, r2, st = 0;
	pid_t pid, parent = getpid();

	if (!n || !argv || !argv[0])
		return usage_err("no device or no command given");
	if (n > 1 && has_braces(argv))
		return usage_err("'{}' stands for the view of one device: with %u, use $FLEECE_VIEW_1 ... $FLEECE_VIEW_%u",
				 n, n);
	v = xcalloc(n, sizeof(*v));
	for (i = 0; i < n; i++) {
		r = resolve_dm_name(names[i], v[i].name, sizeof(v[i].name));
		if (r)
			goto out;
	}
	signal(SIGCHLD, SIG_DFL);	/* not ignored: waitpid must see the command */
	signals_install();
	r = fleece_start(so, names, n);
	if (r)
		goto out;	/* undone by start; nothing to run */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);
	r = find_views(v, n);
	if (!r && fleece_signal) {
		msg_error("interrupted by signal %d: stopping, '%s' not run",
			  (int)fleece_signal, argv[0]);
		r = -EINTR;
	}
	if (!r) {
		fflush(NULL);
		pid = fork();
		if (!pid)
			child_exec(argv, v, n, parent, &old);
		if (pid < 0) {
			r = -errno;
			msg_errno("cannot fork");
		} else {
			st = wait_command(pid, argv[0], &set);
			r = check_views(v, n, argv[0]);
		}
	}
	/* Signals stay blocked: a second one cannot cut the stop short. */
	r2 = stop_all(v, n);
	if (!r)
		r = r2;
	/* Decided before a signal held off during the stop is taken. */
	r = run_result(st, r);
	sigprocmask(SIG_SETMASK, &old, NULL);
out:
	free(v);
	return r;
}

static void run_help(void)
{
	printf("Usage: fleece run [OPTIONS] (--fleece-dev DEV[,DEV...] | --fleece-dir DIR) NAME... -- CMD [ARGS...]\n"
	       "\n"
	       "Take one consistent point in time of every device-mapper device NAME (as\n"
	       "'fleece start'), run CMD on the frozen views, stop when CMD ends, and exit\n"
	       "with CMD's status.  CMD gets the views in its environment:\n"
	       "  FLEECE_VIEW, FLEECE_NAME          the view and NAME (one NAME only)\n"
	       "  FLEECE_VIEW_1.., FLEECE_NAME_1..  each view and NAME, in order\n"
	       "  FLEECE_VIEWS, FLEECE_NAMES        all of them, separated by spaces\n"
	       "and, with one NAME, each '{}' in ARGS replaced by the view's path.\n"
	       "SIGINT, SIGTERM and SIGHUP are passed on to CMD; fleece stops when it ends.\n"
	       "A CMD that does not discard what it read lets the fleece grow as under a\n"
	       "snapshot, up to NAME's size.\n"
	       "\n"
	       "Options (as for 'fleece start'):\n"
	       "  -d, --fleece-dev DEV[,DEV...]\n"
	       "                            fleece devices, one per NAME, in order\n"
	       "  -D, --fleece-dir DIR      or sparse files DIR/NAME.fleece on loop devices\n"
	       HELP_START_POLICY
	       HELP_COMMON
	       "\n"
	       "Exit status: CMD's (128 + N when signal N killed it; 126: CMD cannot be run,\n"
	       "127: not found), or 125 when fleece failed: bad usage, start failed (CMD\n"
	       "not run), a view became invalid while CMD ran, stop failed.  See fleece(8).\n");
}

/* fleece run: the exit status of run.h. */
int cmd_run(int argc, char **argv)
{
	static const struct option opts[] = { LONGOPTS_START, LONGOPTS_COMMON };
	struct start_opts so;
	int r, sep;

	prog = "fleece run";
	/* NAMEs end at the first "--": getopt must not look past it, nor move it. */
	for (sep = 1; sep < argc && strcmp(argv[sep], "--"); sep++)
		;
	start_opts_init(&so);
	r = parse_opts(sep, argv, SHORTOPTS_START SHORTOPTS_COMMON, opts, run_help,
		       start_cmd_opt, &so);
	if (r >= 0) {
		start_opts_free(&so);
		return r ? EX_RUN_FLEECE : EX_FLEECE_OK;	/* a usage error, or --help */
	}
	if (optind >= sep)
		r = usage_err("no device given: fleece run [OPTIONS] NAME... -- CMD [ARGS...]");
	else if (sep >= argc)
		r = usage_err("no '--' before the command: fleece run [OPTIONS] NAME... -- CMD [ARGS...]");
	else if (sep + 1 >= argc)
		r = usage_err("no command after '--'");
	else
		r = run_under_fleece(&so, argv + optind, sep - optind, argv + sep + 1);
	start_opts_free(&so);
	if (r >= 0)
		return r;
	if (r == -EINTR && fleece_signal)
		return EX_FLEECE_SIGNAL + fleece_signal;
	return EX_RUN_FLEECE;
}
