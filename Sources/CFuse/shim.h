// Pins the libfuse API version and wraps what Swift cannot import (function-like macros).
#ifndef TW_CFUSE_SHIM_H
#define TW_CFUSE_SHIM_H
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/xattr.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline int tw_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config) {
    return fuse_session_loop_mt(se, config);
}
static inline int tw_fuse_parse_cmdline(struct fuse_args *args, struct fuse_cmdline_opts *opts) {
    return fuse_parse_cmdline(args, opts);
}
/* splice(2) without _GNU_SOURCE (which Swift's Glibc module does not set): InitNegotiation's custom I/O. */
static inline ssize_t tw_splice(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len, unsigned int flags) {
    return syscall(SYS_splice, fd_in, off_in, fd_out, off_out, len, flags);
}
#endif
