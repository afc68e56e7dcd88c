/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): the command-line options the subcommands share, in one place:
 * getopt_long tables, short option strings and --help lines.
 *
 *   start options   -d -D -c -t -F -f start and backup (start_parse_opt)
 *   reader options  -o -s -r -b -p -i -j read and backup (reader_parse_opt)
 *   common options  -q -v -h         every subcommand (parse_opts)
 */
#ifndef FLEECE_OPTS_H
#define FLEECE_OPTS_H

#include <getopt.h>

#define LONGOPTS_START						\
	{ "fleece-dev", required_argument, NULL, 'd' },		\
	{ "fleece-dir", required_argument, NULL, 'D' },		\
	{ "chunk-size", required_argument, NULL, 'c' },		\
	{ "cbw-timeout", required_argument, NULL, 't' },		\
	{ "fail-origin-writes", no_argument, NULL, 'F' },	\
	{ "force", no_argument, NULL, 'f' }
#define SHORTOPTS_START "d:D:c:t:Ff"

#define LONGOPTS_READER						\
	{ "output", required_argument, NULL, 'o' },		\
	{ "sha256", no_argument, NULL, 's' },			\
	{ "rate", required_argument, NULL, 'r' },			\
	{ "block-size", required_argument, NULL, 'b' },		\
	{ "progress", required_argument, NULL, 'p' },		\
	{ "interval", required_argument, NULL, 'i' },		\
	{ "json", no_argument, NULL, 'j' }
#define SHORTOPTS_READER "o:sr:b:p:i:j"

/* Last in every table: it ends it. */
#define LONGOPTS_COMMON						\
	{ "quiet", no_argument, NULL, 'q' },			\
	{ "verbose", no_argument, NULL, 'v' },			\
	{ "help", no_argument, NULL, 'h' },			\
	{ NULL, 0, NULL, 0 }
#define SHORTOPTS_COMMON "qvh"

/* --help lines; descriptions start in column 29. */
#define HELP_START_POLICY						\
	"  -c, --chunk-size SIZE     copy-before-write unit, a power of two from 4K\n" \
	"                            to 16M (default 64K)\n"			\
	"  -t, --cbw-timeout SECS    a copy taking longer fails (default 45; 0: no\n" \
	"                            limit)\n"					\
	"  -F, --fail-origin-writes  on a failed copy, fail the writer's write and\n" \
	"                            keep the view (default: keep the writer going\n" \
	"                            and invalidate the view)\n"		\
	"  -f, --force               use a --fleece-dev that holds a signature (a\n" \
	"                            file system, a PV, a partition table), or fleece\n" \
	"                            space whose devices fleece cannot all find\n"

#define HELP_READER							\
	"  -o, --output FILE|-       where the image goes ('-': standard output)\n" \
	"  -s, --sha256              print the image's SHA-256 when done\n"	\
	"  -r, --rate BYTES          read at most BYTES per second (e.g. 50M)\n" \
	"  -b, --block-size SIZE     read unit (default 4M, rounded to whole chunks)\n" \
	"  -p, --progress MODE       auto (a bar on a terminal, lines otherwise), bar,\n" \
	"                            lines, none\n"				\
	"  -i, --interval SECS       seconds between progress lines (default 10)\n" \
	"  -j, --json                the result as one JSON object on standard\n" \
	"                            output at the end, also on failure (not with\n" \
	"                            -o -; the SHA-256 is in it)\n"

#define HELP_COMMON							\
	"  -q, --quiet               no messages but errors (and no progress)\n" \
	"  -v, --verbose             more messages\n"				\
	"  -h, --help                this help\n"

/*
 * getopt_long over a subcommand's arguments.  -q, -v, -h and getopt's '?'
 * (an unknown option, a missing argument) are handled here, the same for
 * every subcommand: @help prints its --help, and @own also sees -q (to
 * turn off progress output).  Any other option goes to @own(c, optarg,
 * @ctx), which returns 0 when it took it, 1 when it does not know it (a
 * usage error), or an exit code.  Returns -1 once every option is parsed
 * (optind: the first operand), or the exit code the subcommand must
 * return now (0 after --help).
 */
int parse_opts(int argc, char **argv, const char *shortopts,
	       const struct option *longopts, void (*help)(void),
	       int (*own)(int c, const char *arg, void *ctx), void *ctx);

#endif
