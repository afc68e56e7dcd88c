// SPDX-License-Identifier: GPL-2.0
/*
 * fleece serve: export the frozen view of NAME over NBD, for a backup
 * server that pulls the image over the network, with the client's trims
 * releasing chunks as the reader's discards do.
 *
 * The NBD server is qemu-nbd (qemu-utils), run in the foreground under
 * fleece's lifecycle (run_under_fleece(): start, the server on the view,
 * stop when it exits or on SIGINT, SIGTERM or SIGHUP).  Why qemu-nbd and
 * its command line (fleece(8), section SERVE, says the same to users):
 *
 *  - A trim must reach the view as a discard (BLKDISCARD), which is what
 *    releases a chunk.  QEMU's host_device driver (file-posix) discards a
 *    block device with BLKDISCARD, once the export is opened with
 *    --discard=unmap (without it, bdrv_co_pdiscard() drops every trim and
 *    answers success).  nbdkit 1.32's file plugin trims with
 *    fallocate(PUNCH_HOLE) on block devices too, which the kernel turns
 *    into write-zeroes: the view refuses those, and the plugin ignores the
 *    error, so no chunk would ever be released.
 *  - qemu-nbd --read-only stops advertising trim (NBD_FLAG_SEND_TRIM is
 *    only set for writable exports).  So the export is writable at the NBD
 *    level, and the view itself refuses every write: writes and
 *    write-zeroes to a fleece-view fail with an I/O error, which the
 *    client gets as EIO.  Nothing can write the frozen image.
 *  - --format=raw: never probe the image format (the device's content,
 *    written by whoever uses NAME, must not be taken for a qcow2 header).
 *  - --cache=none: O_DIRECT reads, as fleece's own reader does; the page
 *    cache keeps no copy of the image.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fleece.h"
#include "opts.h"
#include "run.h"
#include "serve.h"
#include "util.h"

#define SERVE_SERVER	"qemu-nbd"
#define NBD_MAX_NAME	4096	/* the NBD protocol's limit on strings */

enum { OPT_SOCKET = 'k', OPT_TCP = 'T', OPT_EXPORT = 'x', OPT_PERSISTENT = 'P' };

struct serve_args {
	struct start_opts so;
	const char *socket;		/* --socket PATH */
	const char *tcp;		/* --tcp HOST:PORT */
	char host[256];			/* from --tcp, without [] */
	char port[6];
	const char *export_name;	/* default: NAME */
	bool persistent;
};

static void serve_help(void)
{
	printf("Usage: fleece serve [OPTIONS] (--socket PATH | --tcp HOST:PORT) NAME\n"
	       "\n"
	       "Export the frozen view of the device-mapper device NAME over NBD with\n"
	       "qemu-nbd, in the foreground: start a fleece, serve the view, stop when the\n"
	       "server ends (after its client disconnects, or with --persistent on SIGINT\n"
	       "or SIGTERM).  The export refuses writes (the view fails them); a client's\n"
	       "trim of whole chunks releases them, as 'fleece read' does.\n"
	       "\n"
	       "Where to listen (one of them):\n"
	       "  -k, --socket PATH         a unix socket; URI nbd+unix:///EXPORT?socket=PATH\n"
	       "  -T, --tcp HOST:PORT       a TCP address ([ADDR]:PORT for IPv6); URI\n"
	       "                            nbd://HOST:PORT/EXPORT.  No TLS: name an address\n"
	       "                            that only the backup server reaches\n"
	       "\n"
	       "Export options:\n"
	       "  -x, --export-name EXPORT  the export's name (default: NAME)\n"
	       "  -P, --persistent          go on serving after a client disconnects, until\n"
	       "                            SIGINT or SIGTERM (default: stop then)\n"
	       "\n"
	       "Fleece options (as for 'fleece start'):\n"
	       "  -d, --fleece-dev DEV      fleece device, at least as large as NAME\n"
	       "  -D, --fleece-dir DIR      or a sparse file DIR/NAME.fleece on a loop device\n"
	       HELP_START_POLICY
	       HELP_COMMON);
}

