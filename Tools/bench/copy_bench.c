// Copies into the DRAM tier: `memcpy` against `tw_copy_streaming` (the daemon's copy of blocks of
// 256 KiB and more into the tier, Sources/CTokenWarehouse/shim.h), both into a destination far larger
// than one block that the copies sweep, as S3-FIFO's rings sweep the tier's space. Best of three rounds
// per size, GB/s; the ratio is streaming / memcpy in the same round set.
//
//   cc -O2 -I Sources/CTokenWarehouse -o /tmp/copy_bench Tools/bench/copy_bench.c && /tmp/copy_bench [MiB]
//
// The destination spans MiB mebibytes (default 1024), faulted in before timing.
#include "shim.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t span = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
    char *destination = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (destination == MAP_FAILED) { perror("mmap"); return 1; }
    const size_t sizes[] = {16 << 10, 64 << 10, 256 << 10, 1 << 20, 2 << 20, 16 << 20};
    printf("destination span %zu MiB\n%8s %14s %16s %6s\n", span >> 20, "block", "memcpy GB/s", "streaming GB/s", "ratio");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        char *source = aligned_alloc(4096, n);
        memset(source, (int)i + 1, n);
        double plain = 0, streaming = 0;
        for (int round = 0; round < 3; round++) {
            double t = seconds();
            for (size_t at = 0; at + n <= span; at += n) memcpy(destination + at, source, n);
            double a = (double)(span / n * n) / (seconds() - t) / 1e9;
            t = seconds();
            for (size_t at = 0; at + n <= span; at += n) tw_copy_streaming(destination + at, source, n);
            double b = (double)(span / n * n) / (seconds() - t) / 1e9;
            if (a > plain) plain = a;
            if (b > streaming) streaming = b;
        }
        // Check the last copy landed whole.
        if (memcmp(destination, source, n) != 0) { fprintf(stderr, "copy of %zu bytes differs\n", n); return 1; }
        printf("%7zuK %14.1f %16.1f %6.2f\n", n >> 10, plain, streaming, streaming / plain);
        free(source);
    }
    return 0;
}
