// XXH3 from the maintained libxxhash (Debian's libxxhash-dev), linked, not inlined.
#include <xxhash.h>
#if defined(__x86_64__)
// The same library's entry points that pick the widest vector unit at run time (AVX-512, AVX2, SSE2).
// Its plain XXH3_64bits is built for baseline x86-64 (SSE2): 8.5-15 GB/s on this project's machines,
// against 34-43 GB/s through these, with the same hash values (docs/benchmarks.md, "Checksums").
#include <xxh_x86dispatch.h>
#endif