static int serve_opt(int c, const char *arg, void *ctx)
{
	struct serve_args *a = ctx;

	switch (c) {
	case 'q':
		return 0;
	case OPT_SOCKET:
		a->socket = arg;
		return 0;
	case OPT_TCP:
		a->tcp = arg;
		return 0;
	case OPT_EXPORT:
		a->export_name = arg;
		return 0;
	case OPT_PERSISTENT:
		a->persistent = true;
		return 0;
	}
	return start_parse_opt(&a->so, c, arg);
}

/* "HOST:PORT" or "[ADDR]:PORT": 0 or -EFLEECE_USAGE, with a message. */
static int parse_tcp(const char *arg, char *host, size_t hlen, char *port, size_t plen)
{
	const char *colon = strrchr(arg, ':');
	const char *h = arg;
	size_t n;
	uint64_t p;

	if (!colon)
		return usage_err("--tcp '%s': give HOST:PORT (e.g. 127.0.0.1:10809)", arg);
	n = colon - arg;
	if (*arg == '[') {
		if (n < 2 || arg[n - 1] != ']')
			return usage_err("--tcp '%s': an IPv6 address goes in brackets, [ADDR]:PORT", arg);
		h = arg + 1;
		n -= 2;
	} else if (memchr(arg, ':', n)) {
		return usage_err("--tcp '%s': an IPv6 address goes in brackets, [ADDR]:PORT", arg);
	}
	if (!n)
		return usage_err("--tcp '%s': no host: name the address to listen on", arg);
	if (n >= hlen)
		return usage_err("--tcp '%s': the host is too long", arg);
	if (parse_uint(colon + 1, 65535, &p) || !p)
		return usage_err("--tcp '%s': the port must be a number from 1 to 65535", arg);
	memcpy(host, h, n);
	host[n] = '\0';
	snprintf(port, plen, "%u", (unsigned int)p);
	return 0;
}

/*
 * The unix socket's path: its directory must exist, and the path must be
 * free or a stale socket (qemu-nbd replaces what is there: never a file,
 * nor the socket of a live server).  0 or -EFLEECE_USAGE with a message.
 */
static int socket_check(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char *copy, *dir;
	struct stat st;
	int fd, r = 0;

	if (!*path)
		return usage_err("--socket: give a path");
	if (strlen(path) >= sizeof(sa.sun_path))
		return usage_err("--socket %s: too long for a unix socket (at most %zu bytes)",
				 path, sizeof(sa.sun_path) - 1);
	copy = xstrdup(path);
	dir = dirname(copy);
	if (stat(dir, &st) || !S_ISDIR(st.st_mode))
		r = usage_err("--socket %s: no directory %s", path, dir);
	free(copy);
	if (r || lstat(path, &st))
		return r;
	if (!S_ISSOCK(st.st_mode))
		return usage_err("--socket %s: exists and is not a socket", path);
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && !connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		r = usage_err("--socket %s: a server is listening there", path);
	if (fd >= 0)
		close(fd);
	return r;
}

/* Is the NBD server there, in PATH?  0, or -EFLEECE_REFUSED with a message. */
static int server_check(void)
{
	const char *path = getenv("PATH");
	char *copy, *dir, *save = NULL;
	char file[PATH_MAX];
	int r = -EFLEECE_REFUSED;

	copy = xstrdup(path ? path : "/usr/bin:/bin");
	for (dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		snprintf(file, sizeof(file), "%s/%s", *dir ? dir : ".", SERVE_SERVER);
		if (!access(file, X_OK)) {
			r = 0;
			break;
		}
	}
	free(copy);
	if (r)
		msg_error("%s is not in PATH: it is the NBD server (Debian: apt install qemu-utils)",
			  SERVE_SERVER);
	return r;
}

