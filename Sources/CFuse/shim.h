// Pins the libfuse API version and wraps what Swift cannot import (function-like macros).
#ifndef TW_CFUSE_SHIM_H
#define TW_CFUSE_SHIM_H
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/xattr.h>

static inline int tw_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config) {
    return fuse_session_loop_mt(se, config);
}
static inline int tw_fuse_parse_cmdline(struct fuse_args *args, struct fuse_cmdline_opts *opts) {
    return fuse_parse_cmdline(args, opts);
}
#endif
