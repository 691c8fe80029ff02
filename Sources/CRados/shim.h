// librados, the C client of Ceph's RADOS object store (Debian's librados-dev). librados-dev ships no
// pkg-config file, so the module map links `rados` by name; the header is /usr/include/rados/librados.h.
#include <rados/librados.h>