/* The arguments that parse_opts() leaves to check: 0 or -errno. */
static int serve_args_check(int argc, char **argv, struct serve_args *a)
{
	if (optind >= argc)
		return usage_err("no device given");
	if (optind + 1 < argc)
		return usage_err("one device at a time: '%s' is one too many (run one 'fleece serve' for each)",
				 argv[optind + 1]);
	if (a->socket && a->tcp)
		return usage_err("--socket and --tcp: give one of them");
	if (!a->socket && !a->tcp)
		return usage_err("where to listen: give --socket PATH or --tcp HOST:PORT");
	if (a->tcp && parse_tcp(a->tcp, a->host, sizeof(a->host), a->port, sizeof(a->port)))
		return -EFLEECE_USAGE;
	if (a->socket && socket_check(a->socket))
		return -EFLEECE_USAGE;
	if (a->export_name && strlen(a->export_name) > NBD_MAX_NAME)
		return usage_err("--export-name: at most %d bytes", NBD_MAX_NAME);
	/* run_under_fleece() puts the view's path in place of each "{}". */
	if ((a->socket && strstr(a->socket, "{}")) || (a->tcp && strstr(a->tcp, "{}")) ||
	    (a->export_name && strstr(a->export_name, "{}")))
		return usage_err("'{}' cannot be part of --socket, --tcp or --export-name");
	if (a->so.nr_fleece_devs > 1)
		return usage_err("one device, one --fleece-dev");
	if (!a->so.nr_fleece_devs && !a->so.fleece_dir)
		return usage_err("give the fleece space: --fleece-dev DEV or --fleece-dir DIR");
	return server_check();
}

/*
 * The server's command line, "{}" standing for the view's path (see the
 * comment at the top for each choice).  The strings are the caller's to
 * free (argv[0..n-1]), the array too.
 */
static char **server_argv(const struct serve_args *a, const char *export_name)
{
	char **av = xcalloc(12, sizeof(*av));
	unsigned int n = 0;

	av[n++] = xstrdup(SERVE_SERVER);
	av[n++] = xstrdup("--format=raw");
	av[n++] = xstrdup("--cache=none");
	av[n++] = xstrdup("--discard=unmap");
	av[n++] = xasprintf("--export-name=%s", export_name);
	if (a->persistent)
		av[n++] = xstrdup("--persistent");
	if (a->socket) {
		av[n++] = xasprintf("--socket=%s", a->socket);
	} else {
		av[n++] = xasprintf("--bind=%s", a->host);
		av[n++] = xasprintf("--port=%s", a->port);
	}
	av[n++] = xstrdup("{}");
	av[n] = NULL;
	return av;
}

/* Where clients find the export, before the server starts. */
static void serve_announce(const struct serve_args *a, const char *name,
			   const char *export_name)
{
	const char *until = a->persistent ? "until SIGINT or SIGTERM" :
					    "until the client disconnects";

	if (a->socket)
		msg_info("%s: serving nbd+unix:///%s?socket=%s (%s)", name, export_name,
			 a->socket, until);
	else if (strchr(a->host, ':'))
		msg_info("%s: serving nbd://[%s]:%s/%s (%s)", name, a->host, a->port,
			 export_name, until);
	else
		msg_info("%s: serving nbd://%s:%s/%s (%s)", name, a->host, a->port,
			 export_name, until);
}

/*
 * The server's exit status, as fleece serve's outcome: 0, or -errno
 * (run_under_fleece() said what went wrong for a negative one, and for a
 * server killed by a signal or that could not be run).
 */
static int serve_result(int status)
{
	if (status <= 0)
		return status;
	if (status < EX_RUN_FLEECE)
		msg_error("%s ended with status %d: the export is over", SERVE_SERVER, status);
	return -EIO;
}

int cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = {
		LONGOPTS_START,
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "tcp", required_argument, NULL, OPT_TCP },
		{ "export-name", required_argument, NULL, OPT_EXPORT },
		{ "persistent", no_argument, NULL, OPT_PERSISTENT },
		LONGOPTS_COMMON
	};
	struct serve_args a = { 0 };
	char name[128], **av = NULL;
	unsigned int i;
	char *names[1];
	int r;

	prog = "fleece serve";
	start_opts_init(&a.so);
	r = parse_opts(argc, argv, SHORTOPTS_START "k:T:x:P" SHORTOPTS_COMMON, opts,
		       serve_help, serve_opt, &a);
	if (r >= 0) {
		start_opts_free(&a.so);
		return r;
	}
	r = serve_args_check(argc, argv, &a);
	if (!r)
		r = resolve_dm_name(argv[optind], name, sizeof(name));
	if (!r) {
		av = server_argv(&a, a.export_name ? a.export_name : name);
		serve_announce(&a, name, a.export_name ? a.export_name : name);
		names[0] = name;
		r = serve_result(run_under_fleece(&a.so, names, 1, av));
	}
	for (i = 0; av && av[i]; i++)
		free(av[i]);
	free(av);
	start_opts_free(&a.so);
	return exit_code(r);
}
