/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece serve: the frozen view of NAME exported over NBD (qemu-nbd),
 * under fleece's lifecycle; see serve.c.
 */
#ifndef FLEECE_SERVE_H
#define FLEECE_SERVE_H

int cmd_serve(int argc, char **argv);

#endif
